"""A workflow of its own, outside the repository and with no profile, killed and resumed.

The workflow is generated into tmp_path: it includes rules/library.smk by absolute path (or
loads the provenance rules as a module), fetches a table in batches through `Job.fetch` with
a function that counts its calls in a file, and derives a second table from it. Its whole
process group is SIGKILLed mid-fetch, right after the fetch job's sentinel and step log
appear, and during the provenance merge; each time the same command must finish and give
the clean run's tables. A failing job's traceback is said once on the terminal and once in
its log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import polars as pl
import pytest

from usher_pipeline.persistence import PipelineStore
from usher_pipeline.persistence.fingerprint import fingerprint_parquet
from usher_pipeline.persistence.locking import StoreLock

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
KEYS, BATCH = 24, 3  # 8 batches
TABLES = ("items", "totals")
TIMEOUT = 300

LIBRARY_INCLUDE = """\
include: "{rules}/library.smk"


USHER.register("items")
USHER.register("totals")
"""
PROVENANCE_INCLUDE = """
include: "{rules}/provenance.smk"
"""
PROVENANCE_MODULE = """
module usher:
    snakefile:
        "{rules}/module.smk"
    config:
        config


use rule * from usher as usher_*
"""
RULES = """

rule all:
    default_target: True
    input:
        USHER.run_record,
        USHER.sidecars(),
        USHER.products(),
        USHER.steplogs(),


rule items:
    output:
        table=USHER.sentinel("items"),
        steplog=USHER.steplog("items"),
    log:
        USHER.log("items", "items"),
    params:
        wanted=list(range({keys})),
        batch_size={batch},
    script:
        "scripts/items.py"


rule totals:
    input:
        source=USHER.sentinel("items"),
    output:
        table=USHER.sentinel("totals"),
        steplog=USHER.steplog("totals"),
    log:
        USHER.log("totals", "totals"),
    script:
        "scripts/totals.py"
"""
# The marker files in the working directory only slow a job down or make it fail, so that
# the test can kill or fail it at a chosen instant; the values never depend on them.
ITEMS = '''\
"""A batched fetch that notes each call (its batch's first key) in calls.log."""

import time
from pathlib import Path

import polars as pl

from usher_pipeline.workflow import Job


def fetch(keys):
    with open("calls.log", "a", encoding="utf-8") as calls:
        calls.write(f"{keys[0]}\\n")
    if Path("slow_fetch").exists():
        time.sleep(0.25)
    return pl.DataFrame({"key": keys, "value": [k * k + 1 for k in keys]})


with Job(snakemake) as job:
    wanted = list(snakemake.params.wanted)
    frame = job.fetch(wanted, fetch, batch_size=int(snakemake.params.batch_size))
    job.save(frame, description="each key and its value")
while Path("hold_after_steplog").exists():  # the job lives on after its step log
    time.sleep(0.05)
'''
TOTALS = '''\
"""The sum of the fetched values."""

from pathlib import Path

import polars as pl

from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    items = job.read("source")
    if Path("fail_unexpected").exists():
        raise ValueError("totals found a value it cannot add")
    if Path("fail_expected").exists():
        job.read("no_such_input")
    job.save(items.select(pl.col("value").sum()), description="the sum of the values")
'''
CONFIG = """\
store:
  lock_timeout_seconds: 120
"""


def write_workflow(root: Path, form: str) -> Path:
    """The workflow's folder (Snakefile, scripts, config) in `root`; returns the Snakefile."""
    rules = (REPO / "rules").as_posix()
    folder = root / "workflow"
    (folder / "scripts").mkdir(parents=True)
    provenance = PROVENANCE_INCLUDE if form == "include" else PROVENANCE_MODULE
    (folder / "Snakefile").write_text(
        LIBRARY_INCLUDE.format(rules=rules)
        + RULES.format(keys=KEYS, batch=BATCH)
        + provenance.format(rules=rules)
    )
    (folder / "scripts" / "items.py").write_text(ITEMS)
    (folder / "scripts" / "totals.py").write_text(TOTALS)
    (folder / "config.yaml").write_text(CONFIG)
    return folder / "Snakefile"


def command(snakefile: Path, workdir: Path) -> list[str]:
    """The one command of every run and every resume: no profile, no --rerun-incomplete."""
    return [
        str(SNAKEMAKE),
        "--snakefile",
        str(snakefile),
        "--directory",
        str(workdir),
        "--configfile",
        str(snakefile.with_name("config.yaml")),
        "--cores",
        "2",
    ]


def environment(root: Path) -> dict[str, str]:
    """No profile from the environment or the user's config folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAKEMAKE_", "USHER_"))}
    env["XDG_CONFIG_HOME"] = str(root / "xdg")  # an empty folder: no global profile
    return env


class Workflow:
    """The generated workflow and one working directory it runs in."""

    def __init__(self, root: Path, form: str, name: str) -> None:
        self.root = root
        self.snakefile = root / "workflow" / "Snakefile"
        if not self.snakefile.exists():
            write_workflow(root, form)
        self.workdir = root / name
        self.workdir.mkdir()
        self.output = self.workdir / "terminal.txt"

    def start(self) -> subprocess.Popen[bytes]:
        with self.output.open("ab") as out:
            return subprocess.Popen(
                command(self.snakefile, self.workdir),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environment(self.root),
                cwd=self.root,  # Snakemake looks for profiles/default from here
                start_new_session=True,  # its own process group, killed whole
            )

    def run(self, *targets: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*command(self.snakefile, self.workdir), *targets],
            capture_output=True,
            text=True,
            env=environment(self.root),
            cwd=self.root,
            timeout=TIMEOUT,
        )
        with self.output.open("a") as out:
            out.write(done.stdout + done.stderr)
        # Snakemake names every profile it reads "for setting default command line arguments"
        assert "default command line arguments" not in done.stdout + done.stderr
        return done

    def kill_when(self, ready: Callable[[], bool]) -> None:
        """Start a run and SIGKILL its whole process group the moment `ready()` holds."""
        process = self.start()
        deadline = time.monotonic() + TIMEOUT
        while not ready():
            assert process.poll() is None, f"the run ended before the kill:\n{self.terminal()}"
            assert time.monotonic() < deadline, "the instant of the kill never came"
            time.sleep(0.002)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        while group_members(process.pid):
            assert time.monotonic() < deadline, "killed processes are still running"
            time.sleep(0.02)

    def path(self, relative: str) -> Path:
        return self.workdir / relative

    def marker(self, name: str, present: bool) -> None:
        if present:
            self.path(name).touch()
        else:
            self.path(name).unlink(missing_ok=True)

    def calls(self) -> list[int]:
        """The first key of every batch the fetch function was asked for, in order."""
        path = self.path("calls.log")
        return [int(line) for line in path.read_text().split()] if path.exists() else []

    def batches(self) -> dict[int, Path]:
        """The committed fetch batches on disk, by their first key."""
        folder = self.path("results/tables/.partial/items")
        return {int(pl.read_parquet(p)["key"][0]): p for p in sorted(folder.glob("*.parquet"))}

    def fingerprints(self) -> dict[str, dict[str, str]]:
        """Each table's fingerprint in `_checkpoints`, in the table itself and its sentinel."""
        store = PipelineStore(self.path("results/pipeline.duckdb"), lock_timeout=30)
        with store.transaction(read_only=True) as tx:
            rows = {row["table_name"]: row["fingerprint"] for row in tx.list_checkpoints()}
            tables = {table: tx.fingerprint(table) for table in tx.list_tables()}
        sentinels = {
            table: fingerprint_parquet(self.path(f"results/tables/{table}.parquet"))[0]
            for table in TABLES
        }
        return {"checkpoints": rows, "tables": tables, "sentinels": sentinels}

    def terminal(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""


def group_members(sid: int) -> list[int]:
    """Live processes of session `sid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[3]) == sid:
                members.append(int(entry.name))
    return members


@pytest.fixture(scope="module", params=["include", "module"])
def clean(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str, dict[str, dict[str, str]]]:
    """The workflow in one form, run once uninterrupted: its root, form and fingerprints."""
    form = str(request.param)
    root = tmp_path_factory.mktemp(f"resume-{form}")
    assert not root.resolve().is_relative_to(REPO)  # outside the repository
    run = Workflow(root, form, "clean")
    done = run.run()
    assert done.returncode == 0, done.stdout + done.stderr
    assert run.calls() == list(range(0, KEYS, BATCH))  # each batch fetched once
    assert not run.path("results/tables/.partial").exists()  # gone with the merge
    printed = run.fingerprints()
    assert set(printed["checkpoints"]) == set(TABLES)
    assert printed["checkpoints"] == printed["tables"] == printed["sentinels"]
    return root, form, printed


def check_converged(run: Workflow, clean: dict[str, dict[str, str]]) -> None:
    """The resumed run holds the clean run's tables and sidecars, and no fetch batches."""
    assert run.fingerprints() == clean
    assert run.path("results/provenance.json").exists()
    for table in TABLES:
        assert run.path(f"results/tables/{table}.provenance.json").exists()
    assert not run.path("results/tables/.partial").exists()
    assert not list(run.path("results/tables").glob(".*.tmp"))


def test_killed_mid_fetch_resumes_without_fetching_a_committed_batch(clean):
    root, form, printed = clean
    run = Workflow(root, form, "mid_fetch")
    run.marker("slow_fetch", True)
    run.kill_when(
        lambda: len(list(run.path("results/tables/.partial/items").glob("*.parquet"))) >= 3
    )
    committed = set(run.batches())
    assert 3 <= len(committed) < KEYS // BATCH
    before = len(run.calls())
    run.marker("slow_fetch", False)

    done = run.run()
    assert done.returncode == 0, done.stdout + done.stderr
    again = run.calls()[before:]
    assert committed.isdisjoint(again)  # no committed batch was fetched again
    assert sorted(committed | set(again)) == list(range(0, KEYS, BATCH))
    check_converged(run, printed)


def test_killed_after_the_step_log_reruns_the_job_and_fetches_nothing(clean):
    root, form, printed = clean
    run = Workflow(root, form, "after_steplog")
    run.marker("hold_after_steplog", True)  # the job outlives its step log: Snakemake has not
    steplog = run.path("results/steplogs/items.json")  # recorded it finished at the kill
    run.kill_when(lambda: steplog.exists() and run.path("results/tables/items.parquet").exists())
    assert set(run.batches()) == set(range(0, KEYS, BATCH))  # kept beyond the step log
    killed_steplog = steplog.read_text()
    before = len(run.calls())
    assert before == KEYS // BATCH
    run.marker("hold_after_steplog", False)

    done = run.run()  # Snakemake's default would stop here with IncompleteFilesException
    assert done.returncode == 0, done.stdout + done.stderr
    assert "IncompleteFilesException" not in done.stdout + done.stderr
    assert "Forced execution" in done.stdout + done.stderr  # rerun as incomplete
    assert steplog.read_text() != killed_steplog  # the job ran again ...
    assert run.calls()[before:] == []  # ... and asked for no batch
    check_converged(run, printed)


def test_a_target_without_the_provenance_rule_also_reruns_an_incomplete_job(clean):
    root, form, printed = clean
    run = Workflow(root, form, "partial_target")
    run.marker("hold_after_steplog", True)
    steplog = run.path("results/steplogs/items.json")
    run.kill_when(steplog.exists)
    run.marker("hold_after_steplog", False)
    killed_steplog = steplog.read_text()
    before = len(run.calls())

    done = run.run("results/tables/totals.parquet")  # no provenance job in this plan
    assert done.returncode == 0, done.stdout + done.stderr
    assert steplog.read_text() != killed_steplog
    assert run.calls()[before:] == []
    assert run.fingerprints()["sentinels"] == printed["sentinels"]
    assert len(run.batches()) == KEYS // BATCH  # kept: no merge has read the step log yet


@pytest.mark.parametrize(
    "written", ["results/tables/items.provenance.json", "results/provenance.json"]
)
def test_killed_during_the_provenance_merge_resumes(clean, written):
    root, form, printed = clean
    run = Workflow(root, form, f"in_merge_{Path(written).stem.replace('.', '_')}")
    sidecar = run.path(written)  # the first sidecar, or the run record (the last file)
    merge_log = run.path("logs/provenance/provenance.log")
    held, taken = ExitStack(), []

    def in_merge() -> bool:
        # Once the last job has written its step log (and saved its table), the test takes
        # the store's lock: the merge writes its sidecars and run record, then waits for the
        # lock to write its _provenance rows, and is killed there.
        if not taken and run.path("results/steplogs/totals.json").exists():
            held.enter_context(StoreLock(run.path("results/pipeline.duckdb"), timeout=60).hold())
            taken.append(True)
        return sidecar.exists()

    with held:
        run.kill_when(in_merge)
    assert "provenance: merged" not in merge_log.read_text()  # killed inside the merge
    before = len(run.calls())

    done = run.run()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "provenance: merged" in merge_log.read_text()
    assert run.calls()[before:] == []
    check_converged(run, printed)


def test_a_failing_job_says_its_traceback_once_on_the_terminal_and_once_in_its_log(clean):
    root, form, _ = clean
    run = Workflow(root, form, "failing")
    run.marker("fail_unexpected", True)
    done = run.run()
    assert done.returncode != 0
    terminal = done.stdout + done.stderr
    log = run.path("logs/totals/totals.log").read_text()
    for text in (terminal, log):
        assert text.count("Traceback (most recent call last)") == 1, text
        assert text.count("ValueError: totals found a value it cannot add") == 1, text

    run.marker("fail_unexpected", False)
    run.marker("fail_expected", True)  # an error of the library: one line, no traceback
    done = run.run()
    assert done.returncode != 0
    terminal = done.stdout + done.stderr
    log = run.path("logs/totals/totals.log").read_text()
    line = "rule totals has no input named 'no_such_input'"
    for text in (terminal, log):
        assert text.count(line) == 1, text
        assert "Traceback" not in text, text
