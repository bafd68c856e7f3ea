"""The real pipeline's literature layer at scale: keys x queries requests to a rate-limited API
on loopback, through the source client inside `job.fetch`, the whole run SIGKILLed at random
points and resumed each time with the same command.

The server (tests/loopback_api.py) runs in this process and counts every request it receives,
refused or not: the counts below are the server's, not the client's. It answers 429 with
`Retry-After: 1` to a request over `scale_rate` in any second. The client is paced to the same
limit by its shared bucket; its cache keeps every answer, so a resumed run asks again only what
was in flight at the kill. An uninterrupted run of the same workflow against an unlimited
server gives the reference fingerprint and the fetch job's peak RSS at a tenth of the requests
and at all of them. The case runs once, whatever the repetitions.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.harness import ROOT, TEMPLATES, Measure, Sizes, Workflow, bench_env, fresh
from bench.results import Row

if TYPE_CHECKING:
    from loopback_api import LoopbackAPI

BATCH_SIZE = 20  # keys per batch: 120 requests, 0.6 s at 200/s
IN_FLIGHT = 4
UNLIMITED = 100_000.0  # the reference run's client rate: the server sets the pace
# the client's share of the server's limit: paced at the limit itself, requests that the
# machine's scheduler delays and then sends together go over it in the server's window, and
# each 429 holds the bucket for its Retry-After (1 s, 200 requests of budget)
CLIENT_SHARE = 0.98
SEED = 132_000
NCBI_RATE = 3.0  # requests per second without an API key
UPSTREAM_HOURS = 46.0  # the upstream literature layer's 132,000 requests


def scale_workflow(folder: Path, sizes: Sizes, url: str, rate: float) -> Workflow:
    """A fresh work folder for templates/scale_fetch.smk, its client paced to `rate`."""
    fresh(folder)
    config = {
        "results_dir": "results",
        "logs_dir": "logs",
        "duckdb_path": "results/pipeline.duckdb",
        "cache_dir": "cache",
        "store": {"database_mode": "job", "lock_timeout_seconds": 3600.0},
        "api": {
            "max_retries": 10,
            "cache_ttl_seconds": 0,
            "timeout_seconds": 30,
            "sources": {"loopback": {"rate_limit_per_second": rate}},
        },
        "bench_keys": sizes.scale_keys,
        "bench_queries": sizes.scale_queries,
        "bench_url": url,
        "bench_batch_size": BATCH_SIZE,
        "bench_in_flight": IN_FLIGHT,
    }
    (folder / "config.yaml").write_text(json.dumps(config, indent=2))
    return Workflow(folder, TEMPLATES / "scale_fetch.smk")


def peak_rss_mb(pid_file: Path) -> float | None:
    """The peak RSS so far (VmHWM) of the process whose pid the fetch job wrote, if it runs."""
    try:
        status = Path(f"/proc/{int(pid_file.read_text())}/status").read_text()
    except (OSError, ValueError):
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


@dataclass
class Run:
    """One Snakemake run, as the server saw it: the requests it received, and when."""

    seconds: float
    requests: int
    first: float | None  # arrival time of its first request at the server
    last: float | None
    killed: bool
    peak_mb: float = 0.0  # the fetch job's peak RSS at its end (with the save), or at the kill
    peak_tenth_mb: float | None = None  # ... when the server had counted `tenth` requests
    peak_all_mb: float | None = None  # ... when it had counted `every` requests (the last one)

    @property
    def span(self) -> float:
        """Seconds from its first request to its last (0 when it made none)."""
        return self.last - self.first if self.first is not None and self.last is not None else 0.0


@dataclass
class Runs:
    """Every run of the killed workflow."""

    runs: list[Run] = field(default_factory=list)
    kills_at: list[int] = field(default_factory=list)  # server counts when each kill was sent

    @property
    def fetching(self) -> float:
        """Seconds from each run's first request to its last, summed: the restarts excluded."""
        return sum(r.span for r in self.runs)


def watch(
    workflow: Workflow,
    api: LoopbackAPI,
    *,
    kill_at: int | None = None,
    tenth: int | None = None,
    every: int | None = None,
) -> Run:
    """Run the workflow (the same command every time) and follow the server's count and the
    fetch job's RSS; SIGKILL its process group once the server has counted `kill_at`."""
    pid_file = workflow.folder / "fetch.pid"
    pid_file.unlink(missing_ok=True)
    log = workflow.folder / "snakemake.out"
    before = api.total()
    peak, peak_tenth, peak_all, killed = 0.0, None, None, False
    with open(log, "a") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            workflow.command("--rerun-incomplete"),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=bench_env(),
            start_new_session=True,
        )
        while process.poll() is None:
            count = api.total()
            peak = max(peak, peak_rss_mb(pid_file) or 0.0)
            if tenth is not None and peak_tenth is None and count >= tenth:
                peak_tenth = peak
            if every is not None and peak_all is None and count >= every:
                peak_all = peak
            if kill_at is not None and count >= kill_at:
                os.killpg(process.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.01)
        process.wait()
        seconds = time.perf_counter() - started
    if not killed and process.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(
            f"snakemake failed in {workflow.folder} (exit {process.returncode}):\n{tail}"
        )
    if kill_at is not None and not killed:
        raise RuntimeError(
            f"the run ended before the kill at {kill_at} requests: nothing to resume"
        )
    time.sleep(0.2)  # handler threads of requests cut by the kill finish counting
    with api.lock:
        times = api.times[before:]
    return Run(
        seconds,
        len(times),
        times[0] if times else None,
        times[-1] if times else None,
        killed,
        peak,
        peak_tenth,
        peak_all,
    )


def table_of(folder: Path) -> tuple[str, int]:
    """The fingerprint and row count the store recorded for the fetched table."""
    import duckdb

    with duckdb.connect(str(folder / "results" / "pipeline.duckdb"), read_only=True) as conn:
        found = conn.execute(
            "SELECT fingerprint, row_count FROM _checkpoints WHERE table_name = 'answers'"
        ).fetchall()
    if not found:
        raise RuntimeError(f"{folder}: the store holds no table answers")
    return str(found[0][0]), int(found[0][1])


def steps_of(folder: Path) -> str:
    """What the step log of the last run says of the fetch and the client, in a few words."""
    log = json.loads((folder / "results" / "steplogs" / "answers.json").read_text())
    steps = {step["step_name"]: step["details"] for step in log["steps"]}
    fetch, client = steps["batched_fetch"], steps["http_loopback"]
    return (
        f"batches resumed {fetch['batches_resumed']}, fetched {fetch['batches_fetched']}; "
        f"client requests {client['requests']}, cache hits {client['cache_hits']}, "
        f"retries {client['retries']}, errors {client['errors'] or 'none'}"
    )


def run(measure: Measure) -> list[Row]:
    sys.path.insert(0, str(ROOT / "tests"))
    from loopback_api import serve_loopback_api

    sizes = measure.sizes
    total = sizes.scale_keys * sizes.scale_queries
    tenth = total // 10
    label = (
        f"{total:,} requests ({sizes.scale_keys:,} keys x {sizes.scale_queries}) to a loopback "
        f"API limited to {sizes.scale_rate:g}/s, SIGKILLed {sizes.scale_kills} times and resumed"
    )
    requests = Row(label, f"{total:,}, the requests asked", "<= 1.001, fingerprint equal", 1.001)
    rate = Row(
        "achieved rate of that run while fetching (server's count / time)",
        f"the server's limit, {sizes.scale_rate:g}/s",
        ">= 0.95",
        None,
    )
    memory = Row(
        f"peak RSS of the fetch job at {total:,} requests (uninterrupted run)",
        f"at {tenth:,} requests",
        "<= 1.2",
        1.2,
    )

    with serve_loopback_api() as api:
        reference = scale_workflow(measure.work / "uninterrupted", sizes, api.url(), UNLIMITED)
        whole = watch(reference, api, tenth=tenth, every=total)
    expected_fp, expected_rows = table_of(reference.folder)
    if expected_rows != total:
        raise RuntimeError(f"the uninterrupted run saved {expected_rows} rows, not {total}")
    print(f"  uninterrupted: {whole.seconds:.1f} s, {whole.requests} requests", flush=True)

    runs = Runs()
    rng = random.Random(SEED)
    points = sorted(rng.sample(range(total // 20, total * 19 // 20), sizes.scale_kills))
    with serve_loopback_api() as api:
        api.rate_limit_per_second = sizes.scale_rate
        client_rate = CLIENT_SHARE * sizes.scale_rate
        killed = scale_workflow(measure.work / "killed", sizes, api.url(), client_rate)
        for point in points:
            kill_at = max(point, api.total() + 1)
            runs.runs.append(watch(killed, api, kill_at=kill_at))
            runs.kills_at.append(api.total())
            print(f"  killed at {runs.kills_at[-1]:,} requests", flush=True)
        runs.runs.append(watch(killed, api))
        made = api.total()
        with api.lock:
            refused = api.rejected
    fingerprint, rows = table_of(killed.folder)
    equal = fingerprint == expected_fp and rows == total
    steplog_kb = (killed.folder / "results" / "steplogs" / "answers.json").stat().st_size / 1024

    wall = sum(r.seconds for r in runs.runs)
    requests.add(made / total)
    requests.time("resumed runs", wall)
    requests.time("uninterrupted, unlimited", whole.seconds)
    requests.ok_extra = equal
    requests.extra = (
        f"server counted {made:,} requests ({made - total:,} more than asked, {refused:,} of "
        f"them refused with 429); killed at {', '.join(f'{k:,}' for k in runs.kills_at)} "
        f"requests; final table's fingerprint {'equal to' if equal else 'DIFFERENT from'} the "
        f"uninterrupted run's ({rows:,} rows); step log {steplog_kb:.1f} KB (last run: "
        f"{steps_of(killed.folder)})"
    )

    achieved = made / runs.fetching
    floor = made / sizes.scale_rate
    rate.add(achieved / sizes.scale_rate)
    rate.time("fetching", runs.fetching)
    rate.time("floor", floor)
    rate.ok_extra = achieved / sizes.scale_rate >= 0.95
    at_ncbi = 132_000 / NCBI_RATE / 3600
    rate.extra = (
        f"{achieved:.1f} requests/s over {runs.fetching:.0f} s of fetching in "
        f"{len(runs.runs)} runs (physical floor {floor:.0f} s; wall time {wall:.0f} s with the "
        f"{len(runs.runs)} Snakemake starts and the restarts); at NCBI's 3/s, 132,000 requests "
        f"take {at_ncbi:.1f} h at the limit, {at_ncbi / (achieved / sizes.scale_rate):.1f} h at "
        f"this ratio, against about {UPSTREAM_HOURS:.0f} h upstream"
    )

    if whole.peak_tenth_mb and whole.peak_all_mb:
        memory.add(whole.peak_all_mb / whole.peak_tenth_mb)
        memory.peak(f"at {total:,}", whole.peak_all_mb)
        memory.peak(f"at {tenth:,}", whole.peak_tenth_mb)
    memory.time("uninterrupted, unlimited", whole.seconds)
    memory.extra = (
        f"sampled from /proc (VmHWM) as the server counted those requests; {whole.peak_mb:.0f} "
        f"MB at the job's end, with the combine and save of the table; the uninterrupted run "
        f"made {whole.requests:,} requests at {whole.requests / whole.span:.0f}/s"
    )
    rows_out = [requests, rate, memory]
    measure.record(rows_out)
    return rows_out
