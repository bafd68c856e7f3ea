"""Resumable batched fetch: commit each finished batch, fetch only what is missing after a crash.

Keys are cut into batches; each batch gets an id from its keys and the fetch's signature (the
hash of the settings that shape the result), so a restart with the same keys and settings
recognises what was already committed, and a changed setting never reuses stale batches. A
ledger keeps the committed batches as Parquet files beside the outputs, in both database
modes: they are private to the job, so they stay out of the shared database and its lock.

The batches outlive the job: Snakemake may rerun a job that wrote its step log if it was
killed before recording it as finished, and that rerun must fetch nothing again. They go
when the provenance rule merges the job's step log (`drop_batches`), by then a finished job.

Batches combine by the rule of an append (`persistence.appends`): each has the columns of the
first, by name, with the same types or widenings that keep every value. A batch that does not
fit stops the fetch before it is committed, and before the next batch is fetched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from usher_pipeline._io import atomic_path, write_json_atomic
from usher_pipeline.errors import UsherError
from usher_pipeline.hashing import sha256_json
from usher_pipeline.persistence.appends import Unmatched, combine_schemas, conform
from usher_pipeline.persistence.duckdb_store import to_polars, write_parquet

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger("usher_pipeline.fetch")

AUDIT_VARIABLE = "USHER_FETCH_AUDIT"


class BatchMismatch(UsherError, ValueError):
    """A fetched batch whose columns or types cannot combine with the batches before it."""


def _audit(event: str, table: str, batch_id: str) -> None:
    """Append an event to the file named by USHER_FETCH_AUDIT (used by restart tests)."""
    target = os.environ.get(AUDIT_VARIABLE)
    if target:
        line = f"{event} {table} {batch_id}\n".encode()
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def progress_path(sentinel: str | Path) -> Path:
    """Where the fetch of the table behind `sentinel` notes how far it got (see
    `remaining_share`)."""
    target = Path(sentinel)
    return target.parent / ".partial" / f"{target.stem}.progress.json"


def write_progress(path: Path, committed: int, total: int) -> None:
    """Note that `committed` of `total` batches are committed (atomic, not synced: a hint).

    The provenance merge removes the shared `.partial` folder once it looks empty, which can
    fall between this write's creating the folder and its opening the temporary file when a
    fetch of a table it does not merge runs beside it: the write then creates the folder
    again and retries.
    """
    for attempt in range(5):
        try:
            write_json_atomic(path, {"batches_committed": committed, "batches_total": total})
            return
        except FileNotFoundError:
            if attempt == 4:
                raise


def batch_folder(sentinel: str | Path) -> Path:
    """The ledger folder of the fetch of the table behind `sentinel`."""
    target = Path(sentinel)
    return target.parent / ".partial" / target.stem


def drop_batches(sentinels: Iterable[str | Path]) -> int:
    """Remove the fetch batches and progress notes of the tables behind `sentinels`, and the
    `.partial` folders left empty; returns how many batch files went.

    Call it only for jobs Snakemake has recorded as finished: a job it reruns after a kill
    needs its batches to fetch nothing again.
    """
    removed = 0
    parents: set[Path] = set()
    for sentinel in sentinels:
        folder = batch_folder(sentinel)
        if folder.is_dir():
            removed += sum(1 for _ in folder.glob("*.parquet"))
            shutil.rmtree(folder, ignore_errors=True)
        progress_path(sentinel).unlink(missing_ok=True)
        parents.add(folder.parent)
    for parent in parents:
        try:
            parent.rmdir()
        except OSError:
            pass  # missing, or another table's batches or progress are still there
    return removed


def remaining_share(sentinel: str | Path) -> float:
    """The share of its batches a fetch still has to fetch, from its progress note: 1.0 for a
    fetch that never started (or whose note is unreadable), less for one a crash interrupted.

    Snakemake reads it as the priority of a fetch job (`usher_fetch_priority`), so that on a
    resume with fewer cores than jobs the fetches with the most left to do start first and the
    interrupted ones fill in beside them: the run ends sooner than the other way round.
    """
    try:
        note = json.loads(progress_path(sentinel).read_text(encoding="utf-8"))
        total, committed = int(note["batches_total"]), int(note["batches_committed"])
    except (OSError, ValueError, KeyError, TypeError):
        return 1.0
    if total <= 0:
        return 1.0
    return min(1.0, max(0.0, (total - committed) / total))


def plan_batches(
    keys: Sequence[Any], batch_size: int, signature: str
) -> list[tuple[str, list[Any]]]:
    """Cut `keys` into (batch id, keys) pairs; the id depends on the keys and the signature."""
    if batch_size < 1:
        raise ValueError(f"batch_size is {batch_size}: use a whole number of at least 1")
    batches = []
    for start in range(0, len(keys), batch_size):
        chunk = list(keys[start : start + batch_size])
        batches.append((sha256_json([signature, chunk])[:24], chunk))
    return batches


class BatchLedger(Protocol):
    """Where committed batches live until the job that fetched them is known finished."""

    folder: Path

    def committed(self) -> set[str]: ...

    def commit(self, batch_id: str, frame: pl.DataFrame) -> None: ...

    def schema(self, batch_id: str) -> pl.Schema: ...

    def load(self, batch_ids: Sequence[str], schema: pl.Schema) -> pl.DataFrame | None: ...

    def cleanup(self) -> None: ...


class FileLedger:
    """Batches as Parquet files `<batch id>.parquet` in a folder, each renamed into place
    once written: a file there is a committed batch."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def committed(self) -> set[str]:
        if not self.folder.is_dir():
            return set()
        return {p.name.removesuffix(".parquet") for p in self.folder.glob("*.parquet")}

    def commit(self, batch_id: str, frame: pl.DataFrame) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / f"{batch_id}.parquet") as tmp:
            write_parquet(frame, tmp)

    def schema(self, batch_id: str) -> pl.Schema:
        """The columns of a committed batch, from its file's metadata."""
        import polars as pl

        return pl.Schema(pl.read_parquet_schema(self.folder / f"{batch_id}.parquet"))

    def load(self, batch_ids: Sequence[str], schema: pl.Schema) -> pl.DataFrame | None:
        """The batches one after the other, each cast to `schema`, which they combine to."""
        import polars as pl

        if not batch_ids:
            return None
        frames = [conform(pl.read_parquet(self.folder / f"{b}.parquet"), schema) for b in batch_ids]
        return pl.concat(frames, how="vertical")

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class Batch(NamedTuple):
    """One batch of a fetch, as its refusal names it."""

    label: str
    position: int  # from 0, in the plan
    total: int
    keys: list[Any]
    committed_before: int  # batches committed before this one is checked
    folder: Path
    committed: bool  # committed by an earlier run

    def combine(self, schema: pl.Schema | None, new: pl.Schema) -> pl.Schema:
        """The schema of the batches so far with this one; raises BatchMismatch when this one
        does not fit them."""
        if schema is None:
            return new
        try:
            return combine_schemas(schema, new)
        except Unmatched as exc:
            raise BatchMismatch(self.message(exc, schema, new)) from None

    def message(self, exc: Unmatched, schema: pl.Schema, new: pl.Schema) -> str:
        """One sentence: the batch, its keys, the column and both types, and the fix."""
        first, last = (_shown(k) for k in (self.keys[0], self.keys[-1]))
        keys = f"key {first}" if len(self.keys) == 1 else f"keys {first} to {last}"
        what = f"{self.label}: batch {self.position + 1} of {self.total} ({keys})"
        if self.committed:
            what += ", committed by an earlier run,"
        if exc.missing:
            problem = f"lacks {_columns(exc.missing)} that the batches before it have"
        elif exc.extra:
            problem = f"has {_columns(exc.extra)} that the batches before it lack"
        else:
            name = str(exc.column)
            problem = (
                f"has column '{name}' as {new[name]} but the batches before it as {schema[name]}"
            )
        if self.committed:
            fix = f"delete {self.folder} and rerun to fetch every batch again"
        else:
            fix = (
                "return the same columns, each of one type, from every batch (cast in the fetch "
                f"function) and rerun; the {self.committed_before} committed batches are kept, "
                f"so delete {self.folder} first if their types change"
            )
        return f"{what} {problem}: {fix}"


def _shown(key: Any) -> str:
    text = repr(key)
    return text if len(text) <= 40 else text[:37] + "..."


def _columns(names: list[str]) -> str:
    return ("columns " if len(names) > 1 else "column ") + ", ".join(f"'{n}'" for n in names)


def fetch_in_batches(
    keys: Sequence[Any],
    fetch: Callable[[list[Any]], Any],
    *,
    ledger: BatchLedger,
    batch_size: int,
    signature: str = "",
    label: str = "fetch",
    progress: Callable[[str], None] | None = None,
    on_commit: Callable[[int, int], None] | None = None,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Fetch `keys` in batches through `fetch`, committing each batch to `ledger` as it arrives.

    Returns the combined result in key order and a summary (batches total, resumed, fetched,
    seconds). Batches already committed by an earlier, interrupted run are not fetched again.
    Each batch is checked against the batches before it, before it is committed: one that
    cannot combine with them raises BatchMismatch, and the batches committed stay.
    `on_commit(committed, total)` is called once the plan is known and after each commit.
    """
    import polars as pl

    report = progress or log.info
    plan = plan_batches(keys, batch_size, signature)
    done = ledger.committed()
    todo = sum(1 for batch_id, _ in plan if batch_id not in done)
    resumed = len(plan) - todo
    report(
        f"{label}: {len(plan)} batches of up to {batch_size} keys; {resumed} already committed, "
        f"{todo} to fetch"
    )
    if on_commit is not None:
        on_commit(resumed, len(plan))
    started = time.monotonic()
    last_report = 0.0
    schema: pl.Schema | None = None  # what the batches so far combine to
    n = 0
    for index, (batch_id, chunk) in enumerate(plan):
        if batch_id in done:
            batch = Batch(label, index, len(plan), chunk, resumed + n, ledger.folder, True)
            schema = batch.combine(schema, ledger.schema(batch_id))
            continue
        frame = to_polars(fetch(chunk))
        _audit("fetched", label, batch_id)
        batch = Batch(label, index, len(plan), chunk, resumed + n, ledger.folder, False)
        schema = batch.combine(schema, frame.schema)
        ledger.commit(batch_id, frame)
        _audit("committed", label, batch_id)
        n += 1
        if on_commit is not None:
            on_commit(resumed + n, len(plan))
        now = time.monotonic()
        if now - last_report >= 1.0 or n == todo:
            last_report = now
            elapsed = now - started
            rate = n / elapsed if elapsed > 0 else float("inf")
            eta = (todo - n) / rate if rate > 0 else 0.0
            report(
                f"{label}: {resumed + n}/{len(plan)} batches ({100 * (resumed + n) // len(plan)}%)"
                f", {rate:.1f} batches/s, ETA {eta:.0f} s"
            )
    result = None if schema is None else ledger.load([bid for bid, _ in plan], schema)
    if result is None:
        result = pl.DataFrame()
    summary = {
        "batches_total": len(plan),
        "batches_resumed": resumed,
        "batches_fetched": todo,
        "batch_size": batch_size,
        "keys": len(keys),
        "fetch_seconds": round(time.monotonic() - started, 3),
    }
    return result, summary
