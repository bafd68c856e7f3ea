"""Kill the demo workflow at random instants and at named points of a save; check convergence.

    .venv/bin/python -m tests.faults.harness --kills 20 [--seed N] [--workdir DIR] [--report F]

1. A reference run: the demo on a small test config, uninterrupted (two side by side, as
   the kill cycles run): its duration T and the fingerprint of every table.
2. Random kills: for each of `--kills` instants spread over [0, T] (one uniform draw in each
   of `--kills` equal slices, from a seeded generator), a fresh run is started in its own
   process group and the whole group is SIGKILLed at that instant. Then the database must
   open, `_checkpoints` must agree with the sentinels on disk, the documented resume (the
   same `snakemake --cores 2`, which clears the locks a killed Snakemake left) must
   complete, and every table's fingerprint must equal the reference's. Batches committed
   before the kill must not be fetched again.
3. Named points: one job (evidence_retina, forced to re-make its table in a copy of the
   finished reference run) kills itself with SIGKILL at each point of
   `usher_pipeline.workflow.faults.POINTS` (inside the database transaction, between commit
   and rename, ...), and it is SIGKILLed from outside the moment its temporary sentinel
   appears on disk, and the moment DuckDB's write-ahead log appears during its commit. The
   documented resume (`snakemake --cores 2`) must converge.

It prints how many kill points were tried and how many converged, and exits 1 unless all did.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
TABLES_DIR = Path("results/tables")
DB = Path("results/pipeline.duckdb")
FINAL = (Path("results/final/candidate_tiers.tsv"), Path("results/final/positive_controls.tsv"))
TARGET_TABLE = "evidence_retina"  # the job the named-point scenarios kill
_TEMP = re.compile(r"^\.(?P<name>.+\.parquet)\.(?P<pid>\d+)\.[0-9a-f]+\.tmp$")

CONFIG = """\
versions:
  ensembl_release: 113
store:
  lock_timeout_seconds: 60
demo:
  gene_limit: {gene_limit}
  fetch:
    batch_size: {batch_size}
    batch_latency_seconds: {latency}
"""


@dataclass
class Outcome:
    """What happened at one kill point."""

    kind: str  # "random" or the named point
    instant: float | None = None
    converged: bool = False
    problems: list[str] = field(default_factory=list)
    committed_at_kill: list[str] = field(default_factory=list)
    batches_kept: int = 0
    seconds: float = 0.0


# -- running the workflow ------------------------------------------------------------------


def snakemake_command(workdir: Path, *extra: str) -> list[str]:
    """The demo workflow of this repository, run in `workdir` on its test config."""
    return [
        str(SNAKEMAKE),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "--cores",
        "2",
        *extra,
    ]


def run_env(workdir: Path, fault: str | None = None) -> dict[str, str]:
    """The environment of a run: fetch audit into the workdir, optionally a fault point."""
    env = {k: v for k, v in os.environ.items() if k != "USHER_FAULT_POINT"}
    env["USHER_FETCH_AUDIT"] = str(workdir / "audit.log")
    if fault:
        env["USHER_FAULT_POINT"] = fault
    return env


def start(workdir: Path, *extra: str, fault: str | None = None) -> subprocess.Popen[bytes]:
    """Start Snakemake as the leader of a new process group (so the group can be killed)."""
    log = open(workdir / "snakemake.out", "ab")  # noqa: SIM115 - closed when the run ends
    try:
        return subprocess.Popen(
            snakemake_command(workdir, *extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=run_env(workdir, fault),
            start_new_session=True,
        )
    finally:
        log.close()


def run(workdir: Path, *extra: str, fault: str | None = None, timeout: float = 300) -> int:
    """Run Snakemake to the end; its return code."""
    process = start(workdir, *extra, fault=fault)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)
        return -1


def session_members(sid: int) -> list[int]:
    """PIDs of live processes in session `sid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            members.append(int(entry.name))
    return members


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL Snakemake's whole process group and wait until no member is left."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    deadline = time.monotonic() + 10
    while session_members(process.pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of session {process.pid} survived SIGKILL")
        for pid in session_members(process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def new_workdir(root: Path, name: str, demo: dict[str, Any]) -> Path:
    """A fresh directory holding only the test config."""
    workdir = root / name
    workdir.mkdir(parents=True)
    (workdir / "config.yaml").write_text(CONFIG.format(**demo))
    return workdir


# -- inspecting the state on disk ----------------------------------------------------------


def parquet_fingerprint(path: Path) -> str:
    """The store's fingerprint of a Parquet file."""
    from usher_pipeline.persistence.fingerprint import fingerprint_parquet

    return fingerprint_parquet(path)[0]


def temp_sentinels(workdir: Path) -> dict[str, list[Path]]:
    """Temporary sentinels left by killed jobs, by table."""
    found: dict[str, list[Path]] = {}
    for path in (workdir / TABLES_DIR).glob(".*.tmp"):
        match = _TEMP.match(path.name)
        if match:
            found.setdefault(match["name"].removesuffix(".parquet"), []).append(path)
    return found


def read_store(workdir: Path) -> dict[str, Any] | None:
    """Checkpoints, table fingerprints and internal tables, read the way a user would.

    None when the database was never created (nothing was committed). Raises if it does not
    open.
    """
    from usher_pipeline.persistence import PipelineStore

    db = workdir / DB
    if not db.exists():
        return None
    store = PipelineStore(db, lock_timeout=30)
    with store.transaction(read_only=True) as tx:
        checkpoints = {row["table_name"]: row for row in tx.list_checkpoints()}
        tables = tx.list_tables()
        fingerprints = {t: tx.fingerprint(t) for t in tables}
        internal = [
            r[0]
            for r in tx.execute_query(
                "SELECT table_name FROM duckdb_tables() WHERE starts_with(table_name, '_')"
            ).rows()
        ]
    return {
        "checkpoints": checkpoints,
        "fingerprints": fingerprints,
        "internal": internal,
        "batches": sum(len(ids) for ids in batch_files(workdir).values()),
    }


def batch_files(workdir: Path) -> dict[str, set[str]]:
    """The fetch batches committed on disk, by table (the ledger's `<batch id>.parquet`)."""
    partial = workdir / TABLES_DIR / ".partial"
    if not partial.is_dir():
        return {}
    return {d.name: {p.stem for p in d.glob("*.parquet")} for d in partial.iterdir() if d.is_dir()}


def consistency_problems(
    workdir: Path, state: dict[str, Any] | None, killed: set[str]
) -> list[str]:
    """How `_checkpoints`, the tables and the sentinels on disk disagree (empty when they agree).

    A checkpoint without its sentinel is allowed for a table in `killed`, or when the job's
    temporary sentinel holding exactly the committed content is still on disk (the job was
    killed between the commit and the rename).
    """
    problems: list[str] = []
    checkpoints = state["checkpoints"] if state else {}
    fingerprints = state["fingerprints"] if state else {}
    temps = temp_sentinels(workdir)
    sentinels = {
        p.stem: p for p in (workdir / TABLES_DIR).glob("*.parquet") if not p.name.startswith(".")
    }
    for table, path in sorted(sentinels.items()):
        row = checkpoints.get(table)
        if row is None:
            problems.append(f"sentinel {path.name} has no checkpoint")
        elif row["fingerprint"] != parquet_fingerprint(path):
            problems.append(f"sentinel {path.name} differs from its checkpoint")
    for table, row in sorted(checkpoints.items()):
        if fingerprints.get(table) != row["fingerprint"]:
            problems.append(f"table {table} differs from its checkpoint (or is missing)")
        if table in sentinels or table in killed:
            continue
        if not any(parquet_fingerprint(t) == row["fingerprint"] for t in temps.get(table, [])):
            problems.append(f"checkpoint {table} has neither a sentinel nor a killed save")
    for table in sorted(set(fingerprints) - set(checkpoints)):
        problems.append(f"table {table} has no checkpoint")
    return problems


def audit_lines(workdir: Path) -> list[tuple[str, str, str]]:
    """(event, table, batch id) lines of the fetch audit."""
    path = workdir / "audit.log"
    if not path.exists():
        return []
    return [tuple(line.split()) for line in path.read_text().splitlines() if line.strip()]  # type: ignore[misc]


def converged_problems(
    workdir: Path, reference: dict[str, Any], code: int, skip_final: bool = False
) -> list[str]:
    """Why a resumed run does not equal the reference run (empty when it does)."""
    if code != 0:
        tail = (workdir / "snakemake.out").read_text(errors="replace").splitlines()[-8:]
        return [f"resume exited with {code}: " + " | ".join(tail)]
    state = read_store(workdir)
    problems = consistency_problems(workdir, state, killed=set())
    if state is None:
        return [*problems, "no database after the resume"]
    got = {t: r["fingerprint"] for t, r in state["checkpoints"].items()}
    if got != reference["fingerprints"]:
        differ = sorted(
            t
            for t in set(got) | set(reference["fingerprints"])
            if got.get(t) != reference["fingerprints"].get(t)
        )
        problems.append(f"fingerprints differ from the uninterrupted run: {differ}")
    stale = sorted(p.name for paths in temp_sentinels(workdir).values() for p in paths)
    if stale:
        problems.append(f"temporary sentinels of killed jobs left: {stale}")
    partial = [t for t in state["internal"] if t.startswith(("_partial_", "_fetch_batches"))]
    if partial:
        problems.append(f"fetch batch tables in the database: {partial}")
    if state["batches"]:
        problems.append(f"{state['batches']} fetch batch files left")
    if not skip_final:
        for path in FINAL:
            if (workdir / path).read_bytes() != reference["final"][str(path)]:
                problems.append(f"{path} differs from the uninterrupted run")
    if not (workdir / "results/provenance.json").exists():
        problems.append("run-level provenance missing")
    return problems


# -- scenarios -----------------------------------------------------------------------------


def reference_run(root: Path, demo: dict[str, Any], lanes: int) -> dict[str, Any]:
    """The uninterrupted run: duration, fingerprints and final reports.

    `lanes` identical runs go side by side, as the kill cycles will: their longest duration
    is the span the kill instants cover, and their tables must fingerprint equally.
    """
    workdirs = [
        new_workdir(root, f"reference{'' if n == 0 else n + 1}", demo) for n in range(lanes)
    ]
    started = time.monotonic()
    processes = [start(w) for w in workdirs]
    durations = []
    for workdir, process in zip(workdirs, processes, strict=True):
        code = process.wait(timeout=600)
        durations.append(time.monotonic() - started)
        if code != 0:
            raise RuntimeError(f"the reference run failed ({code}); see {workdir}/snakemake.out")
    seconds = max(durations)
    others = [read_store(w) for w in workdirs[1:]]
    workdir = workdirs[0]
    state = read_store(workdir)
    assert state is not None
    problems = consistency_problems(workdir, state, killed=set())
    if problems:
        raise RuntimeError(f"the reference run is inconsistent: {problems}")
    for other in others:
        assert other is not None
        if {t: r["fingerprint"] for t, r in other["checkpoints"].items()} != {
            t: r["fingerprint"] for t, r in state["checkpoints"].items()
        }:
            raise RuntimeError("two uninterrupted runs gave different tables: not deterministic")
    return {
        "workdir": workdir,
        "seconds": seconds,
        "fingerprints": {t: r["fingerprint"] for t, r in state["checkpoints"].items()},
        "created_at": {t: r["created_at"] for t, r in state["checkpoints"].items()},
        "final": {str(p): (workdir / p).read_bytes() for p in FINAL},
        "batches": sum(1 for e in audit_lines(workdir) if e[0] == "committed"),
    }


def random_kill(
    root: Path,
    index: int,
    instant: float,
    reference: dict[str, Any],
    demo: dict[str, Any],
) -> Outcome:
    """Kill a fresh run's process group at `instant` seconds, check, resume, compare."""
    outcome = Outcome("random", instant=round(instant, 3))
    started = time.monotonic()
    for attempt in range(4):  # a run faster than the reference may end before the instant
        workdir = new_workdir(root, f"kill{index:02d}" + "abcd"[attempt], demo)
        process = start(workdir)
        try:
            process.wait(timeout=instant)
        except subprocess.TimeoutExpired:
            kill_group(process)
            break
        instant *= 0.8
    else:
        outcome.problems.append(f"four runs ended before the kill instant ({instant:.2f} s)")
    outcome.instant = round(instant, 3)
    try:
        state = read_store(workdir)
    except Exception as exc:  # noqa: BLE001 - any failure to open is the finding
        outcome.problems.append(f"database does not open after the kill: {exc}")
        outcome.seconds = round(time.monotonic() - started, 2)
        return outcome
    outcome.committed_at_kill = sorted(state["checkpoints"]) if state else []
    outcome.problems += consistency_problems(workdir, state, killed=set())
    before = audit_lines(workdir)
    kept = {(t, b) for e, t, b in before if e == "committed" and t not in outcome.committed_at_kill}
    outcome.batches_kept = len(kept)
    on_disk = batch_files(workdir)  # the audit line follows the commit; the files are the truth
    missing = {(t, b) for t, b in kept if b not in on_disk.get(t, set())}
    if missing:
        outcome.problems.append(f"{len(missing)} committed batches lost by the kill")
    code = run(workdir)  # the documented resume: the same command, no --unlock
    outcome.problems += converged_problems(workdir, reference, code)
    refetched = [
        (t, b)
        for e, t, b in audit_lines(workdir)[len(before) :]
        if e == "fetched" and (t, b) in kept
    ]
    if refetched:
        outcome.problems.append(
            f"{len(refetched)} batches committed before the kill were fetched again"
        )
    outcome.converged = not outcome.problems
    outcome.seconds = round(time.monotonic() - started, 2)
    return outcome


def copy_reference(root: Path, name: str, reference: dict[str, Any]) -> Path:
    """A copy of the finished reference run (results, logs and Snakemake's metadata)."""
    workdir = root / name
    shutil.copytree(reference["workdir"], workdir, symlinks=True)
    (workdir / "audit.log").unlink(missing_ok=True)
    (workdir / "snakemake.out").unlink(missing_ok=True)
    return workdir


def kill_on_temp_sentinel(process: subprocess.Popen[bytes], workdir: Path) -> str:
    """SIGKILL the job the moment its temporary sentinel appears; what was seen."""
    folder = workdir / TABLES_DIR
    prefix = f".{TARGET_TABLE}.parquet."
    while process.poll() is None:
        for entry in os.scandir(folder):
            match = _TEMP.match(entry.name)
            if entry.name.startswith(prefix) and match:
                os.kill(int(match["pid"]), signal.SIGKILL)
                return f"killed PID {match['pid']} with {entry.stat().st_size} bytes written"
        time.sleep(0.0005)
    return "the temporary sentinel never appeared"


def kill_in_commit(process: subprocess.Popen[bytes], workdir: Path) -> str:
    """SIGKILL the job while DuckDB writes its commit: once its temporary sentinel exists,
    the moment the database's write-ahead log appears."""
    folder = workdir / TABLES_DIR
    wal = workdir / DB.with_name(DB.name + ".wal")
    prefix = f".{TARGET_TABLE}.parquet."
    pid = None
    while process.poll() is None:
        if pid is None:
            for entry in os.scandir(folder):
                match = _TEMP.match(entry.name)
                if entry.name.startswith(prefix) and match:
                    pid = int(match["pid"])
        elif wal.exists():
            os.kill(pid, signal.SIGKILL)
            return f"killed PID {pid} with a {wal.stat().st_size}-byte write-ahead log"
        elif not any(e.name.startswith(prefix) for e in os.scandir(folder)):
            return "the save finished before its commit was seen"
        time.sleep(0.0002)
    return "the job ended before its commit was seen"


def named_kill(root: Path, point: str, reference: dict[str, Any]) -> Outcome:
    """Kill the target job at a named point while it replaces its committed table; resume."""
    outcome = Outcome(point)
    started = time.monotonic()
    workdir = copy_reference(root, f"point_{point}", reference)
    forced = ("--forcerun", str(TABLES_DIR / f"{TARGET_TABLE}.parquet"))
    if point in EXTERNAL:
        process = start(workdir, *forced)
        seen = EXTERNAL[point](process, workdir)
        code = process.wait(timeout=300)
        if not seen.startswith("killed"):
            outcome.problems.append(seen)
    else:
        code = run(workdir, *forced, fault=f"{point}:{TARGET_TABLE}")
    if code == 0:
        outcome.problems.append("the run succeeded although its job was killed")
    try:
        state = read_store(workdir)
    except Exception as exc:  # noqa: BLE001 - any failure to open is the finding
        outcome.problems.append(f"database does not open after the kill: {exc}")
        return outcome
    assert state is not None
    outcome.problems += consistency_problems(workdir, state, killed={TARGET_TABLE})
    row = state["checkpoints"].get(TARGET_TABLE)
    old = reference["created_at"][TARGET_TABLE]
    if row is None:
        outcome.problems.append(f"the committed {TARGET_TABLE} vanished")
    elif point in ("after_sentinel_temp_write", "inside_transaction") and row["created_at"] != old:
        outcome.problems.append(f"a kill at {point} left a new commit of {TARGET_TABLE}")
    elif (
        point in ("after_commit_before_rename", "after_rename_before_steplog")
        and row["created_at"] == old
    ):
        outcome.problems.append(f"a kill at {point} left no new commit of {TARGET_TABLE}")
    if point in EXTERNAL and row is not None:
        outcome.committed_at_kill = ["new commit" if row["created_at"] != old else "old commit"]
    code = run(workdir)
    outcome.problems += converged_problems(workdir, reference, code)
    outcome.converged = not outcome.problems
    outcome.seconds = round(time.monotonic() - started, 2)
    return outcome


EXTERNAL = {  # kills from outside, by watching the files of the save
    "external_sentinel_write": kill_on_temp_sentinel,
    "external_database_commit": kill_in_commit,
}


def instants(kills: int, duration: float, seed: int) -> list[float]:
    """One uniform instant in each of `kills` equal slices of [0, duration]."""
    rng = random.Random(seed)
    width = duration / max(kills, 1)
    return [width * (i + rng.random()) for i in range(kills)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="random kill instants (20)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the instants")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs here")
    parser.add_argument("--report", type=Path, default=None, help="write a JSON report here")
    parser.add_argument("--gene-limit", type=int, default=2000, help="genes in the demo (2000)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per batch (0.05)")
    parser.add_argument("--batch-size", type=int, default=50, help="genes per batch (50)")
    parser.add_argument("--lanes", type=int, default=2, help="kill cycles run side by side (2)")
    parser.add_argument("--no-points", action="store_true", help="skip the named points")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="usher-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"fault harness: seed {seed}, runs in {root}", flush=True)
    began = time.monotonic()
    demo = {"gene_limit": args.gene_limit, "latency": args.latency, "batch_size": args.batch_size}
    reference = reference_run(root, demo, args.lanes)
    print(
        f"reference run: {reference['seconds']:.1f} s, {len(reference['fingerprints'])} tables, "
        f"{reference['batches']} fetch batches",
        flush=True,
    )
    outcomes: list[Outcome] = []

    def random_cycle(index: int, instant: float) -> Outcome:
        try:
            outcome = random_kill(root, index, instant, reference, demo)
        except Exception:  # noqa: BLE001 - a crash of the harness is reported, not hidden
            outcome = Outcome("random", instant=instant, problems=[traceback.format_exc()])
        print(
            f"kill {index + 1:2d} at {outcome.instant:5.2f} s: "
            f"{'converged' if outcome.converged else 'FAILED'}; tables committed at the kill "
            f"{len(outcome.committed_at_kill)}, fetch batches kept {outcome.batches_kept} "
            f"({outcome.seconds:.1f} s)" + ("" if outcome.converged else f": {outcome.problems}"),
            flush=True,
        )
        return outcome

    def point_cycle(point: str) -> Outcome:
        try:
            outcome = named_kill(root, point, reference)
        except Exception:  # noqa: BLE001 - a crash of the harness is reported, not hidden
            outcome = Outcome(point, problems=[traceback.format_exc()])
        extra = f" ({outcome.committed_at_kill[0]})" if outcome.committed_at_kill else ""
        print(
            f"point {point}: {'converged' if outcome.converged else 'FAILED'}{extra} "
            f"({outcome.seconds:.1f} s)" + ("" if outcome.converged else f": {outcome.problems}"),
            flush=True,
        )
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, args.lanes)) as pool:
        spread = instants(args.kills, reference["seconds"], seed)
        outcomes += pool.map(random_cycle, range(args.kills), spread)
        if not args.no_points:
            from usher_pipeline.workflow.faults import POINTS

            outcomes += pool.map(point_cycle, [*POINTS, *EXTERNAL])
    tried = len(outcomes)
    converged = sum(o.converged for o in outcomes)
    seconds = time.monotonic() - began
    print(f"kill points tried: {tried}, converged: {converged} (seed {seed}, {seconds:.0f} s)")
    if args.report:
        args.report.write_text(
            json.dumps(
                {
                    "seed": seed,
                    "tried": tried,
                    "converged": converged,
                    "random_kills": args.kills,
                    "reference_seconds": reference["seconds"],
                    "seconds": seconds,
                    "outcomes": [asdict(o) for o in outcomes],
                },
                indent=2,
                default=str,
            )
        )
    if args.workdir is None and converged == tried:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if converged == tried else 1


if __name__ == "__main__":
    sys.exit(main())
