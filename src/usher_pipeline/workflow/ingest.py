"""Head-node ingest: load the sentinels written by cluster jobs into the database.

In `head` database mode jobs never open the database (DuckDB's locking is unreliable on
network filesystems, and a job then needs neither DuckDB's import nor its lock). One local
job on the submit host loads every table: it opens the database once and commits each table
with the same `_checkpoints` row (description, rule, fingerprint, rows) a job would have
written, grouping the loads of up to a second into one commit (one commit per small table
would cost more than its load). A table whose checkpoint already records the sentinel's
fingerprint (and the same rule, description and config slice hash) is left as it is, so a
rerun after one job changed loads that table alone, and a rerun after a kill resumes where it
stopped.

Each sentinel must be the very file its step log describes (same SHA-256): a file replaced
since, or a stale copy served by a network filesystem, is refused rather than recorded.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from usher_pipeline._io import read_json, write_json_atomic
from usher_pipeline.config.hashing import job_slice_hash
from usher_pipeline.errors import UsherError
from usher_pipeline.hashing import sha256_file
from usher_pipeline.persistence.duckdb_store import PipelineStore
from usher_pipeline.persistence.provenance import utc_now
from usher_pipeline.steplog import load_steplog
from usher_pipeline.workflow.faults import fault_point

log = logging.getLogger("usher_pipeline.ingest")

FORMAT = "usher_pipeline.ingest/1"
COMMIT_SECONDS = 1.0  # loads committed together for at most this long

Describer = tuple[Path, dict[str, Any], dict[str, Any]]  # step log path, step log, its entry


def _describers(steplogs: Sequence[str | Path]) -> dict[str, Describer]:
    """sentinel path -> (step log path, step log, its entry) for every table the logs list."""
    found: dict[str, Describer] = {}
    for path in steplogs:
        record = load_steplog(path)
        for entry in record["outputs"]:
            if entry.get("table"):
                found[os.path.normpath(entry["path"])] = (Path(path), record, entry)
    return found


def _check_sentinel(
    sentinel: Path, describers: dict[str, Describer]
) -> tuple[Path, dict[str, Any], dict[str, Any], str]:
    """(step log path, step log, entry, SHA-256) of a sentinel its step log describes."""
    if os.path.normpath(sentinel) not in describers:
        raise UsherError(
            f"no step log lists {sentinel} as a table it saved: rerun the rule that writes it, "
            "and register the table with its step log (USHER.register)"
        )
    steplog, step, entry = describers[os.path.normpath(sentinel)]
    if not sentinel.is_file():
        raise UsherError(
            f"sentinel {sentinel} does not exist on this host: rerun rule {step['rule']}, or "
            "raise latency-wait if the shared filesystem is slow to show it"
        )
    digest = sha256_file(sentinel)
    if entry.get("sha256") and digest != entry["sha256"]:
        raise UsherError(
            f"sentinel {sentinel} is not the file its step log {steplog} describes (SHA-256 "
            f"{digest[:12]}, expected {entry['sha256'][:12]}): delete both and rerun rule "
            f"{step['rule']}"
        )
    return steplog, step, entry, digest


def ingest_sentinels(
    store: PipelineStore,
    sentinels: Sequence[str | Path],
    steplogs: Sequence[str | Path],
    *,
    record: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    commit_seconds: float = COMMIT_SECONDS,
) -> dict[str, Any]:
    """Load each sentinel into the table named by the step log (among `steplogs`) listing it.

    Tables already committed with the sentinel's content are skipped. Loads are committed
    together for up to `commit_seconds` (one commit per small table would cost more than
    the load), so a kill loses at most that much work. Writes `record` (every table's
    sentinel, SHA-256, fingerprint and rows) when done and returns it.
    """
    report = progress or log.info
    started = time.monotonic()
    describers = _describers(steplogs)
    tables: dict[str, dict[str, Any]] = {}
    loaded: list[str] = []
    pending = [Path(p) for p in sentinels]
    total = len(pending)
    report(f"ingest: {total} sentinels into {store.db_path}")
    with store.session():
        checkpoints: dict[str, Mapping[str, Any]] = {
            row["table_name"]: row for row in store.list_checkpoints()
        }
        while pending:
            committed: list[str] = []
            rows: list[Mapping[str, Any]] = []
            with store.transaction() as tx:
                group_ends = time.monotonic() + commit_seconds
                while pending and (not committed or time.monotonic() < group_ends):
                    sentinel = pending.pop(0)
                    steplog, step, entry, digest = _check_sentinel(sentinel, describers)
                    table = entry["table"]
                    current = checkpoints.get(table)
                    sliced = job_slice_hash(step)  # the config slice of the job that wrote it
                    unchanged = False
                    fingerprint: str | None = None
                    count: int | None = None
                    if current is not None:  # compare before loading
                        fingerprint, count = tx.fingerprint_parquet(sentinel)
                        wanted = {
                            "fingerprint": fingerprint,
                            "row_count": count,
                            "description": entry.get("description", ""),
                            "rule": step["rule"],
                            "sentinel": str(sentinel),
                            "config_hash": sliced,
                        }
                        unchanged = all(current[k] == v for k, v in wanted.items())
                    if not unchanged:  # a new table is fingerprinted once loaded
                        row = tx.ingest_parquet(
                            sentinel,
                            table,
                            description=entry.get("description", ""),
                            rule=step["rule"],
                            sentinel=sentinel,
                            fingerprint=fingerprint,
                            row_count=count,
                            record_checkpoint=False,
                            config_hash=sliced,
                        )
                        fingerprint, count = row["fingerprint"], row["row_count"]
                        rows.append(row)
                        committed.append(table)
                    tables[table] = {
                        "sentinel": str(sentinel),
                        "steplog": str(steplog),
                        "sha256": digest,
                        "fingerprint": fingerprint,
                        "rows": count,
                        "loaded": not unchanged,
                    }
                tx.record_checkpoints(rows)  # one statement for the group's loads
            loaded += committed
            for table in committed:
                fault_point("after_ingest_commit", table)
            if committed:
                report(
                    f"ingest: {total - len(pending)}/{total} sentinels checked; committed "
                    f"{', '.join(committed)}"
                )
    seconds = time.monotonic() - started
    result = {
        "format": FORMAT,
        "database": str(store.db_path),
        "ingested_at": utc_now(),
        "tables": tables,
    }
    if record is not None:
        write_json_atomic(record, result)
    report(
        f"ingest: {len(loaded)} tables loaded, {len(tables) - len(loaded)} unchanged, in "
        f"{seconds:.2f} s"
    )
    return result


def ingested_fingerprints(paths: Sequence[str | Path]) -> dict[str, tuple[str, str]]:
    """sentinel path -> (SHA-256, fingerprint) from ingest records."""
    found: dict[str, tuple[str, str]] = {}
    for path in paths:
        data = read_json(Path(path))
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise UsherError(
                f"{path} is not a {FORMAT} record: delete it and rerun the workflow to ingest again"
            )
        for entry in data["tables"].values():
            found[os.path.normpath(entry["sentinel"])] = (
                entry["sha256"],
                entry["fingerprint"],
            )
    return found
