"""In-process measurements, each run in a fresh interpreter by `Measure.worker`:

    python benchmarks/bench/workers.py NAME JSON-KWARGS

prints one JSON line (seconds, CPU seconds, peak RSS). Only the standard library and the
packages measured are imported, so that the peak RSS is that of the work measured.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MB = 1024 * 1024


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def w_make_frame(path: str, rows: int) -> dict[str, Any]:
    import polars as pl

    i = pl.int_range(0, rows, dtype=pl.Int64, eager=True)
    frame = pl.DataFrame({"id": i}).with_columns(
        (pl.col("id").hash(7) % 1_000_000).cast(pl.Int64).alias("count"),
        ((pl.col("id").hash(11) % 1_000_000_007).cast(pl.Float64) / 1e9).alias("score"),
        (pl.col("id").cast(pl.Float64) * 0.5).alias("weight"),
        pl.format("gene_{}", pl.col("id")).alias("gene"),
        pl.format("chr{}", (pl.col("id") % 23 + 1)).alias("chrom"),
    )
    frame.write_parquet(path)
    return {"frame_mb": frame.estimated_size() / MB}


def w_make_shaped(path: str, columns: int, rows: int) -> dict[str, Any]:
    """A frame of a gene column and `columns - 1` Float64 columns (an expression matrix)."""
    import polars as pl

    i = pl.int_range(0, rows, dtype=pl.Int64, eager=True)
    frame = pl.DataFrame({"gene": i}).select(
        pl.format("gene_{}", pl.col("gene")).alias("gene"),
        *(
            ((pl.col("gene").hash(c) % 1_000_003).cast(pl.Float64) / 1e3).alias(f"s{c}")
            for c in range(1, columns)
        ),
    )
    frame.write_parquet(path)
    return {"frame_mb": frame.estimated_size() / MB}


def w_save(variant: str, data: str, out: str) -> dict[str, Any]:
    import duckdb  # noqa: F401 - imported before the clock starts, as in a warm job
    import polars as pl

    frame = pl.read_parquet(data)
    folder = Path(out)
    if variant == "store":
        from usher_pipeline.workflow import Job
        from usher_pipeline.workflow.testing import mock_snakemake

        smk = mock_snakemake(
            "save_big",
            output={
                "table": folder / "results" / "tables" / "big.parquet",
                "steplog": folder / "results" / "steplogs" / "big.json",
            },
            log=[folder / "logs" / "big.log"],
            config={"duckdb_path": str(folder / "results" / "pipeline.duckdb")},
        )
        started, cpu = time.perf_counter(), time.process_time()
        with Job(smk) as job:
            job.save(frame, description="benchmark frame")
        seconds = time.perf_counter() - started
    elif variant == "bare_duckdb":
        import duckdb

        started, cpu = time.perf_counter(), time.process_time()
        conn = duckdb.connect(str(folder / "bare.duckdb"))
        conn.execute("CREATE TABLE t AS SELECT * FROM frame")
        conn.close()
        seconds = time.perf_counter() - started
    else:
        started, cpu = time.perf_counter(), time.process_time()
        frame.write_parquet(folder / "frame.parquet")
        seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    return {"seconds": seconds, "cpu": cpu, "peak_rss_mb": peak_rss_mb()}


def w_load(variant: str, db: str, bare_db: str, sentinel: str) -> dict[str, Any]:
    import duckdb
    import polars as pl

    if variant == "load_dataframe":
        from usher_pipeline.persistence import PipelineStore

        started, cpu = time.perf_counter(), time.process_time()
        frame = PipelineStore(db).load_dataframe("big")
    elif variant == "bare_select":
        started, cpu = time.perf_counter(), time.process_time()
        conn = duckdb.connect(db, read_only=True)
        frame = conn.sql("SELECT * FROM big").pl()
        conn.close()
    elif variant == "job_read":
        from usher_pipeline.workflow import Job
        from usher_pipeline.workflow.testing import mock_snakemake

        folder = Path(sentinel).parent.parent
        smk = mock_snakemake(
            "read_big",
            input={"table": sentinel},
            output={"steplog": folder / "steplogs" / "read_big.json"},
            config={"duckdb_path": db},
        )
        job = Job(smk)
        started, cpu = time.perf_counter(), time.process_time()
        frame = job.read("table")
    else:
        started, cpu = time.perf_counter(), time.process_time()
        frame = pl.read_parquet(sentinel)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    return {"seconds": seconds, "cpu": cpu, "rows": frame.height, "peak_rss_mb": peak_rss_mb()}


def synthetic_steplog(i: int, n: int) -> dict[str, Any]:
    """Job 0 makes a universe; sources read it; each derived job reads one source."""
    half = max(1, (n - 1) // 2)
    name = "universe" if i == 0 else (f"src_{i}" if i <= half else f"derived_{i - half}")
    inputs = []
    if i > 0:
        parent = "universe" if i <= half else f"src_{i - half}"
        inputs.append(
            {
                "name": "table",
                "path": f"results/tables/{parent}.parquet",
                "sha256": "0" * 64,
                "size": 1234,
                "rows": 1000,
            }
        )
    stamp = f"2026-11-29T20:{(i // 60) % 60:02d}:{i % 60:02d}.000000Z"
    return {
        "format": "usher_pipeline.steplog/1",
        "rule": name.split("_")[0],
        "wildcards": {"i": str(i)} if i else {},
        "started_at": stamp,
        "ended_at": stamp,
        "duration_seconds": 0.5,
        "inputs": inputs,
        "outputs": [
            {
                "name": "table",
                "path": f"results/tables/{name}.parquet",
                "sha256": f"{i:064x}",
                "size": 4321,
                "rows": 1000,
                "table": name,
                "fingerprint": f"fp1:{i:032x}",
                "description": "synthetic",
                "committed_at": stamp,
            }
        ],
        "params": {"rows": 1000},
        "config_slice_hash": "1" * 64,
        "config_hash": "2" * 64,
        "data_sources": {"hpo": "2025-01-16"},
        "software": {"python": "3.11", "usher_pipeline": "0.1.0"},
        "host": "bench",
        "pid": 1,
        "scheduler": None,
        "database": {"path": "results/pipeline.duckdb", "mode": "job"},
        "log": [f"logs/{name}.log"],
        "steps": [{"step_name": "compute", "timestamp": stamp, "details": {"kept": i}}],
    }


def w_make_steplogs(folder: str, n: int) -> dict[str, Any]:
    base = Path(folder)
    shutil.rmtree(base, ignore_errors=True)
    logs = base / "results" / "steplogs"
    logs.mkdir(parents=True)
    for i in range(n):
        (logs / f"job_{i}.json").write_text(json.dumps(synthetic_steplog(i, n), indent=2))
    return {"n": n}


def w_merge(folder: str, n: int) -> dict[str, Any]:
    from usher_pipeline.persistence import PipelineStore
    from usher_pipeline.workflow.merge import merge_provenance

    base = Path(folder)
    previous = base / "results" / "tables"
    if previous.exists():
        # moved aside, not deleted: creating 10,000 files right after deleting as many is
        # twice as slow on ext4, a cost of the benchmark's clean-up, not of the merge (a rerun
        # replaces its sidecars in place); the merge case deletes the trash after the last run
        previous.rename(base.parent / "trash" / f"{base.name}-{time.time_ns()}")
    (base / "results" / "pipeline.duckdb").unlink(missing_ok=True)
    steplogs = [base / "results" / "steplogs" / f"job_{i}.json" for i in range(n)]
    os.chdir(base)
    # the previous repetition's files are written back to disk before the clock starts, not
    # while the merge runs (10,000 sidecars took up to twice as long during that write-back)
    os.sync()
    started, cpu = time.perf_counter(), time.process_time()
    summary = merge_provenance(
        [str(p.relative_to(base)) for p in steplogs],
        pipeline_version="0.1.0",
        expected_versions={"ensembl_release": 113},
        run_record="results/provenance.json",
        store=PipelineStore(base / "results" / "pipeline.duckdb"),
        progress=lambda message: None,
    )
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    if len(summary["sidecars"]) != n:
        raise RuntimeError(f"merge wrote {len(summary['sidecars'])} sidecars for {n} step logs")
    return {"seconds": seconds, "cpu": cpu, "peak_rss_mb": peak_rss_mb()}


WORKERS: dict[str, Callable[..., dict[str, Any]]] = {
    "make_frame": w_make_frame,
    "make_shaped": w_make_shaped,
    "save": w_save,
    "load": w_load,
    "make_steplogs": w_make_steplogs,
    "merge": w_merge,
}


def main(argv: list[str]) -> int:
    name, kwargs = argv
    print(json.dumps(WORKERS[name](**json.loads(kwargs))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
