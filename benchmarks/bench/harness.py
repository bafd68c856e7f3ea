"""What every case uses: sizes, the benchmark environment, the template workflows and the
`Measure` a case runs with (Snakemake runs, worker processes, alternated repetitions)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.results import Comparison, Row, Timing

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
TEMPLATES = BENCH / "templates"
WORKERS = BENCH / "bench" / "workers.py"
PYTHON = sys.executable
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


@dataclass(frozen=True)
class Sizes:
    """How big each case is; --quick shrinks everything to a smoke run."""

    repeats: int = 3
    small_jobs: int = 100  # source jobs; as many derived jobs read them
    small_rows: int = 1_000
    lock_jobs: int = 100
    lock_compute: float = 0.5
    big_rows: int = 10_000_000
    merge_small: int = 1_000
    merge_large: int = 10_000
    dryrun_jobs: int = 1_000
    demo_gene_limit: int | None = None
    import_repeats: int = 15
    load_repeats: int = 3  # runs of each load variant per repetition (short, so noisy)
    scale_keys: int = 22_000  # the scale fetch asks scale_queries requests per key, once
    scale_queries: int = 6
    scale_rate: float = 200.0  # the loopback server's limit, requests per second
    scale_kills: int = 5


FULL = Sizes()
QUICK = Sizes(
    repeats=1,
    small_jobs=2,
    small_rows=100,
    lock_jobs=2,
    lock_compute=0.05,
    big_rows=100_000,
    merge_small=50,
    merge_large=500,
    dryrun_jobs=20,
    demo_gene_limit=400,
    import_repeats=2,
    load_repeats=1,
    scale_keys=2_200,
)


def fresh(path: Path) -> Path:
    """An empty directory at `path`."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def bench_env(**extra: str) -> dict[str, str]:
    """The environment of every benchmark subprocess: the venv first on PATH, no profile.

    Bytecode is allowed (PYTHONDONTWRITEBYTECODE dropped) and compiled beforehand
    (`compile_package`), as in any installation: otherwise every job of the library side
    would compile its modules from source, a cost the plain side's packages never pay.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SNAKEMAKE_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    env["PATH"] = f"{Path(PYTHON).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def compile_package() -> None:
    """Compile the package's bytecode once, as `pip install` does for a regular install."""
    import compileall

    compileall.compile_dir(str(ROOT / "src" / "usher_pipeline"), quiet=1)


@dataclass(frozen=True)
class Workflow:
    """A Snakefile and the work folder it runs in (its config.yaml, results and logs)."""

    folder: Path
    snakefile: Path

    def command(self, *args: str) -> list[str]:
        return [
            SNAKEMAKE,
            "--snakefile",
            str(self.snakefile),
            "--directory",
            str(self.folder),
            "--cores",
            "2",
            "--nocolor",
            *args,
        ]


def template_workflow(
    folder: Path, template: str, jobs: int, rows: int = 0, mode: str = "job", compute: float = 0
) -> Workflow:
    """A fresh work folder for benchmarks/templates/<template>.smk, with its config."""
    fresh(folder)
    config = {
        "results_dir": "results",
        "logs_dir": "logs",
        "duckdb_path": "results/pipeline.duckdb",
        "store": {"database_mode": mode, "lock_timeout_seconds": 3600.0},
        "bench_jobs": jobs,
        "bench_rows": rows,
        "bench_compute": compute,
    }
    (folder / "config.yaml").write_text(json.dumps(config, indent=2))
    return Workflow(folder, TEMPLATES / f"{template}.smk")


def check_tables(folder: Path, expected: int) -> None:
    """The library run committed every table (guards against measuring a broken run)."""
    import duckdb

    with duckdb.connect(str(folder / "results" / "pipeline.duckdb"), read_only=True) as conn:
        count = conn.sql("SELECT count(*) FROM _checkpoints").fetchall()[0][0]
    if count != expected:
        raise RuntimeError(f"{folder}: {count} checkpoints, expected {expected}")


def in_turn(variants: Sequence[Any], rep: int) -> list[Any]:
    """The variants in the order of repetition `rep`: as given, then reversed, and so on."""
    return list(variants) if rep % 2 == 0 else list(reversed(variants))


class Measure:
    """What a case measures with: its work folder and sizes, Snakemake runs and worker
    processes, and the repetitions whose rows it hands to the report as each one ends."""

    def __init__(self, work: Path, sizes: Sizes, record: Callable[[list[Row]], None]) -> None:
        self.work = work
        self.sizes = sizes
        self.record = record

    def snakemake(
        self, workflow: Workflow, *args: str, env: dict[str, str] | None = None
    ) -> Timing:
        """Run Snakemake and return its wall time and the CPU time of Snakemake and every job
        it ran (user + system, from wait4: unlike wall time it hardly moves when the machine
        is busy); fail loudly with its log."""
        log = workflow.folder / "snakemake.out"
        started = time.perf_counter()
        with open(log, "w") as out:
            process = subprocess.Popen(
                workflow.command(*args),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env or bench_env(),
            )
            _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"snakemake failed in {workflow.folder} (exit {code}):\n{tail}")
        return Timing(seconds, usage.ru_utime + usage.ru_stime)

    def worker(self, name: str, **kwargs: Any) -> dict[str, Any]:
        """Run one in-process measurement (bench/workers.py) in a fresh interpreter."""
        result = subprocess.run(
            [PYTHON, str(WORKERS), name, json.dumps(kwargs)],
            capture_output=True,
            text=True,
            env=bench_env(),
        )
        if result.returncode != 0:
            raise RuntimeError(f"worker {name} failed:\n{result.stderr[-3000:]}")
        report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return report

    def timed_worker(self, name: str, **kwargs: Any) -> Timing:
        report = self.worker(name, **kwargs)
        return Timing(report["seconds"], report["cpu"], report.get("peak_rss_mb"))

    def repeat(
        self,
        label: str,
        rows: list[Row],
        comparisons: Sequence[Comparison],
        repetition: Callable[[int], dict[str, Timing]],
    ) -> list[Row]:
        """Run `repetition` (every variant, alternated) `sizes.repeats` times; after each,
        add its ratios to the rows, print its times and hand the rows to the report."""
        for rep in range(self.sizes.repeats):
            timings = repetition(rep)
            for comparison in comparisons:
                comparison.add(timings)
            shown = ", ".join(f"{name} {t.seconds:.2f} s" for name, t in timings.items())
            print(f"  {label} rep {rep + 1}: {shown}", flush=True)
            self.record(rows)
        return rows
