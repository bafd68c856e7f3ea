"""The demo workflow on a real SLURM cluster, in both database modes, and head mode locally.

The SLURM tests start munged, slurmctld and slurmd on loopback (tests/cluster/slurm.py) and
submit the workflow through snakemake-executor-plugin-slurm with the repository's cluster
profile. If SLURM cannot be started they fail with the reason and the daemon logs.

Every run works in a temporary copy of the workflow with tests/configs/cluster.yaml (100
genes, 3 fetch batches per evidence layer); the reference is a local job-mode run of the
same config.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from usher_pipeline.persistence.fingerprint import fingerprint_parquet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import ClusterUnavailable, SlurmCluster  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "tests" / "configs"
BIN = Path(sys.executable).parent
WORKFLOW_FILES = ("Snakefile", "rules", "scripts", "config", "profiles", "envs")
RUN_TIMEOUT = 420
CLUSTER_CONFIG = ("--configfile", str(CONFIGS / "cluster.yaml"))
SLOW_CONFIG = ("--configfile", str(CONFIGS / "cluster.yaml"), str(CONFIGS / "cluster_slow.yaml"))
HEAD_MODE = ("--config", "store={database_mode: head}")
# This cluster has no accounting database (sacct fails) and no accounts. The plugin polls
# squeue after 3 s, then 10 s longer each time no job has finished (3, 16, 39 s, ...), so a
# job of 10-15 s is seen finishing after 16 s.
SLURM_ARGS = (
    "--profile",
    "profiles/slurm",
    "--slurm-status-command",
    "squeue",
    "--slurm-no-account",
    "--slurm-init-seconds-before-status-checks",
    "3",
)
KILLED_LAYER = "hearing"
KILLED_TABLE = f"evidence_{KILLED_LAYER}"


# -- helpers ---------------------------------------------------------------------------------


def copy_workflow(dest: Path) -> Path:
    """A copy of the workflow in `dest`, runnable there as at the repository root."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, dest / name)
    return dest


def run_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a Snakemake run: this interpreter's tools first on PATH."""
    env = dict(base if base is not None else os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def snakemake(
    workdir: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run `snakemake ARGS` in `workdir`; fail the test with its output if it fails."""
    done = subprocess.run(
        [str(BIN / "snakemake"), *args],
        cwd=workdir,
        env=run_env(env),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    if check and done.returncode != 0:
        pytest.fail(
            f"snakemake {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n"
            f"{done.stderr[-6000:]}"
        )
    return done


def checkpoints(workdir: Path) -> list[tuple[Any, ...]]:
    """Every `_checkpoints` row, without its timestamp, ordered by table."""
    with duckdb.connect(str(workdir / "results" / "pipeline.duckdb"), read_only=True) as conn:
        return conn.sql(
            "SELECT * EXCLUDE (created_at) FROM _checkpoints ORDER BY table_name"
        ).fetchall()


def checkpoint_fingerprints(workdir: Path) -> dict[str, str]:
    with duckdb.connect(str(workdir / "results" / "pipeline.duckdb"), read_only=True) as conn:
        rows = conn.sql("SELECT table_name, fingerprint FROM _checkpoints").fetchall()
    return dict(rows)


def table_fingerprints(workdir: Path) -> dict[str, str]:
    """Fingerprints computed from the tables themselves (not from recorded values)."""
    path = str(workdir / "results" / "pipeline.duckdb")
    with duckdb.connect(path, read_only=True) as conn:
        tables = [
            r[0]
            for r in conn.sql(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_name NOT LIKE '\\_%' ESCAPE '\\'"
            ).fetchall()
        ]
    from usher_pipeline.persistence import PipelineStore

    store = PipelineStore(path)
    return {table: store.fingerprint(table) for table in tables}


def sentinel_fingerprints(workdir: Path) -> dict[str, str]:
    return {
        p.stem: fingerprint_parquet(p)[0]
        for p in sorted((workdir / "results" / "tables").glob("*.parquet"))
    }


def steplogs(workdir: Path) -> dict[str, dict[str, Any]]:
    return {
        p.stem: json.loads(p.read_text())
        for p in sorted((workdir / "results" / "steplogs").glob("*.json"))
    }


def steplog_fingerprints(workdir: Path) -> dict[str, str]:
    return {
        entry["table"]: entry["fingerprint"]
        for record in steplogs(workdir).values()
        for entry in record["outputs"]
        if entry.get("table")
    }


def sidecar_fingerprints(workdir: Path) -> dict[str, str]:
    """Each table's fingerprint as its provenance sidecar records it."""
    found = {}
    for path in sorted((workdir / "results" / "tables").glob("*.provenance.json")):
        output = json.loads(path.read_text())["output"]
        found[output["table"]] = output["fingerprint"]
    return found


def ingest_record_fingerprints(workdir: Path) -> dict[str, str]:
    """Each table's fingerprint as the head-node ingest record lists it."""
    record = json.loads((workdir / "results" / "ingested.json").read_text())
    return {table: entry["fingerprint"] for table, entry in record["tables"].items()}


def fetch_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    steps = [s for s in record["steps"] if s["step_name"] == "batched_fetch"]
    assert steps, f"step log of {record['rule']} has no batched_fetch step"
    return steps[0]["details"]


def partial_state(workdir: Path) -> list[str]:
    """What an unfinished fetch leaves behind: batch files and progress notes, and (never
    expected) batch tables in the database."""
    found = [str(p) for p in (workdir / "results" / "tables").glob(".partial*")]
    db = workdir / "results" / "pipeline.duckdb"
    if db.exists():
        with duckdb.connect(str(db), read_only=True) as conn:
            names = [r[0] for r in conn.sql("SHOW TABLES").fetchall()]
            found += [n for n in names if n.startswith(("_partial_", "_fetch_batches"))]
    return found


def committed_batches(workdir: Path, mode: str, table: str) -> int:
    """How many fetch batches of `table` an interrupted job left committed (files, in both
    database modes)."""
    return len(list((workdir / "results" / "tables" / ".partial" / table).glob("*.parquet")))


def wait_for_text(path: Path, text: str, proc: subprocess.Popen[str], timeout: float) -> None:
    """Wait until `path` contains `text`; fail if the run ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            out, _ = proc.communicate()
            pytest.fail(f"the run ended ({proc.returncode}) before {path} said {text!r}:\n{out}")
        time.sleep(0.2)
    proc.kill()
    out, _ = proc.communicate()
    pytest.fail(f"{path} did not say {text!r} within {timeout:.0f} s:\n{out[-6000:]}")


def slurm_comment(record: Mapping[str, Any]) -> str:
    """The --comment the SLURM plugin gives a job: rule_<rule>[_wildcards_<values>]."""
    comment = f"rule_{record['rule']}"
    if record["wildcards"]:
        comment += "_wildcards_" + "_".join(record["wildcards"].values())
    return comment


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the cluster config run locally in job mode."""
    workdir = copy_workflow(tmp_path_factory.mktemp("local-job"))
    snakemake(workdir, "--cores", "2", *CLUSTER_CONFIG)
    return workdir


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    """A running one-node SLURM cluster; the tests fail (never skip) when it cannot start."""
    cluster = SlurmCluster()
    try:
        cluster.start()
    except ClusterUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


# -- profiles --------------------------------------------------------------------------------


def test_workflow_profile_never_overrides_the_cluster_profile() -> None:
    # Snakemake loads profiles/default beneath every --profile and lets it win, so it must
    # not set what the cluster profile sets differently (cores would cap the cluster jobs).
    default = yaml.safe_load((REPO / "profiles" / "default" / "profile.yaml").read_text())
    cluster = yaml.safe_load((REPO / "profiles" / "slurm" / "profile.yaml").read_text())
    assert cluster["executor"] == "slurm"
    for key in ("cores", "jobs", "executor", "latency-wait", "default-resources"):
        assert key not in default, f"profiles/default sets {key}, overriding profiles/slurm"
    clashes = {k: (v, cluster[k]) for k, v in default.items() if k in cluster and cluster[k] != v}
    assert clashes == {}


def test_slurm_profile_dry_run_plans_every_job_with_its_resources(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    done = snakemake(workdir, "--profile", "profiles/slurm", "-n", *CLUSTER_CONFIG)
    out = done.stdout + done.stderr
    assert "Using profiles profiles/slurm" in out
    stats = {
        line.split()[0]: int(line.split()[1])
        for line in out.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }
    assert stats["evidence"] == 3 and stats["candidate_tiers"] == 1 and stats["provenance"] == 1
    blocks = out.split("rule ")
    evidence = [b for b in blocks if b.startswith("evidence:")]
    others = [b for b in blocks if b.startswith("gene_scores:")]
    assert evidence and all("mem_mb=4000" in b and "runtime=720" in b for b in evidence)
    assert others and "mem_mb=2000" in others[0] and "runtime=30" in others[0]


def test_cluster_helper_fails_with_the_reason_when_slurm_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ClusterUnavailable, match="not found on PATH.*apt-get install"):
        SlurmCluster().start()


# -- head mode without SLURM -----------------------------------------------------------------


def test_head_mode_gives_the_same_tables_and_checkpoints_as_job_mode(
    local_run: Path, tmp_path: Path
) -> None:
    workdir = copy_workflow(tmp_path / "head")
    snakemake(workdir, "--cores", "2", *CLUSTER_CONFIG, *HEAD_MODE)

    reference = checkpoint_fingerprints(local_run)
    assert len(reference) == 10
    assert checkpoint_fingerprints(workdir) == reference
    assert table_fingerprints(workdir) == reference
    assert sentinel_fingerprints(workdir) == sentinel_fingerprints(local_run) == reference
    assert steplog_fingerprints(local_run) == reference
    assert sidecar_fingerprints(workdir) == sidecar_fingerprints(local_run) == reference
    assert checkpoints(workdir) == checkpoints(local_run)
    assert partial_state(workdir) == []

    # Head-mode jobs never load DuckDB: the ingest fingerprints each sentinel, and the
    # provenance merge writes that fingerprint into the sidecars.
    assert steplog_fingerprints(workdir) == dict.fromkeys(reference)
    assert ingest_record_fingerprints(workdir) == reference
    for record in steplogs(workdir).values():
        assert record["database"]["mode"] == "head"
        assert all(e.get("committed_at") is None for e in record["outputs"] if e.get("table"))
    assert not (local_run / "results" / "ingested.json").exists()


# -- the real cluster ------------------------------------------------------------------------


@dataclass
class SlurmScenario:
    """What one database mode's kill-and-resume scenario on SLURM produced."""

    mode: str
    workdir: Path
    killed: str = ""
    first_output: str = ""
    first_returncode: int | None = None
    target_after_kill: bool = True
    resumable: int = 0
    queue: dict[str, dict[str, str]] = field(default_factory=dict)
    timeline: list[tuple[str, float]] = field(default_factory=list)
    error: BaseException | None = None


def kill_and_resume(cluster: SlurmCluster, scenario: SlurmScenario) -> None:
    """Run to one slow evidence layer, scancel its job mid-fetch, then rerun the workflow."""
    workdir = scenario.workdir
    started = time.monotonic()

    def mark(event: str) -> None:
        scenario.timeline.append((event, round(time.monotonic() - started, 1)))

    mode_args: Sequence[str] = HEAD_MODE if scenario.mode == "head" else ()
    env = run_env(cluster.env)
    target = f"results/tables/{KILLED_TABLE}.parquet"
    first = subprocess.Popen(
        [str(BIN / "snakemake"), target, *SLURM_ARGS, *SLOW_CONFIG, *mode_args],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    job_log = workdir / "logs" / "evidence" / f"{KILLED_TABLE}.log"
    wait_for_text(job_log, f"{KILLED_TABLE}: 1/3 batches", first, timeout=300)
    mark("first batch committed")
    running = [
        j
        for j in cluster.squeue()
        if j["comment"] == f"rule_evidence_wildcards_{KILLED_LAYER}"
        and j["state"] == "RUNNING"
        and str(workdir) in j["workdir"]
    ]
    assert len(running) == 1, cluster.squeue()
    scenario.killed = running[0]["job_id"]
    cluster.scancel(scenario.killed)
    mark(f"scancel {scenario.killed}")
    scenario.first_output, _ = first.communicate(timeout=RUN_TIMEOUT)
    mark("first run ended")
    scenario.first_returncode = first.returncode
    scenario.target_after_kill = (workdir / target).exists()
    scenario.resumable = committed_batches(workdir, scenario.mode, KILLED_TABLE)
    snakemake(workdir, *SLURM_ARGS, *CLUSTER_CONFIG, *mode_args, env=env)
    mark("rerun ended")
    scenario.queue = {j["job_id"]: j for j in cluster.squeue() if j["workdir"] == str(workdir)}


@pytest.fixture(scope="module")
def slurm_scenarios(
    slurm: SlurmCluster, local_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, SlurmScenario]:
    """Both database modes' scenarios, run side by side on the cluster (halves the wait)."""
    scenarios = {
        mode: SlurmScenario(mode, copy_workflow(tmp_path_factory.mktemp(f"slurm-{mode}")))
        for mode in ("job", "head")
    }

    def run(scenario: SlurmScenario) -> None:
        try:
            kill_and_resume(slurm, scenario)
        except BaseException as exc:  # noqa: BLE001 - reported by that mode's test
            scenario.error = exc

    threads = [threading.Thread(target=run, args=(s,)) for s in scenarios.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return scenarios


@pytest.mark.parametrize("mode", ["job", "head"])
def test_slurm_run_killed_by_scancel_resumes_and_matches_the_local_run(
    slurm_scenarios: dict[str, SlurmScenario], local_run: Path, mode: str
) -> None:
    scenario = slurm_scenarios[mode]
    if scenario.error is not None:
        raise scenario.error
    workdir, killed, queue = scenario.workdir, scenario.killed, scenario.queue
    print(f"{mode} mode timeline (s): {scenario.timeline}")
    for job in queue.values():
        print(
            f"  SLURM job {job['job_id']} {job['comment']} {job['state']}: submitted "
            f"{job['submit']}, ran {job['start']} to {job['end']}"
        )

    # The cancelled job failed the first run and left its committed batches, not its table.
    out = scenario.first_output
    assert scenario.first_returncode != 0, out
    assert f"SLURM-job '{killed}' failed" in out and "CANCELLED" in out, out[-6000:]
    assert queue[killed]["state"] == "CANCELLED"
    assert not scenario.target_after_kill
    assert 1 <= scenario.resumable < 3

    # The rerun fetched only the missing batches.
    records = steplogs(workdir)
    summary = fetch_summary(records[KILLED_TABLE])
    assert summary["batches_resumed"] == scenario.resumable
    assert summary["batches_fetched"] == 3 - scenario.resumable

    # Same data as the local run, recorded the same way; nothing half-done left.
    reference = checkpoint_fingerprints(local_run)
    assert checkpoint_fingerprints(workdir) == reference
    assert table_fingerprints(workdir) == reference
    assert sentinel_fingerprints(workdir) == reference
    assert sidecar_fingerprints(workdir) == reference
    assert checkpoints(workdir) == checkpoints(local_run)
    assert partial_state(workdir) == []

    # Every job ran under SLURM, and its step log names the job SLURM ran it as.
    assert len(records) == 9
    job_ids = []
    for name, record in records.items():
        scheduler = record["scheduler"]
        assert scheduler is not None and scheduler["name"] == "slurm", name
        job_id = scheduler["job_id"]
        assert job_id in queue, f"{name}: SLURM job {job_id} unknown to squeue"
        assert queue[job_id]["comment"] == slurm_comment(record)
        assert queue[job_id]["state"] == "COMPLETED"
        assert record["database"]["mode"] == mode
        job_ids.append(job_id)
    assert len(set(job_ids)) == len(job_ids)
    assert records[KILLED_TABLE]["scheduler"]["job_id"] != killed

    # The local rules ran on the head node, not as SLURM jobs.
    local = [j for j in queue.values() if j["comment"].startswith(("rule_ingest", "rule_prov"))]
    assert local == []
    if mode == "head":
        assert ingest_record_fingerprints(workdir) == reference
    else:
        assert not (workdir / "results" / "ingested.json").exists()
