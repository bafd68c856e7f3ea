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

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usher_pipeline._io import atomic_path, remove_stale_temps, temp_path_for, write_json_atomic
from usher_pipeline.errors import UsherError
from usher_pipeline.hashing import canonical_json, sha256_json
from usher_pipeline.persistence.duckdb_store import (
    LOAD_MEMORY_MB,
    PipelineStore,
    to_polars,
    validate_table_name,
    write_parquet,
)
from usher_pipeline.persistence.provenance import utc_now
from usher_pipeline.workflow import steplog
from usher_pipeline.workflow.faults import fault_point
from usher_pipeline.workflow.fetch import (
    BatchLedger,
    FileLedger,
    fetch_in_batches,
    progress_path,
    write_progress,
)

if TYPE_CHECKING:
    import polars as pl

STEPLOG_OUTPUT = "steplog"
RUNTIME_KEY = "_usher"
DATABASE_MODES = ("job", "head")


@dataclass(frozen=True)
class StoreSettings:
    """Where and how jobs write the database, read from Snakemake's `config`.

    These settings change where results go, not what they are, so they travel in the config
    rather than in `params:` (a params change would rerun every job).
    """

    db_path: Path
    lock_timeout: float
    mode: str
    load_memory_mb: int
    config_hash: str | None
    pipeline_version: str | None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StoreSettings:
        store = config.get("store") or {}
        runtime = config.get(RUNTIME_KEY) or {}
        mode = str(store.get("database_mode", "job"))
        if mode not in DATABASE_MODES:
            raise UsherError(
                f"store.database_mode is '{mode}': use 'job' (jobs write the database) or "
                "'head' (a local rule ingests sentinels, for shared filesystems)"
            )
        return cls(
            db_path=Path(config.get("duckdb_path", "results/pipeline.duckdb")),
            lock_timeout=float(store.get("lock_timeout_seconds", 120.0)),
            mode=mode,
            load_memory_mb=int(store.get("load_memory_mb", LOAD_MEMORY_MB)),
            config_hash=runtime.get("config_hash"),
            pipeline_version=runtime.get("pipeline_version"),
        )

    def store(self) -> PipelineStore:
        return PipelineStore(
            self.db_path,
            self.lock_timeout,
            config_hash=self.config_hash,
            load_memory_mb=self.load_memory_mb,
        )


def _jsonable(value: Any) -> Any:
    """Params as plain JSON values (Snakemake namedlists and paths included)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _named(container: Any) -> dict[str, str]:
    """The named entries of a Snakemake input/output/log container."""
    keys = list(container.keys()) if hasattr(container, "keys") else []
    return {name: str(container[name]) for name in keys}


class Job:
    """The script-side helper of one Snakemake job."""

    def __init__(self, snakemake: Any) -> None:
        self.smk = snakemake
        self.rule: str = str(snakemake.rule)
        self.started_at = utc_now()
        self._t0 = time.perf_counter()
        self.settings = StoreSettings.from_config(snakemake.config or {})
        self.wildcards = {k: str(v) for k, v in _named_items(snakemake.wildcards)}
        self.params: dict[str, Any] = {k: _jsonable(v) for k, v in _named_items(snakemake.params)}
        self.steps: list[dict[str, Any]] = []
        self.data_sources: dict[str, Any] = {}
        self.outputs: list[dict[str, Any]] = []
        self._rows_read: dict[str, int] = {}
        self._ledgers: dict[str, BatchLedger] = {}
        self._finished = False
        self.log = self._open_log()
        if STEPLOG_OUTPUT not in _named(snakemake.output):
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
        if exc is None:
            try:
                self.finish()
            except UsherError as error:
                self.log.error("%s", error)
                raise SystemExit(f"rule {self.rule}: {error}") from None
            return
        if isinstance(exc, UsherError):
            self.log.error("%s", exc)
            raise SystemExit(f"rule {self.rule}: {exc}") from None
        if not isinstance(exc, KeyboardInterrupt | SystemExit):
            self.log.exception("rule %s failed", self.rule)

    def _open_log(self) -> logging.Logger:
        logs = list(self.smk.log) if self.smk.log else []
        return job_logger(self.rule, logs[0] if logs else None)

    # -- inputs ----------------------------------------------------------------------------

    def input(self, name: str) -> Path:
        """The path of the named input."""
        try:
            return Path(self.smk.input[name])
        except (KeyError, AttributeError, TypeError):
            raise UsherError(
                f"rule {self.rule} has no input named '{name}': declare it in the rule's input:"
            ) from None

    def output(self, name: str) -> Path:
        """The path of the named output."""
        try:
            return Path(self.smk.output[name])
        except (KeyError, AttributeError, TypeError):
            raise UsherError(
                f"rule {self.rule} has no output named '{name}': declare it in the rule's output:"
            ) from None

    def read(self, name: str, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """Read the named input sentinel (Parquet) without touching the database."""
        import polars as pl

        frame = pl.read_parquet(self.input(name), columns=list(columns) if columns else None)
        self._rows_read[name] = frame.height
        return frame

    def read_many(self, name: str) -> dict[str, pl.DataFrame]:
        """Read every sentinel of a list input, keyed by table name (the file stem)."""
        import polars as pl

        value = (
            self.smk.input[name]
            if name in _named(self.smk.input) or hasattr(self.smk.input, name)
            else None
        )
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
        step = {"step_name": step_name, "timestamp": utc_now(), "details": _jsonable(details or {})}
        self.steps.append(step)
        self.log.info("%s %s", step_name, canonical_json(step["details"]))

    def record_data_source(self, name: str, version: Any) -> None:
        """Record the version of a data source read by this job (e.g. an ontology release)."""
        self.data_sources[name] = _jsonable(version)

    # -- fetching --------------------------------------------------------------------------

    def fetch(
        self,
        keys: Sequence[Any],
        fetch: Callable[[list[Any]], Any],
        *,
        batch_size: int,
        output: str = "table",
    ) -> pl.DataFrame:
        """Fetch `keys` in batches, committing each; a rerun fetches only uncommitted batches.

        The batches are tied to this job's params (their hash is the fetch signature). They
        and the fetch's progress note (see `remaining_share`) are removed once the job has
        written its step log.
        """
        sentinel = self.output(output)
        table = validate_table_name(sentinel.stem)
        ledger = self._ledgers.setdefault(output, FileLedger(sentinel.parent / ".partial" / table))
        note = progress_path(sentinel)
        remove_stale_temps(note)
        frame, summary = fetch_in_batches(
            keys,
            fetch,
            ledger=ledger,
            batch_size=batch_size,
            signature=sha256_json([self.rule, self.wildcards, self.params]),
            label=table,
            progress=self.log.info,
            on_commit=lambda committed, total: write_progress(note, committed, total),
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
                remove_stale_temps(store.db_path)  # staging files of killed store writers
                with store.transaction() as tx:
                    # fingerprinted from the new table in the same connection: one DuckDB
                    # instance per save instead of two
                    checkpoint = tx.ingest_parquet(
                        tmp, table, description=description, rule=self.rule, sentinel=sentinel
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

    def write_json(self, data: Any, output: str) -> dict[str, Any]:
        """Write a JSON report atomically and describe it in the step log."""
        target = self.output(output)
        write_json_atomic(target, data)
        entry = steplog.describe_file(output, target, rows=None)
        self.outputs.append(entry)
        return entry

    # -- the step log ----------------------------------------------------------------------

    def steplog_record(self) -> dict[str, Any]:
        """The step log of this job as it stands now."""
        ended = utc_now()
        inputs = []
        for name, path in _named_paths(self.smk.input):
            target = Path(path)
            if target.exists():
                inputs.append(steplog.describe_file(name, target, rows=self._rows_read.get(name)))
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
            "config_slice_hash": sha256_json(self.params),
            "config_hash": self.settings.config_hash,
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
            for name, path in _named_paths(self.smk.output)
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
        self._drop_fetch_batches()
        self.log.info(
            "finished in %.2f s; step log %s",
            time.perf_counter() - self._t0,
            target,
        )
        return target

    def _drop_fetch_batches(self) -> None:
        """Remove the committed fetch batches once the step log is written.

        They are kept until then, not dropped with the save, so that a job killed between
        its commit and its step log (Snakemake then reruns it) still finds every batch and
        fetches nothing again.
        """
        for output, ledger in self._ledgers.items():
            ledger.cleanup()
            note = progress_path(self.output(output))
            note.unlink(missing_ok=True)
            try:  # the last fetch to finish leaves no empty .partial folder behind
                note.parent.rmdir()
            except OSError:
                pass  # another table's batches or progress are still there


def job_logger(name: str, log_path: str | Path | None) -> logging.Logger:
    """A logger writing to the job's log file (if any) and to stderr; library loggers join it."""
    logger = logging.getLogger(f"usher_pipeline.job.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(formatter)
    logger.addHandler(stream)
    for library in ("usher_pipeline.fetch", "usher_pipeline.merge", "usher_pipeline.ingest"):
        sub = logging.getLogger(library)
        sub.handlers = list(logger.handlers)
        sub.setLevel(logging.INFO)
        sub.propagate = False
    return logger


@contextmanager
def user_errors(logger: logging.Logger, label: str) -> Iterator[None]:
    """Turn an expected failure (UsherError) into a one-line exit message, no traceback."""
    try:
        yield
    except UsherError as exc:
        logger.error("%s", exc)
        raise SystemExit(f"{label}: {exc}") from None


def _named_items(container: Any) -> list[tuple[str, Any]]:
    if container is None:
        return []
    if hasattr(container, "items"):
        return [(str(k), v) for k, v in container.items()]
    return []


def _named_paths(container: Any) -> list[tuple[str, str]]:
    """(name, path) of every file in a Snakemake container; unnamed ones get their index."""
    names: dict[str, str] = {}
    for name in list(container.keys()) if hasattr(container, "keys") else []:
        value = container[name]
        if isinstance(value, list | tuple):
            for j, sub in enumerate(value):
                names.setdefault(str(sub), f"{name}[{j}]")
        else:
            names.setdefault(str(value), str(name))
    return [(names.get(str(p), str(i)), str(p)) for i, p in enumerate(container)]
