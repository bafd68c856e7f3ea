"""Head-node ingest: load a sentinel written by a cluster job into the database.

In `head` database mode jobs never open the database (DuckDB's locking is unreliable on
network filesystems); a local rule on the submit host calls this for each table, recording
the same `_checkpoints` row (description, rule, fingerprint, rows) the job would have.
The sentinel must be the very file its step log describes (same SHA-256): a file replaced
since, or a stale copy served by a network filesystem, is refused rather than recorded
under the job's fingerprint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from usher_pipeline._io import write_json_atomic
from usher_pipeline.errors import UsherError
from usher_pipeline.hashing import sha256_file
from usher_pipeline.persistence.duckdb_store import PipelineStore
from usher_pipeline.persistence.provenance import utc_now
from usher_pipeline.workflow.steplog import load_steplog

log = logging.getLogger("usher_pipeline.ingest")


def ingest_sentinel(
    store: PipelineStore,
    *,
    sentinel: str | Path,
    steplog: str | Path,
    marker: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Load `sentinel` into the table its step log names; write `marker` when done."""
    report = progress or log.info
    record = load_steplog(steplog)
    target = Path(sentinel)
    entries = [e for e in record["outputs"] if Path(e["path"]) == target]
    if not entries or not entries[0].get("table"):
        raise UsherError(
            f"step log {steplog} does not list {sentinel} as a table it saved: rerun rule "
            f"{record.get('rule')}"
        )
    entry = entries[0]
    if not target.is_file():
        raise UsherError(
            f"sentinel {target} does not exist on this host: rerun rule {record['rule']}, or "
            "raise latency-wait if the shared filesystem is slow to show it"
        )
    digest = sha256_file(target)
    if entry.get("sha256") and digest != entry["sha256"]:
        raise UsherError(
            f"sentinel {target} is not the file its step log {steplog} describes (SHA-256 "
            f"{digest[:12]}, expected {entry['sha256'][:12]}): delete both and rerun rule "
            f"{record['rule']}"
        )
    row = store.ingest_parquet(
        target,
        entry["table"],
        description=entry.get("description", ""),
        rule=record["rule"],
        sentinel=target,
        fingerprint=entry.get("fingerprint"),
        row_count=entry.get("rows"),
    )
    report(f"ingested {target} into table {entry['table']} ({row['row_count']} rows)")
    result = {
        "table": entry["table"],
        "sentinel": str(target),
        "sha256": entry.get("sha256"),
        "fingerprint": row["fingerprint"],
        "rows": row["row_count"],
        "ingested_at": utc_now(),
        "database": str(store.db_path),
    }
    if marker is not None:
        write_json_atomic(marker, result)
    return result
