"""Job: the one object a rule's `script:` uses to read inputs, record steps and save results.

    with Job(snakemake) as job:
        genes = job.read("universe")            # input sentinel, no database lock
        job.record_step("filter", {"kept": n})
        job.save(result, description="...")     # table + _checkpoints, sentinel, step log

A save commits the table and its checkpoint row in one transaction under the store's lock,
then renames the sentinel Parquet into place; the step log is written last. A job killed at
any instant leaves the old state or the new one, and Snakemake reruns it because an output
is missing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usher_pipeline import steplog
from usher_pipeline._io import atomic_path, remove_stale_temps, temp_path_for, write_json_atomic
from usher_pipeline.config.hashing import slice_hash
from usher_pipeline.errors import UsherError
from usher_pipeline.hashing import canonical_json, sha256_json
from usher_pipeline.persistence.duckdb_store import to_polars, validate_table_name, write_parquet
from usher_pipeline.persistence.provenance import utc_now
from usher_pipeline.settings import StoreSettings
from usher_pipeline.workflow.faults import fault_point
from usher_pipeline.workflow.fetch import (
    DEFAULT_ATTEMPTS,
    DEFAULT_BACKOFF_S,
    BatchLedger,
    FileLedger,
    RetryPolicy,
    fetch_in_batches,
    progress_path,
    write_progress,
)
from usher_pipeline.workflow.logs import FILE_ONLY, job_logger, user_errors
from usher_pipeline.workflow.smk import jsonable, named, named_files

if TYPE_CHECKING:
    import polars as pl

__all__ = ["STEPLOG_OUTPUT", "Job", "StoreSettings", "job_logger", "user_errors"]

STEPLOG_OUTPUT = "steplog"


class Job:
    """The script-side helper of one Snakemake job."""

    def __init__(self, snakemake: Any) -> None:
        self.smk = snakemake
        self.rule: str = str(snakemake.rule)
        self.started_at = utc_now()
        self._t0 = time.perf_counter()
        logs = [str(p) for p in snakemake.log] if snakemake.log else []
        self.log = job_logger(self.rule, logs[0] if logs else None)  # first: errors land in it
        self.steps: list[dict[str, Any]] = []
        self.data_sources: dict[str, Any] = {}
        self.outputs: list[dict[str, Any]] = []
        self._rows_read: dict[str, int] = {}
        self._ledgers: dict[str, BatchLedger] = {}
        self._finished = False
        with user_errors(self.log, f"rule {self.rule}"):
            self.settings = StoreSettings.from_config(snakemake.config or {})
            self.wildcards = {k: str(v) for k, v in named(snakemake.wildcards).items()}
            self.params: dict[str, Any] = jsonable(named(snakemake.params))
            # the hash of the config slice this job uses: its step log's and its tables'
            self.config_slice_hash = slice_hash(self.params)
            if STEPLOG_OUTPUT not in named(snakemake.output):
                raise UsherError(
                    f"rule {self.rule} has no output named '{STEPLOG_OUTPUT}': declare "
                    f"{STEPLOG_OUTPUT}=... next to its sentinel (see docs/architecture.md)"
                )

    # -- context ---------------------------------------------------------------------------

    def __enter__(self) -> Job:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is not None and not isinstance(exc, UsherError):
            if not isinstance(exc, KeyboardInterrupt | SystemExit):
                # into the log file only: the exception goes on, and the interpreter prints
                # its traceback on the terminal once as the script ends (workflow/logs.py)
                self.log.error("rule %s failed", self.rule, exc_info=exc, extra=FILE_ONLY)
            return  # the exception goes on, traceback and all
        with user_errors(self.log, f"rule {self.rule}"):
            if exc is not None:
                raise exc
            self.finish()

    # -- inputs ----------------------------------------------------------------------------

    def _path(self, kind: str, name: str) -> Path:
        try:
            return Path(getattr(self.smk, kind)[name])
        except (KeyError, AttributeError, TypeError):
            raise UsherError(
                f"rule {self.rule} has no {kind} named '{name}': declare it in the rule's {kind}:"
            ) from None

    def input(self, name: str) -> Path:
        """The path of the named input."""
        return self._path("input", name)

    def output(self, name: str) -> Path:
        """The path of the named output."""
        return self._path("output", name)

    def read(self, name: str, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """Read the named input sentinel (Parquet) without touching the database."""
        import polars as pl

        frame = pl.read_parquet(self.input(name), columns=list(columns) if columns else None)
        self._rows_read[name] = frame.height
        return frame

    def read_many(self, name: str) -> dict[str, pl.DataFrame]:
        """Read every sentinel of a list input, keyed by table name (the file stem)."""
        import polars as pl

        value = named(self.smk.input).get(name)
        if value is None:
            raise UsherError(
                f"rule {self.rule} has no input named '{name}': declare it in the rule's input:"
            )
        paths = [value] if isinstance(value, str) else list(value)
        frames = {Path(p).stem: pl.read_parquet(p) for p in paths}
        self._rows_read[name] = sum(f.height for f in frames.values())
        return frames

    # -- recording -------------------------------------------------------------------------

    def record_step(self, step_name: str, details: Mapping[str, Any] | None = None) -> None:
        """Record a processing step with details; it lands in the step log and the sidecars."""
        step = {"step_name": step_name, "timestamp": utc_now(), "details": jsonable(details or {})}
        self.steps.append(step)
        self.log.info("%s %s", step_name, canonical_json(step["details"]))

    def record_data_source(self, name: str, version: Any) -> None:
        """Record the version of a data source read by this job (e.g. an ontology release)."""
        self.data_sources[name] = jsonable(version)

    # -- fetching --------------------------------------------------------------------------

    def fetch(
        self,
        keys: Sequence[Any],
        fetch: Callable[[list[Any]], Any],
        *,
        batch_size: int,
        output: str = "table",
        attempts: int | None = None,
        backoff: float | None = None,
        in_flight: int = 1,
    ) -> pl.DataFrame:
        """Fetch `keys` in batches, committing each; a rerun fetches only uncommitted batches.

        A batch whose function raises is tried up to `attempts` times (the config's
        `api.max_retries` when None), waiting `backoff` seconds (1 when None) doubled per
        attempt, with jitter, or what the error's `Retry-After` asks; up to `in_flight`
        batches are fetched at once, in threads. A batch that fails for good stops the job in
        one line. The step log's `batched_fetch` step sums the attempts, retries, errors and
        waits.

        The batches are tied to this job's params (their hash is the fetch signature). They
        and the fetch's progress note (see `remaining_share`) outlive the job, so that a
        rerun after a kill fetches nothing again; the provenance rule removes them when it
        merges the job's step log (`fetch.drop_batches`).
        """
        sentinel = self.output(output)
        table = validate_table_name(sentinel.stem)
        ledger = self._ledgers.setdefault(output, FileLedger(sentinel.parent / ".partial" / table))
        note = progress_path(sentinel)
        remove_stale_temps(note)
        api = (self.smk.config or {}).get("api") or {}
        policy = RetryPolicy(
            attempts=api.get("max_retries", DEFAULT_ATTEMPTS) if attempts is None else attempts,
            backoff=DEFAULT_BACKOFF_S if backoff is None else backoff,
        )
        frame, summary = fetch_in_batches(
            keys,
            fetch,
            ledger=ledger,
            batch_size=batch_size,
            signature=sha256_json([self.rule, self.wildcards, self.params]),
            label=table,
            progress=self.log.info,
            on_commit=lambda committed, total: write_progress(note, committed, total),
            retry=policy,
            in_flight=in_flight,
        )
        self.record_step("batched_fetch", summary)
        return frame

    # -- saving ----------------------------------------------------------------------------

    def save(self, df: object, output: str = "table", description: str = "") -> dict[str, Any]:
        """Commit `df` as the table named after the output's file stem, then place the sentinel.

        Returns the output's step log entry (path, SHA-256, rows, fingerprint, ...).
        """
        sentinel = self.output(output)
        table = validate_table_name(sentinel.stem)
        frame = to_polars(df)
        sentinel.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(sentinel)
        tmp = temp_path_for(sentinel)  # by hand, not atomic_path: the fault points sit between
        committed_at = None
        try:
            write_parquet(frame, tmp)
            fault_point("after_sentinel_temp_write", table)
            if self.settings.mode == "job":
                store = self.settings.store()
                with store.transaction() as tx:
                    # fingerprinted from the new table in the same connection: one DuckDB
                    # instance per save instead of two
                    checkpoint = tx.ingest_parquet(
                        tmp,
                        table,
                        description=description,
                        rule=self.rule,
                        sentinel=sentinel,
                        config_hash=self.config_slice_hash,
                    )
                    fingerprint, rows = checkpoint["fingerprint"], checkpoint["row_count"]
                    fault_point("inside_transaction", table)
                committed_at = utc_now()
                self.log.info("committed table %s (%d rows) to %s", table, rows, store.db_path)
            else:
                # the head-node ingest fingerprints the sentinel when it loads it: the job
                # needs neither DuckDB nor the database
                fingerprint, rows = None, frame.height
            fault_point("after_commit_before_rename", table)
            os.replace(tmp, sentinel)
            fault_point("after_rename_before_steplog", table)
        finally:
            if tmp.exists():  # unlink of a missing file fails on a read-only disk
                tmp.unlink()
        entry = steplog.describe_file(
            output,
            sentinel,
            rows=rows,
            table=table,
            fingerprint=fingerprint,
            description=description,
            committed_at=committed_at,
        )
        self.outputs.append(entry)
        return entry

    def write_tsv(self, df: object, output: str) -> dict[str, Any]:
        """Write a final report as TSV atomically and describe it in the step log."""
        frame = to_polars(df)
        target = self.output(output)
        with atomic_path(target) as tmp:
            frame.write_csv(tmp, separator="\t")
        entry = steplog.describe_file(output, target, rows=frame.height)
        self.outputs.append(entry)
        return entry

    # -- the step log ----------------------------------------------------------------------

    def steplog_record(self) -> dict[str, Any]:
        """The step log of this job as it stands now."""
        ended = utc_now()
        inputs = [
            steplog.describe_file(name, Path(path), rows=self._rows_read.get(name))
            for name, path in named_files(self.smk.input)
            if Path(path).exists()
        ]
        return {
            "format": steplog.FORMAT,
            "rule": self.rule,
            "wildcards": self.wildcards,
            "started_at": self.started_at,
            "ended_at": ended,
            "duration_seconds": round(time.perf_counter() - self._t0, 6),
            "inputs": inputs,
            "outputs": self.outputs,
            "params": self.params,
            "config_slice_hash": self.config_slice_hash,
            "data_sources": self.data_sources,
            "software": steplog.software_versions(),
            "host": steplog.host_name(),
            "pid": os.getpid(),
            "scheduler": steplog.scheduler_info(),
            "database": {"path": str(self.settings.db_path), "mode": self.settings.mode},
            "log": [str(p) for p in self.smk.log] if self.smk.log else [],
            "steps": self.steps,
        }

    def finish(self) -> Path:
        """Write the step log (the job's last act); returns its path."""
        if self._finished:
            return self.output(STEPLOG_OUTPUT)
        missing = [
            name
            for name, path in named_files(self.smk.output)
            if name != STEPLOG_OUTPUT and not Path(path).exists()
        ]
        if missing:
            raise UsherError(
                f"rule {self.rule} finished without writing its outputs {missing}: call "
                "job.save(...) or job.write_tsv(...) for each"
            )
        target = self.output(STEPLOG_OUTPUT)
        write_json_atomic(target, self.steplog_record())
        self._finished = True
        self.log.info("finished in %.2f s; step log %s", time.perf_counter() - self._t0, target)
        return target
