"""The source client against a real HTTP server on loopback: retries, refusals, cache, TTL,
pacing shared by processes, secrets that reach no file, and the versions it reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from loopback_api import LoopbackAPI, loopback_api_fixture  # noqa: F401 - the fixture

from usher_pipeline.config.library import APIConfig, LibraryConfigError, validate_library_config
from usher_pipeline.retry_after import parse_retry_after
from usher_pipeline.sources import SourceClient, SourceRequestError, redact_url
from usher_pipeline.sources.pacing import RETRY_AFTER_MAX_S


def make_client(tmp_path: Path, **api: Any) -> SourceClient:
    """A client of source `test` with quick backoffs and the given `api` settings."""
    own = api.pop("source", {})
    config = APIConfig.model_validate({"timeout_seconds": 2, **api, "sources": {"test": own}})
    return SourceClient(
        config.for_source("test"), tmp_path / "cache", environ={}, backoff_first_seconds=0.05
    )


# -- retries and refusals --------------------------------------------------------------------


def test_each_transient_fault_is_retried_until_the_answer(tmp_path: Path, loopback_api):
    api: LoopbackAPI = loopback_api
    api.schedule("/genes", "429:1", "500", "503", "reset", "slow:1.5")
    with make_client(tmp_path, max_retries=6, source={"timeout_seconds": 0.5}) as client:
        started = time.monotonic()
        body = client.get_json(api.url("/genes"), {"ids": "7,8"})
        elapsed = time.monotonic() - started
        summary = client.summary()
    assert body["results"] == [{"id": "7", "path": "/genes"}, {"id": "8", "path": "/genes"}]
    assert api.counts["/genes"] == 6
    assert summary["requests"] == 6
    assert summary["retries"] == 5
    assert summary["errors"] == {
        "ChunkedEncodingError": 1,
        "ReadTimeout": 1,
        "http_429": 1,
        "http_500": 1,
        "http_503": 1,
    }
    assert summary["waits"]["retry_after_seconds"] == 1.0
    assert elapsed >= 1.0  # the Retry-After of the 429 was honoured


def test_retry_after_as_an_http_date_is_honoured(tmp_path: Path, loopback_api):
    api: LoopbackAPI = loopback_api
    api.schedule("/genes", "503:date")
    with make_client(tmp_path) as client:
        started = time.monotonic()
        client.get(api.url("/genes"), {"id": "1"})
        elapsed = time.monotonic() - started
    assert api.counts["/genes"] == 2
    assert elapsed >= 0.2  # a date 1 s ahead, sent with a resolution of one second


@pytest.mark.parametrize("status", ["400", "401", "404"])
def test_other_client_errors_are_refused_at_once(tmp_path: Path, loopback_api, status: str):
    api: LoopbackAPI = loopback_api
    api.always("/genes", status)
    with make_client(tmp_path) as client, pytest.raises(SourceRequestError) as info:
        client.get(api.url("/genes"), {"id": "1"})
    assert api.counts["/genes"] == 1
    assert info.value.permanent
    assert info.value.status == int(status)
    assert str(info.value).startswith(f"GET {api.url('/genes')}?id=1 answered HTTP {status} ")


def test_a_source_still_failing_after_its_attempts_is_one_error(tmp_path: Path, loopback_api):
    api: LoopbackAPI = loopback_api
    api.always("/genes", "503")
    with make_client(tmp_path, max_retries=3) as client, pytest.raises(SourceRequestError) as e:
        client.get(api.url("/genes"), {"id": "1"})
    assert api.counts["/genes"] == 3
    assert not e.value.permanent
    assert e.value.status == 503
    assert str(e.value) == (
        f"GET {api.url('/genes')}?id=1 failed after 3 attempts, the last with HTTP 503 Service "
        "Unavailable: retry later, or raise api.sources.test.max_retries"
    )


def test_parse_retry_after() -> None:
    assert parse_retry_after("3", RETRY_AFTER_MAX_S) == 3.0
    assert parse_retry_after(None, RETRY_AFTER_MAX_S) is None
    assert parse_retry_after("soon", RETRY_AFTER_MAX_S) is None
    ahead = parse_retry_after(formatdate(time.time() + 30, usegmt=True), RETRY_AFTER_MAX_S)
    assert ahead is not None and 28 <= ahead <= 30
    assert parse_retry_after("99999", RETRY_AFTER_MAX_S) == 600.0


# -- cache -----------------------------------------------------------------------------------


def test_a_cached_response_is_not_requested_by_a_second_client(tmp_path: Path, loopback_api):
    api: LoopbackAPI = loopback_api
    urls = [api.url(f"/genes?ids={i}") for i in range(3)]
    with make_client(tmp_path) as first:
        answers = [first.get_json(u) for u in urls]
    assert api.total() == 3
    with make_client(tmp_path) as second:
        again = [second.get_json(u) for u in urls]
        summary = second.summary()
    assert again == answers
    assert api.total() == 3
    assert (summary["requests"], summary["cache_hits"]) == (0, 3)


def test_an_error_answer_is_not_cached(tmp_path: Path, loopback_api):
    api: LoopbackAPI = loopback_api
    api.schedule("/genes", "500")
    with make_client(tmp_path, max_retries=1) as client, pytest.raises(SourceRequestError):
        client.get(api.url("/genes?id=1"))
    with make_client(tmp_path) as client:
        client.get(api.url("/genes?id=1"))
    assert api.counts["/genes"] == 2


@pytest.mark.parametrize(("ttl", "requests"), [(1, 2), (0, 1)])
def test_cache_ttl(tmp_path: Path, loopback_api, ttl: int, requests: int):
    api: LoopbackAPI = loopback_api
    with make_client(tmp_path, cache_ttl_seconds=ttl) as client:
        client.get(api.url("/genes?id=1"))
        time.sleep(1.5)
        client.get(api.url("/genes?id=1"))
    assert api.counts["/genes"] == requests  # ttl 1 has expired; 0 never expires


# -- pacing ----------------------------------------------------------------------------------

PACED_CHILD = """
import sys
from pathlib import Path
from usher_pipeline.config.library import APIConfig
from usher_pipeline.sources import SourceClient

base, cache, name, count = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
api = APIConfig.model_validate({"sources": {"paced": {"rate_limit_per_second": 20}}})
with SourceClient(api.for_source("paced"), cache, environ={}) as client:
    for i in range(count):
        client.get(f"{base}/{name}?id={i}")
"""


def test_the_rate_limit_holds_across_two_processes(tmp_path: Path, loopback_api):
    api: LoopbackAPI = loopback_api
    limit, each = 20, 25
    api.rate_limit_per_second = 2 * limit  # the server refuses only well over the limit
    script = tmp_path / "child.py"
    script.write_text(PACED_CHILD)
    children = [
        subprocess.Popen(
            [sys.executable, str(script), api.url(""), str(tmp_path / "cache"), name, str(each)]
        )
        for name in ("a", "b")
    ]
    assert [child.wait(timeout=120) for child in children] == [0, 0]
    assert (api.counts["/a"], api.counts["/b"]) == (each, each)
    times = sorted(api.times)
    achieved = (len(times) - 1) / (times[-1] - times[0])
    assert 0.5 <= achieved / limit <= 1.1, f"achieved {achieved:.1f}/s against {limit}/s"
    assert api.rejected == 0


# -- secrets ---------------------------------------------------------------------------------

SECRET_JOB = """
import logging, sys
import polars as pl
from usher_pipeline.sources import SourceRequestError, client_for
from usher_pipeline.workflow import Job, mock_snakemake

base, root = sys.argv[1], sys.argv[2]
logging.basicConfig(filename=f"{root}/debug.log", level=logging.DEBUG)
config = {
    "duckdb_path": f"{root}/results/pipeline.duckdb",
    "cache_dir": f"{root}/cache",
    "api": {"sources": {"genes": {
        "secrets": {"api_key": "LOOPBACK_KEY"},
        "secret_headers": {"X-Token": "LOOPBACK_TOKEN"},
        "release_header": "X-Release",
    }}},
    "_usher": {"config_hash": "c0ffee", "pipeline_version": "0"},
}
output = {
    "table": f"{root}/results/tables/genes.parquet",
    "steplog": f"{root}/results/steplogs/genes.json",
}
smk = mock_snakemake("genes", output=output, log=[f"{root}/logs/genes.log"], config=config)
with Job(smk) as job:
    with client_for(job, "genes") as client:
        rows = client.get_json(f"{base}/genes", {"ids": "1,2"})["results"]
        try:
            client.get(f"{base}/missing", {"id": "9"})
        except SourceRequestError as exc:
            job.log.warning("%s", exc)
            job.record_step("missing", {"error": str(exc)})
    job.save(pl.DataFrame(rows), description="genes")
"""


def test_a_secret_from_the_environment_reaches_no_file(tmp_path: Path, loopback_api):
    api: LoopbackAPI = loopback_api
    api.headers["/genes"] = {"X-Release": "2026-11", "ETag": '"v7"'}
    api.always("/missing", "404")
    secret, token = "k3y-8f2d1c", "t0ken-51ab"
    script = tmp_path / "job.py"
    script.write_text(SECRET_JOB)
    env = {**os.environ, "LOOPBACK_KEY": secret, "LOOPBACK_TOKEN": token}
    done = subprocess.run(
        [sys.executable, str(script), api.url(""), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert [q for _, q, _ in api.requests] == [
        "ids=1%2C2&api_key=" + secret,
        "id=9&api_key=" + secret,
    ]
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != script]
    assert {p.name for p in written} >= {"genes.json", "genes.log", "debug.log", "genes.sqlite"}
    for path in written:
        data = path.read_bytes()
        assert secret.encode() not in data and token.encode() not in data, path
    assert secret not in done.stdout + done.stderr
    log = (tmp_path / "logs/genes.log").read_text()
    assert f"GET {api.url('/missing')}?id=9&api_key=REDACTED answered HTTP 404" in log
    steplog = json.loads((tmp_path / "results/steplogs/genes.json").read_text())
    steps = {step["step_name"]: step["details"] for step in steplog["steps"]}
    assert steps["http_genes"]["requests"] == 2
    assert steplog["data_sources"]["genes"] == "2026-11"


def test_redact_url() -> None:
    url = "https://eutils.example/esearch?db=pubmed&api_key=abc&email=a%40b.org&term=x"
    assert redact_url(url, {"api_key", "email"}) == (
        "https://eutils.example/esearch?db=pubmed&api_key=REDACTED&email=REDACTED&term=x"
    )


# -- versions --------------------------------------------------------------------------------


def test_versions_come_from_the_response_headers(tmp_path: Path, loopback_api):
    api: LoopbackAPI = loopback_api
    modified = formatdate(1_700_000_000, usegmt=True)
    api.headers["/genes"] = {"ETag": '"e1"', "Last-Modified": modified, "X-Release": "113"}
    with make_client(tmp_path) as plain:
        plain.get(api.url("/genes?id=1"))
        assert plain.versions() == {"etag": '"e1"', "last_modified": modified}
        assert plain.version() == '"e1"'
    with make_client(tmp_path, source={"release_header": "X-Release"}) as named:
        named.get(api.url("/genes?id=1"))  # from the cache: its headers too
        assert named.versions()["release"] == "113"
        assert named.version() == "113"


# -- config ----------------------------------------------------------------------------------


def test_a_source_takes_the_api_defaults_for_what_it_does_not_set() -> None:
    api = APIConfig.model_validate(
        {"max_retries": 7, "sources": {"ncbi": {"rate_limit_per_second": 3}}}
    )
    ncbi, other = api.for_source("ncbi"), api.for_source("uniprot")
    assert (ncbi.rate_limit_per_second, ncbi.max_retries) == (3, 7)
    assert (other.rate_limit_per_second, other.max_retries) == (5, 7)
    zero = APIConfig.model_validate({"sources": {"x": {"cache_ttl_seconds": 0}}})
    assert zero.for_source("x").cache_ttl_seconds == 0


@pytest.mark.parametrize(
    ("sources", "key"),
    [
        ({"ncbi": {"rate_limit": 3}}, "api.sources.ncbi.rate_limit"),
        ({"ncbi": {"rate_limit_per_second": 0}}, "api.sources.ncbi.rate_limit_per_second"),
        ({"NCBI": {}}, "api.sources.NCBI"),
        ({"ncbi": {"secrets": {"api_key": "not a name"}}}, "api.sources.ncbi.secrets.api_key"),
    ],
)
def test_bad_source_settings_are_refused(sources: dict[str, Any], key: str) -> None:
    with pytest.raises(LibraryConfigError) as info:
        validate_library_config({"api": {"sources": sources}})
    assert key in str(info.value)


# -- in a job's fetch ------------------------------------------------------------------------

FETCH_JOB = """
import os, signal, sys
import polars as pl
from usher_pipeline.sources import client_for
from usher_pipeline.workflow import Job, mock_snakemake

base, root, path, in_flight, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], *sys.argv[4:6]
config = {
    "duckdb_path": f"{root}/results/pipeline.duckdb",
    "cache_dir": f"{root}/cache",
    "api": {"max_retries": 4, "sources": {"genes": {"rate_limit_per_second": 50}}},
    "_usher": {"config_hash": "c0ffee", "pipeline_version": "0"},
}
output = {
    "table": f"{root}/results/tables/genes.parquet",
    "steplog": f"{root}/results/steplogs/genes.json",
}
smk = mock_snakemake("genes", output=output, log=[f"{root}/logs/genes.log"], config=config)
with Job(smk) as job, client_for(job, "genes", backoff_first_seconds=0.05) as client:
    def fetch(batch):
        answer = client.get_json(f"{base}{path}", {"ids": ",".join(batch)})
        if batch[0] == kill_at:  # killed with the answer cached and the batch not committed
            os.kill(os.getpid(), signal.SIGKILL)
        return pl.DataFrame(answer["results"])

    keys = [str(i) for i in range(40)]
    frame = job.fetch(keys, fetch, batch_size=5, in_flight=int(in_flight), backoff=0.05)
    job.save(frame, description="genes")
"""


def run_fetch_job(
    tmp_path: Path, api: LoopbackAPI, path: str, in_flight: int = 3, kill_at: str = "-"
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "fetch_job.py"
    script.write_text(FETCH_JOB)
    return subprocess.run(
        [sys.executable, str(script), api.url(""), str(tmp_path), path, str(in_flight), kill_at],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )


def test_a_flaky_source_converges_in_a_fetch_with_batches_in_flight(tmp_path, loopback_api):
    api: LoopbackAPI = loopback_api
    api.schedule("/genes", "429:1", "500", "reset", "503")
    done = run_fetch_job(tmp_path, api, "/genes")
    assert done.returncode == 0, done.stderr
    frame = pl.read_parquet(tmp_path / "results/tables/genes.parquet")
    assert frame["id"].to_list() == [str(i) for i in range(40)]
    assert api.counts["/genes"] == 8 + 4  # eight batches, and one retry per fault
    steplog = json.loads((tmp_path / "results/steplogs/genes.json").read_text())
    steps = {step["step_name"]: step["details"] for step in steplog["steps"]}
    assert (steps["http_genes"]["requests"], steps["http_genes"]["retries"]) == (12, 4)


def test_a_refused_request_fails_its_fetch_without_another_attempt(tmp_path, loopback_api):
    api: LoopbackAPI = loopback_api
    api.always("/gone", "404")
    done = run_fetch_job(tmp_path, api, "/gone")
    assert done.returncode != 0
    assert api.counts["/gone"] <= 3  # one request per batch in flight, none tried again
    assert "HTTP 404" in done.stderr


def test_a_bad_source_name_or_override_is_one_line(tmp_path: Path):
    from usher_pipeline.sources import SourceSettingsError, client_for
    from usher_pipeline.workflow import Job, mock_snakemake

    settings = APIConfig().for_source("NCBI")
    with pytest.raises(SourceSettingsError, match="source name 'NCBI' is not valid: use lower"):
        SourceClient(settings, tmp_path / "cache", environ={})
    output = {"table": tmp_path / "t/genes.parquet", "steplog": tmp_path / "t/genes.json"}
    smk = mock_snakemake("genes", output=output, config={"cache_dir": str(tmp_path / "cache")})
    job = Job(smk)
    with pytest.raises(SourceSettingsError) as info, client_for(job, "ncbi", timeout=5):
        pass
    assert str(info.value).startswith(
        "client_for(job, 'ncbi') was given a bad setting timeout: Extra inputs are not permitted;"
    )
    with client_for(job, "ncbi", timeout_seconds=0.5, release_header="X-R") as client:
        assert (client.settings.timeout_seconds, client.settings.release_header) == (0.5, "X-R")


def test_a_retry_after_holds_every_client_of_the_source(tmp_path: Path, loopback_api):
    api: LoopbackAPI = loopback_api
    api.schedule("/busy", "429:2")
    with make_client(tmp_path, max_retries=1) as told, pytest.raises(SourceRequestError):
        told.get(api.url("/busy"))  # one attempt: it fails at once, and holds the bucket
    with make_client(tmp_path) as other:
        other.get(api.url("/genes?id=1"))
        waited = other.summary()["waits"]["pacing_seconds"]
    gap = api.times[1] - api.times[0]
    assert gap >= 1.5 and waited >= 1.5, (gap, waited)


def test_a_rerun_after_a_kill_requests_no_answer_it_cached(tmp_path, loopback_api):
    api: LoopbackAPI = loopback_api
    killed = run_fetch_job(tmp_path, api, "/genes", in_flight=1, kill_at="20")
    assert killed.returncode == -9, killed.stderr
    assert api.counts["/genes"] == 5  # four batches committed, the fifth answered and cached
    done = run_fetch_job(tmp_path, api, "/genes", in_flight=1)
    assert done.returncode == 0, done.stderr
    assert api.counts["/genes"] == 8  # each batch's request made once over both runs
    frame = pl.read_parquet(tmp_path / "results/tables/genes.parquet")
    assert frame["id"].to_list() == [str(i) for i in range(40)]
    steplog = json.loads((tmp_path / "results/steplogs/genes.json").read_text())
    steps = {step["step_name"]: step["details"] for step in steplog["steps"]}
    assert (steps["http_genes"]["requests"], steps["http_genes"]["cache_hits"]) == (3, 1)


# -- a whole run -----------------------------------------------------------------------------

BIN = Path(sys.executable).parent

RUN_FETCH_SCRIPT = """\
import polars as pl

from usher_pipeline.sources import client_for
from usher_pipeline.workflow import Job

with Job(snakemake) as job, client_for(job, "records", backoff_first_seconds=0.05) as client:
    keys = [f"{snakemake.params.prefix}{i:04d}" for i in range(int(snakemake.params.how_many))]
    base = snakemake.config["records_service"]

    def fetch(batch):
        rows = client.get_json(f"{base}/records", {"ids": ",".join(batch)})["results"]
        values = [int(row["value"]) for row in rows]
        return pl.DataFrame({"key": [row["id"] for row in rows], "value": values})

    records = job.fetch(keys, fetch, batch_size=int(snakemake.config["fetch"]["batch_size"]))
    job.save(records, description=f"one value per key, {len(keys)} keys")
"""


def tool(workdir: Path, *command: str, env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return None


@pytest.mark.slow
def test_a_flaky_run_converges_and_its_secret_reaches_no_file(tmp_path: Path, loopback_api):
    api: LoopbackAPI = loopback_api
    api.records["/records"] = {f"item_{i:04d}": {"value": (i * 37) % 1000} for i in range(40)}
    api.headers["/records"] = {"X-Release": "records-7"}
    api.schedule("/records", "429:1", "500", "reset", "503")
    secret = "s3cret-0f9e8d7c"
    env = {k: v for k, v in os.environ.items() if not k.startswith("USHER_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RECORDS_KEY=secret)
    tool(tmp_path, "usher-pipeline", "init", "flow", env=env)
    workdir = tmp_path / "flow"
    (workdir / "scripts" / "fetch_records.py").write_text(RUN_FETCH_SCRIPT)
    config_path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["records_service"] = api.url("")
    config["api"] = {
        "sources": {"records": {"secrets": {"token": "RECORDS_KEY"}, "release_header": "X-Release"}}
    }
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    tool(workdir, "snakemake", "--cores", "1", env=env)
    tool(workdir, "usher-pipeline", "export-prov", "run.prov.json", env=env)
    tool(workdir, "usher-pipeline", "export-rocrate", "crate", env=env)
    assert api.counts["/records"] == 5 + 4  # five batches of eight, and one retry per fault
    assert all(query.endswith(f"&token={secret}") for _, query, _ in api.requests)
    written = [p for p in workdir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in written)
    assert any(p.name == "run.prov.json" for p in written)
    leaks = [p for p in written if secret.encode() in p.read_bytes()]
    assert leaks == []
    steplog = json.loads((workdir / "results" / "steplogs" / "records.json").read_text())
    assert steplog["data_sources"]["records"] == "records-7"
    frame = pl.read_parquet(next(workdir.rglob("records.parquet")))
    assert frame["value"].to_list() == [(i * 37) % 1000 for i in range(40)]


def test_the_shared_bucket_spaces_slots_and_forgets_one_from_a_clock_set_back(tmp_path: Path):
    from usher_pipeline.sources import SharedPacer

    bucket = tmp_path / "pace" / "x.next"
    pacer = SharedPacer(bucket, 4.0)
    waits = [pacer.reserve() for _ in range(4)]
    assert waits[0] < 0.05
    gaps = [b - a for a, b in zip(waits, waits[1:], strict=False)]
    assert all(0.125 < gap <= 0.25 + 1e-6 for gap in gaps), gaps  # 1/4 s, less the time passed
    bucket.write_text(repr(time.time() + 86400))  # booked a day ahead by a clock set back
    assert pacer.reserve() < 0.05
    pacer.hold(30)
    assert 29 < pacer.reserve() <= 30
