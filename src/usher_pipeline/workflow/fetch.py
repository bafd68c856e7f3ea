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

A batch whose function raises is tried again (`RetryPolicy`, on tenacity), with exponential
backoff and jitter, or after the wait the error names (`Retry-After`). Not tried again: an
HTTP 4xx other than 408 and 429, a `PermanentError`, and a programming error
(`PROGRAMMING_ERRORS`), which goes on at once with its traceback. A batch that fails every
attempt stops the fetch with one line (`FetchFailed`); the batches committed stay. Up to
`in_flight` batches run at once in threads; the main thread alone commits, so each batch is
committed whole and the result, read from the ledger in key order, does not depend on it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

import tenacity

from usher_pipeline._io import atomic_path, write_json_atomic
from usher_pipeline.errors import UsherError
from usher_pipeline.hashing import sha256_json
from usher_pipeline.persistence.appends import Unmatched, combine_schemas, conform
from usher_pipeline.persistence.duckdb_store import to_polars, write_parquet
from usher_pipeline.retry_after import parse_retry_after

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger("usher_pipeline.fetch")

AUDIT_VARIABLE = "USHER_FETCH_AUDIT"


class BatchMismatch(UsherError, ValueError):
    """A fetched batch whose columns or types cannot combine with the batches before it."""


class PermanentError(Exception):
    """Raise it (or a subclass) in a fetch function for a failure no retry can mend: the
    batch is not tried again and the fetch stops with one line naming it."""


class FetchFailed(UsherError, RuntimeError):
    """A batch that failed each of its attempts, or failed in a way not worth retrying."""


# Errors of the code, not of the service: tried again they fail again, so they go on at once
# with their traceback. KeyError, IndexError and ValueError are retried: a truncated or error
# response parsed as a good one raises them, and the next answer may be whole.
PROGRAMMING_ERRORS: Final[tuple[type[Exception], ...]] = (
    TypeError,
    AttributeError,
    NameError,
    ImportError,
    SyntaxError,
    AssertionError,
    NotImplementedError,
)

DEFAULT_ATTEMPTS: Final = 5  # api.max_retries' default in the config model
DEFAULT_BACKOFF_S: Final = 1.0  # the first wait; each next one doubles, up to MAX_BACKOFF_S
MAX_BACKOFF_S: Final = 60.0
MAX_RETRY_AFTER_S: Final = 3600.0  # a Retry-After hint is honoured up to an hour
RETRIED_4XX: Final = frozenset({408, 429})
_USER_INFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^\s/?#]*@", re.I)
_QUERY = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?#]*)[?#]\S*", re.I)


def status_code(exc: BaseException) -> int | None:
    """The HTTP status of an error that carries its response (requests' HTTPError, httpx's
    HTTPStatusError: both have `response.status_code`), or None."""
    code = getattr(getattr(exc, "response", None), "status_code", None)
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def retry_after(exc: BaseException) -> float | None:
    """The wait in seconds an error asks for: its `retry_after` attribute, or its response's
    `Retry-After` header (seconds or an HTTP date); None when it names none."""
    hint = getattr(exc, "retry_after", None)
    if hint is None:
        headers = getattr(getattr(exc, "response", None), "headers", None)
        if isinstance(headers, Mapping):
            hint = headers.get("Retry-After") or headers.get("retry-after")
    return parse_retry_after(hint, MAX_RETRY_AFTER_S)


def not_retried(exc: BaseException) -> str | None:
    """Why `exc` is not worth another attempt ("HTTP 404", "permanent"), or None when it is."""
    if isinstance(exc, PermanentError):
        return "permanent"
    code = status_code(exc)
    if code is not None and 400 <= code < 500 and code not in RETRIED_4XX:
        return f"HTTP {code}"
    return None


def error_text(exc: BaseException, limit: int = 300, *, with_type: bool = True) -> str:
    """`Type: message` (or the message alone) on one line, with the query strings and user
    info of URLs cut (they carry API keys and e-mail addresses), at most `limit` characters."""
    message = " ".join(str(exc).split())
    message = _QUERY.sub(r"\1?...", _USER_INFO.sub(r"\1", message))
    if not with_type:
        text = message
    else:
        text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class RetryPolicy:
    """How often a batch is tried and how long to wait between tries: `backoff` seconds
    doubled per attempt up to `max_backoff`, plus up to `backoff` of random jitter."""

    attempts: int = DEFAULT_ATTEMPTS
    backoff: float = DEFAULT_BACKOFF_S
    max_backoff: float = MAX_BACKOFF_S

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise UsherError(f"attempts is {self.attempts!r}: use a whole number of at least 1")
        if self.attempts < 1:
            raise UsherError(f"attempts is {self.attempts}: use a whole number of at least 1")
        for name in ("backoff", "max_backoff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise UsherError(f"{name} is {value!r}: use a number of seconds, 0 or more")


@dataclass
class FetchStats:
    """What the attempts of a fetch (or of one batch) cost: merged into the step log."""

    attempts: int = 0
    wait_seconds: float = 0.0
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)

    def failed(self, exc: BaseException) -> None:
        entry = self.errors.setdefault(type(exc).__name__, {"count": 0, "last_message": ""})
        entry["count"] += 1
        entry["last_message"] = error_text(exc, with_type=False)

    def add(self, other: FetchStats) -> None:
        self.attempts += other.attempts
        self.wait_seconds += other.wait_seconds
        for name, entry in other.errors.items():
            mine = self.errors.setdefault(name, {"count": 0, "last_message": ""})
            mine["count"] += entry["count"]
            mine["last_message"] = entry["last_message"]


class BatchError(Exception):
    """A batch that failed for good: its last error and its attempts (turned into
    FetchFailed by the main thread, which knows the batch's place)."""

    def __init__(self, error: BaseException, stats: FetchStats, reason: str | None) -> None:
        super().__init__(error_text(error))
        self.error, self.stats, self.reason = error, stats, reason


def call_with_retries(
    fetch: Callable[[list[Any]], Any],
    chunk: list[Any],
    policy: RetryPolicy,
    stop: threading.Event,
) -> tuple[Any, FetchStats]:
    """`fetch(chunk)` tried up to `policy.attempts` times; returns its result and the cost.

    Raises BatchError when the last attempt fails, or one not worth retrying; a programming
    error (or an exception that is not an `Exception`) goes on unchanged. Once `stop` is set
    (another batch failed for good), no new attempt starts and a wait ends at once.
    """
    stats = FetchStats()

    def attempt() -> Any:
        stats.attempts += 1
        try:
            return fetch(chunk)
        except PROGRAMMING_ERRORS:
            raise
        except Exception as exc:
            stats.failed(exc)
            raise

    def retryable(exc: BaseException) -> bool:
        return (
            isinstance(exc, Exception)
            and not isinstance(exc, PROGRAMMING_ERRORS)
            and not_retried(exc) is None
        )

    backoff = tenacity.wait_exponential(
        multiplier=policy.backoff, max=policy.max_backoff
    ) + tenacity.wait_random(0, policy.backoff)

    def wait_for(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        hint = retry_after(exc) if exc is not None else None
        return hint if hint is not None else float(backoff(state))

    def sleep(seconds: float) -> None:
        started = time.monotonic()
        stop.wait(seconds)
        stats.wait_seconds += time.monotonic() - started

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.attempts) | tenacity.stop_when_event_set(stop),
        wait=wait_for,
        retry=tenacity.retry_if_exception(retryable),
        sleep=sleep,
        reraise=True,
    )
    try:
        return retrying(attempt), stats
    except PROGRAMMING_ERRORS:
        raise
    except Exception as exc:
        raise BatchError(exc, stats, not_retried(exc)) from exc


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

    def failure(self, error: BatchError) -> str:
        """One line: the batch, the range of its keys, its attempts, the last error, the fix."""
        first, last = (_shown(k) for k in (self.keys[0], self.keys[-1]))
        keys = f"key {first}" if len(self.keys) == 1 else f"keys {first}..{last}"
        tries = error.stats.attempts
        why = f", not retried ({error.reason})" if error.reason else ""
        return (
            f"{self.label}: batch {self.position + 1} of {self.total} ({keys}) failed after "
            f"{tries} attempt{'s' if tries != 1 else ''}{why}: {error}; the "
            f"{self.committed_before} committed batches are kept, so a rerun fetches only the "
            "others"
        )


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
    retry: RetryPolicy | None = None,
    in_flight: int = 1,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Fetch `keys` in batches through `fetch`, committing each batch to `ledger` as it arrives.

    Returns the combined result in key order and a summary (batches total, resumed, fetched,
    attempts, retries, errors by type, waits, seconds). Batches already committed by an
    earlier, interrupted run are not fetched again. A batch whose function raises is tried
    again by `retry` (the default policy when None); one that fails for good raises
    FetchFailed once the batches still in flight are done, and the batches committed stay.
    Up to `in_flight` batches are fetched at once, in threads. Each batch is checked against
    the batches committed before it, before it is committed: one that cannot combine with
    them raises BatchMismatch. `on_commit(committed, total)` is called once the plan is known
    and after each commit.
    """
    import polars as pl

    if isinstance(in_flight, bool) or not isinstance(in_flight, int) or in_flight < 1:
        raise UsherError(f"in_flight is {in_flight!r}: use a whole number of at least 1")
    policy = retry or RetryPolicy()
    report = progress or log.info
    plan = plan_batches(keys, batch_size, signature)
    done = ledger.committed()
    todo = [(index, bid, chunk) for index, (bid, chunk) in enumerate(plan) if bid not in done]
    resumed = len(plan) - len(todo)
    report(
        f"{label}: {len(plan)} batches of up to {batch_size} keys; {resumed} already committed, "
        f"{len(todo)} to fetch"
    )
    if on_commit is not None:
        on_commit(resumed, len(plan))
    schema: pl.Schema | None = None  # what the committed batches combine to
    for index, (batch_id, chunk) in enumerate(plan):
        if batch_id in done:
            batch = Batch(label, index, len(plan), chunk, 0, ledger.folder, True)
            schema = batch.combine(schema, ledger.schema(batch_id))
    started = time.monotonic()
    last_report = 0.0
    stats = FetchStats()
    stop = threading.Event()
    n = 0
    gave_up = 0  # batches that failed for good
    failure: FetchFailed | None = None

    def fetched(index: int, batch_id: str, chunk: list[Any], result: Any) -> None:
        nonlocal schema, n, last_report
        frame = to_polars(result)
        _audit("fetched", label, batch_id)
        batch = Batch(label, index, len(plan), chunk, resumed + n, ledger.folder, False)
        schema = batch.combine(schema, frame.schema)
        ledger.commit(batch_id, frame)
        _audit("committed", label, batch_id)
        n += 1
        if on_commit is not None:
            on_commit(resumed + n, len(plan))
        now = time.monotonic()
        if now - last_report >= 1.0 or n == len(todo):
            last_report = now
            elapsed = now - started
            rate = n / elapsed if elapsed > 0 else float("inf")
            eta = (len(todo) - n) / rate if rate > 0 else 0.0
            report(
                f"{label}: {resumed + n}/{len(plan)} batches ({100 * (resumed + n) // len(plan)}%)"
                f", {rate:.1f} batches/s, ETA {eta:.0f} s"
            )

    def failed(index: int, chunk: list[Any], error: BatchError) -> FetchFailed:
        nonlocal gave_up
        gave_up += 1
        stats.add(error.stats)
        batch = Batch(label, index, len(plan), chunk, resumed + n, ledger.folder, False)
        return FetchFailed(batch.failure(error))

    if in_flight == 1:
        for index, batch_id, chunk in todo:
            try:
                result, cost = call_with_retries(fetch, chunk, policy, stop)
            except BatchError as error:
                failure = failed(index, chunk, error)
                break
            stats.add(cost)
            fetched(index, batch_id, chunk, result)
    elif todo:
        queue = iter(todo)
        running: dict[Future[tuple[Any, FetchStats]], tuple[int, str, list[Any]]] = {}
        with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix=label) as pool:
            try:
                while True:
                    while failure is None and len(running) < in_flight:
                        item = next(queue, None)
                        if item is None:
                            break
                        future = pool.submit(call_with_retries, fetch, item[2], policy, stop)
                        running[future] = item
                    if not running:
                        break
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in sorted(finished, key=lambda f: running[f][0]):
                        index, batch_id, chunk = running.pop(future)
                        try:
                            result, cost = future.result()
                        except BatchError as error:
                            named = failed(index, chunk, error)
                            if failure is None:  # the first is named; the others end early
                                failure = named
                                stop.set()
                            continue
                        stats.add(cost)
                        fetched(index, batch_id, chunk, result)
            except BaseException:
                stop.set()  # a bug or a mismatch: the threads start no new attempt
                raise
    summary = {
        "batches_total": len(plan),
        "batches_resumed": resumed,
        "batches_fetched": n,
        "batch_size": batch_size,
        "keys": len(keys),
        "in_flight": in_flight,
        "attempts": stats.attempts,
        "retries": stats.attempts - n - gave_up,
        "errors": stats.errors,
        "wait_seconds": round(stats.wait_seconds, 3),
        "fetch_seconds": round(time.monotonic() - started, 3),
    }
    if failure is not None:
        report(f"{label}: stopped; {canonical_summary(summary)}")
        raise failure
    result_frame = None if schema is None else ledger.load([bid for bid, _ in plan], schema)
    if result_frame is None:
        result_frame = pl.DataFrame()
    return result_frame, summary


def canonical_summary(summary: Mapping[str, Any]) -> str:
    """The summary of a fetch as one line of JSON (for the job's log)."""
    return json.dumps(summary, sort_keys=True, separators=(",", ":"))
