"""Helpers of tests/test_history.py: the `usher-pipeline` command in a subprocess, the demo's
weights, a tiny workflow made by `usher-pipeline init`, SIGKILLs of a whole Snakemake process
group at chosen instants, and the check that a run history is whole."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_outside_workflow import live_group_members
from test_workflow import BIN, RUN_TIMEOUT, output, run_env

from usher_pipeline.history.store import History
from usher_pipeline.persistence.fingerprint import fingerprint_parquet

HEARING = "demo.layers.hearing.weight"
RETINA = "demo.layers.retina.weight"


def usher(
    workdir: Path, *args: str, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    """`usher-pipeline ARGS` in `workdir`; fails the test when `check` and it fails."""
    done = subprocess.run(
        [str(BIN / "usher-pipeline"), *args],
        cwd=workdir,
        env=run_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and done.returncode != 0:
        pytest.fail(f"usher-pipeline {' '.join(args)} failed ({done.returncode}):\n{output(done)}")
    return done


def usher_json(workdir: Path, *args: str) -> Any:
    """The JSON that `usher-pipeline ARGS --format json` prints."""
    return json.loads(usher(workdir, *args, "--format", "json").stdout)


def one_line_error(done: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The single line of a command that failed as a user error (exit 1, no traceback, one
    line on stderr naming every fragment)."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, output(done)
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def set_weights(workdir: Path, hearing: float, retina: float) -> None:
    """Set two of the demo's layer weights in the copy's config (they must still sum to 1)."""
    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["demo"]["layers"]["hearing"]["weight"] = hearing
    config["demo"]["layers"]["retina"]["weight"] = retina
    path.write_text(yaml.safe_dump(config, sort_keys=False))


# -- the history on disk ----------------------------------------------------------------------


def object_files(workdir: Path) -> dict[str, int]:
    """The history's object files, name -> size."""
    folder = History(workdir / "results").objects_dir
    if not folder.is_dir():
        return {}
    return {p.name: p.stat().st_size for p in folder.iterdir() if p.suffix == ".parquet"}


def whole_history(workdir: Path) -> list[dict[str, Any]]:
    """Every run record, oldest first, after checking that each is whole: it loads, its run
    before it is the record before it, and every object it names is present with the
    fingerprint and row count the record gives (read back from the Parquet file)."""
    history = History(workdir / "results")
    names = sorted(p.name for p in history.runs_dir.glob("*.json"))
    assert names == [f"{i}.json" for i in history.run_ids()], f"stray records in runs/: {names}"
    runs = history.runs()
    checked: dict[str, tuple[str, int]] = {}
    for before, run in zip(runs, runs[1:], strict=False):  # the oldest's may have gone by gc
        assert run["previous_run"] == before["run_id"], run["run_id"]
    for run in runs:
        for table, entry in run["tables"].items():
            path = history.root / entry["object"]
            assert path.is_file(), f"run {run['run_id']} names {path} for {table}: missing"
            if path.name not in checked:
                checked[path.name] = fingerprint_parquet(path)
            assert checked[path.name] == (entry["fingerprint"], entry["rows"]), (
                run["run_id"],
                table,
            )
    return runs


def named_objects(runs: Sequence[dict[str, Any]]) -> set[str]:
    """The object file names the run records name."""
    return {Path(e["object"]).name for run in runs for e in run["tables"].values()}


# -- kills ----------------------------------------------------------------------------------


def fault_seed(config: pytest.Config) -> int:
    """The seed of the random kills: --fault-seed, else $USHER_FAULT_SEED, else a fresh one."""
    given = config.getoption("--fault-seed")
    if given is None:
        given = os.environ.get("USHER_FAULT_SEED")
    return int(given) if given is not None else random.SystemRandom().randrange(2**31)


@dataclass(frozen=True)
class Attempt:
    """One `snakemake --cores 2` started in its own process group: killed, or run to its end."""

    killed: bool
    returncode: int | None
    log: str


def run_or_kill(workdir: Path, ready: Callable[[], bool], log: Path) -> Attempt:
    """Start `snakemake --cores 2` in a session of its own and SIGKILL its whole process group
    as soon as `ready()` holds; a run that ends first is let be. Returns when no process of
    the group is left."""
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(BIN / "snakemake"), "--cores", "2"],
            cwd=workdir,
            env=run_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + RUN_TIMEOUT
        killed = False
        while process.poll() is None:
            assert time.monotonic() < deadline, f"the run never ended:\n{log.read_text()}"
            if ready():
                os.killpg(process.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.01)
        process.wait()
    while live_group_members(process.pid):
        assert time.monotonic() < deadline, "killed processes are still running"
        time.sleep(0.05)
    return Attempt(killed, None if killed else process.returncode, log.read_text())


def after(seconds: float) -> Callable[[], bool]:
    """A kill instant `seconds` from now."""
    at = time.monotonic() + seconds
    return lambda: time.monotonic() >= at


def same_run(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether `new` records the same provenance merge of the same tables as `old`."""
    return old["provenance_run_id"] == new["provenance_run_id"] and old["tables"].keys() == (
        new["tables"].keys()
    )


def job_stats_of(log: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake log (rule -> jobs), or {} for no job."""
    if "Job stats:" not in log:
        return {}
    lines = log.splitlines()
    start = lines.index("Job stats:")
    stats: dict[str, int] = {}
    for line in lines[start + 3 :]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        stats[parts[0]] = int(parts[1])
    return stats


# -- a tiny workflow ------------------------------------------------------------------------

TINY_SNAKEFILE = """\
from usher_pipeline import library_path


configfile: "config/config.yaml"


include: library_path("library.smk")


USHER.register("things", key=["k"], noun="things", label="name")


rule things:
    output:
        table=USHER.sentinel("things"),
        steplog=USHER.steplog("things"),
    log:
        USHER.log("things", "things"),
    params:
        n=config["tiny"]["n"],
        repeat=config["tiny"]["repeat"],
    script:
        "scripts/things.py"


include: library_path("provenance.smk")


rule all:
    default_target: True
    input:
        USHER.run_record,
        USHER.history_report,
        USHER.sidecars(),
        USHER.products(),
        USHER.steplogs(),
"""

# n things k = 0..n-1; `repeat` adds a second row of key 0 (the declared key is then not unique)
TINY_SCRIPT = """\
import polars as pl

from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    n = int(snakemake.params.n)
    keys = list(range(n)) + ([0] if snakemake.params.repeat else [])
    frame = pl.DataFrame({"k": keys, "name": [f"t{k}" for k in keys], "v": [k * n for k in keys]})
    job.save(frame, description="n things")
"""


def tiny_workflow(folder: Path) -> Path:
    """`usher-pipeline init folder` with one table `things` registered with key=["k"], made
    from the config's `tiny: {n, repeat}`."""
    usher(folder.parent, "init", folder.name)
    (folder / "Snakefile").write_text(TINY_SNAKEFILE)
    (folder / "scripts" / "things.py").write_text(TINY_SCRIPT)
    for name in ("fetch_records.py", "summarise_records.py"):
        (folder / "scripts" / name).unlink()
    for path in (folder / "rules").glob("*.smk"):
        path.unlink()
    set_tiny(folder, n=5, repeat=False)
    return folder


def set_tiny(workdir: Path, *, n: int, repeat: bool) -> None:
    """Set the tiny workflow's `tiny` config section."""
    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["tiny"] = {"n": n, "repeat": repeat}
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def tiny_run(workdir: Path) -> subprocess.CompletedProcess[str]:
    """One complete run of the tiny workflow."""
    done = subprocess.run(
        [str(BIN / "snakemake"), "--cores", "1"],
        cwd=workdir,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    if done.returncode != 0:
        pytest.fail(f"the tiny workflow failed ({done.returncode}):\n{output(done)}")
    return done
