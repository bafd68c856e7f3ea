"""Kill the demo half-way through its fetches, rerun it, and compare with an uninterrupted run;
and what plain Snakemake allows the same rerun, replayed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import ROOT, TEMPLATES, Measure, Sizes, Workflow, bench_env, fresh
from bench.results import Comparison, Row, Timing

Event = tuple[str, str, str]  # (fetched or committed, table, batch) from USHER_FETCH_AUDIT


def copy_demo(folder: Path, sizes: Sizes) -> Workflow:
    """A copy of the demo workflow (Snakefile, rules, scripts, config) in a fresh folder,
    shrunk by editing the copied config for a smoke run."""
    fresh(folder)
    shutil.copy2(ROOT / "Snakefile", folder / "Snakefile")
    for sub in ("rules", "scripts", "config", "envs", "report", "resources"):
        if (ROOT / sub).is_dir():
            shutil.copytree(ROOT / sub, folder / sub)
    if sizes.demo_gene_limit is not None:
        path = folder / "config" / "config.yaml"
        text = path.read_text()
        text = text.replace("gene_limit: null", f"gene_limit: {sizes.demo_gene_limit}")
        text = text.replace("batch_size: 250", "batch_size: 25")
        path.write_text(text)
    return Workflow(folder, folder / "Snakefile")


def read_audit(path: Path) -> list[Event]:
    if not path.exists():
        return []
    return [tuple(line.split()) for line in path.read_text().splitlines() if line.strip()]  # type: ignore[misc]


def committed_per_table(events: list[Event]) -> dict[str, int]:
    """How many batches of each table the audit events record as committed."""
    counts: dict[str, int] = {}
    for event, table, _ in events:
        counts[table] = counts.get(table, 0) + (event == "committed")
    return counts


@dataclass
class Refetches:
    """What the reruns fetched again, and when each kill came."""

    committed: int = 0  # batches committed before the kill and fetched again: must be none
    in_flight: int = 0  # batches fetched but not committed at the kill, fetched again
    total: int = 0
    kill_shares: list[float] = field(default_factory=list)

    def add(self, before: list[Event], after: list[Event]) -> None:
        committed = {(t, b) for e, t, b in before if e == "committed"}
        fetched = {(t, b) for e, t, b in before if e == "fetched"}
        again = [(t, b) for e, t, b in after if e == "fetched"]
        self.committed += sum(1 for k in again if k in committed)
        self.in_flight += sum(1 for k in again if k in fetched and k not in committed)
        self.total += len(fetched) + len(again)

    def note(self) -> str:
        shares = self.kill_shares
        return (
            f"committed batches fetched again: {self.committed}; batches in flight at the "
            f"kill fetched again: {self.in_flight}; fetches in all: {self.total}; "
            f"killed at {statistics.median(shares):.0%} of the uninterrupted run's time "
            f"(median; {min(shares):.0%} to {max(shares):.0%})"
        )


def run(measure: Measure) -> list[Row]:
    row = Row(
        "rerun of the demo after a kill at about half",
        "the uninterrupted demo run",
        "<= 0.6, no batch fetched twice",
        0.6,
    )
    replayed = Row(
        "rerun of the demo replayed in plain Snakemake, resuming exactly the batches left",
        "the same replay, uninterrupted",
        "report",
        None,
    )
    refetches = Refetches()

    def repetition(rep: int) -> dict[str, Timing]:
        full = copy_demo(measure.work / "full", measure.sizes)
        full_audit = full.folder / "fetch_audit.txt"
        uninterrupted = measure.snakemake(
            full, "--rerun-incomplete", env=bench_env(USHER_FETCH_AUDIT=str(full_audit))
        )
        full_committed = committed_per_table(read_audit(full_audit))
        killed = copy_demo(measure.work / "killed", measure.sizes)
        audit = killed.folder / "fetch_audit.txt"
        env = bench_env(USHER_FETCH_AUDIT=str(audit))
        until_kill = kill_at_half(killed, env, audit, sum(full_committed.values()))
        refetches.kill_shares.append(until_kill / uninterrupted.seconds)
        before = read_audit(audit)
        done_at_kill = {p.stem for p in (killed.folder / "results" / "steplogs").glob("*.json")}
        # the same command resumes: rules/library.smk clears the killed run's stale locks
        rerun = measure.snakemake(killed, "--rerun-incomplete", env=env)
        refetches.add(before, read_audit(audit)[len(before) :])
        row.ok_extra = refetches.committed == 0
        row.extra = refetches.note()
        plain = replay(measure, full.folder, full_committed, before, done_at_kill)
        return {"rerun": rerun, "uninterrupted": uninterrupted, **plain}

    names = ("rerun", "uninterrupted")
    comparisons = [
        Comparison(row, "rerun", "uninterrupted"),
        Comparison(replayed, "replay rerun", "replay uninterrupted", names),
    ]
    return measure.repeat("demo", [row, replayed], comparisons, repetition)


def kill_at_half(workflow: Workflow, env: dict[str, str], audit: Path, batches: int) -> float:
    """Run the demo and SIGKILL its process group once half of its `batches` are committed (a
    wall-clock point would drift with the machine's load); returns the seconds until then."""
    with open(workflow.folder / "killed.out", "w") as out:
        launched = time.perf_counter()
        process = subprocess.Popen(
            workflow.command("--rerun-incomplete"),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        while sum(committed_per_table(read_audit(audit)).values()) < batches / 2:
            if process.poll() is not None:
                tail = (workflow.folder / "killed.out").read_text(errors="replace")[-3000:]
                raise RuntimeError(
                    f"the demo ended (exit {process.returncode}) before the kill, so there is "
                    f"nothing to measure:\n{tail}"
                )
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        seconds = time.perf_counter() - launched
        process.wait()
    return seconds


@dataclass
class ReplayJob:
    """One job of the demo as plain Snakemake replays it: what it needs and how long it runs."""

    needs: list[str]
    seconds: float
    priority: float = 0.0


def demo_jobs(folder: Path) -> dict[str, ReplayJob]:
    """The demo's jobs, from the step logs of a finished run: each job's tables, the jobs whose
    tables it read, and the seconds its step log measured."""
    logs = {
        path.stem: json.loads(path.read_text())
        for path in (folder / "results" / "steplogs").glob("*.json")
    }
    made = {out["path"]: name for name, log in logs.items() for out in log["outputs"]}
    return {
        name: ReplayJob(
            sorted({made[i["path"]] for i in log["inputs"] if i["path"] in made}),
            float(log["duration_seconds"]),
        )
        for name, log in logs.items()
    }


def write_replay(
    measure: Measure, folder: Path, jobs: dict[str, ReplayJob], done: set[str]
) -> Workflow:
    """A plain Snakefile with the demo's DAG, a rule per job that only sleeps its seconds
    (templates/replay.py); the jobs in `done` are run first (untimed), as the killed run had."""
    fresh(folder)
    rules = ["rule all:", "    input:", *(f'        "done/{n}",' for n in jobs), ""]
    for name, job in jobs.items():
        rules += [f"rule {name}:", "    input:", *(f'        "done/{n}",' for n in job.needs)]
        rules += ["    output:", f'        "done/{name}",', f"    priority: {job.priority}"]
        rules += ["    params:", f"        seconds={job.seconds},", "    script:"]
        rules += ['        "replay.py"', ""]
    (folder / "Snakefile").write_text("\n".join(rules))
    shutil.copy2(TEMPLATES / "replay.py", folder / "replay.py")
    workflow = Workflow(folder, folder / "Snakefile")
    if done:
        measure.snakemake(workflow, *(f"done/{name}" for name in sorted(done)))
    return workflow


def replay(
    measure: Measure,
    full: Path,
    total: dict[str, int],
    before_rerun: list[Event],
    done: set[str],
) -> dict[str, Timing]:
    """What plain Snakemake allows the demo's rerun: the demo's DAG and job times, run whole,
    then resumed as an ideal fetch would: the jobs done at the kill skipped, and each
    unfinished fetch sleeping only its share of the batches not committed at the kill, the
    one with the most left first (`total`: each fetch's batches in the uninterrupted run).
    The library's provenance job has no counterpart here."""
    jobs = demo_jobs(full)
    committed = committed_per_table(before_rerun)
    for name in total:
        jobs[name].priority = 1.0
    whole = write_replay(measure, measure.work / "replay_full", jobs, set())
    timings = {"replay uninterrupted": measure.snakemake(whole)}
    for name, count in total.items():
        left = 1 - committed.get(name, 0) / count
        jobs[name].seconds *= left
        jobs[name].priority = left
    resumed = write_replay(measure, measure.work / "replay_rerun", jobs, done)
    timings["replay rerun"] = measure.snakemake(resumed)
    log = (resumed.folder / "snakemake.out").read_text()
    ran = {
        line.split()[1].rstrip(":")
        for line in log.splitlines()
        if line.startswith(("rule ", "localrule "))
    }
    if ran & done:  # a replay that redid finished jobs would measure nothing of a resume
        raise RuntimeError(f"the replayed rerun ran jobs done at the kill: {sorted(ran & done)}")
    return timings
