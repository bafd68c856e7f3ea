"""The run history of a workflow: one record per run and each table's versions by content.

Layout below `<results_dir>/history/`:

    runs/<run id>.json             one run record, written whole (a temporary file renamed
                                   into place) as the last act of recording a run
    objects/fp2-<hex>.parquet      one table version per distinct content, named by its
                                   fingerprint: a hard link of the sentinel it was taken from
                                   where the filesystem allows (no bytes are copied; the
                                   version costs disk space only once the sentinel is replaced
                                   by another version), otherwise a copy
    lock                           held while a run is recorded and while `gc` runs

A run that changes no table adds no object. A kill at any instant leaves every run record
whole with every object it names: objects go in before the record that names them, and `gc`
removes records before the objects that only they named; an object no record names (from a
kill between the two) is removed by the next `gc`. Versions are Parquet files, so any SQL
engine reads them; `usher-pipeline query` may read them too (docs/history.md).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from usher_pipeline._io import read_json, remove_stale_temps, temp_path_for, write_json_atomic
from usher_pipeline.errors import UsherError
from usher_pipeline.hashing import sha256_file
from usher_pipeline.workflow.faults import fault_point

HISTORY_DIR: Final = "history"
RUN_FORMAT: Final = "usher_pipeline.run/1"
RUN_ID_PATTERN: Final = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
OBJECT_PATTERN: Final = re.compile(r"^fp2-[0-9a-f]{32}\.parquet$")
LOCK_TIMEOUT_S: Final = 600.0
#: The temporary name `_io.temp_path_for` gives a file of these folders.
_TEMP_OF: Final = re.compile(r"\.(?P<target>.+)\.\d+\.[0-9a-f]+\.tmp")


class HistoryError(UsherError):
    """The run history cannot do what was asked; the message says why and what to do."""


class RunNotFound(HistoryError):
    """A run reference that names no kept run."""


class TableNotInHistory(HistoryError):
    """A table that no kept run saved."""


def run_id_for(ended_at: datetime, salt: str) -> str:
    """A run id that sorts by time: the UTC end time and 6 hex digits of `salt`."""
    return ended_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + salt[:6]


def parse_time(text: str) -> datetime:
    """An ISO 8601 time of a run record (trailing Z allowed) as an aware datetime."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def object_name(fingerprint: str) -> str:
    """The object file of a fingerprint: `fp2:<hex>` -> `fp2-<hex>.parquet`."""
    prefix, _, digest = fingerprint.partition(":")
    name = f"{prefix}-{digest}.parquet"
    if not OBJECT_PATTERN.match(name):
        raise HistoryError(
            f"fingerprint {fingerprint!r} is not a current content fingerprint (fp2:): rerun "
            "the job that saved the table so that its step log records one"
        )
    return name


@dataclass(frozen=True)
class GcReport:
    """What `History.gc` removed (or would remove, on a dry run)."""

    runs_removed: tuple[str, ...]
    runs_kept: int
    objects_removed: int
    bytes_freed: int
    shared_kept: int  # removed objects that were also a current sentinel (freed no bytes)
    dry_run: bool


class History:
    """The run history below `results_dir` (see the module docstring)."""

    def __init__(self, results_dir: str | Path) -> None:
        self.results_dir = Path(results_dir)
        self.root = self.results_dir / HISTORY_DIR
        self.runs_dir = self.root / "runs"
        self.objects_dir = self.root / "objects"

    # -- locking ---------------------------------------------------------------------------

    @contextmanager
    def locked(self, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold the history's lock (a run being recorded, or `gc`)."""
        from filelock import FileLock, Timeout

        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.root / "lock"))
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise HistoryError(
                f"the run history {self.root} stayed locked for {timeout:.0f} s (a run being "
                "recorded or a gc): wait for it to end, then try again"
            ) from None
        try:
            yield
        finally:
            lock.release()

    # -- runs ------------------------------------------------------------------------------

    def run_ids(self) -> list[str]:
        """The kept runs' ids, oldest first."""
        if not self.runs_dir.is_dir():
            return []
        found = (p.name[: -len(".json")] for p in self.runs_dir.glob("*.json"))
        return sorted(run_id for run_id in found if RUN_ID_PATTERN.match(run_id))

    def run_path(self, run_id: str) -> Path:
        """The file of one run record."""
        return self.runs_dir / f"{run_id}.json"

    def load(self, run_id: str) -> dict[str, Any]:
        """One run record; HistoryError naming the file when it is not one."""
        path = self.run_path(run_id)
        try:
            data = read_json(path)
        except FileNotFoundError:
            raise RunNotFound(
                f"no run {run_id} in {self.runs_dir}: list the kept runs with `usher-pipeline runs`"
            ) from None
        except (OSError, ValueError) as exc:
            raise HistoryError(
                f"run record {path} cannot be read ({type(exc).__name__}): delete it (the run "
                "drops out of the history) and run `usher-pipeline gc`"
            ) from None
        if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
            raise HistoryError(
                f"run record {path} is not a {RUN_FORMAT} record: delete it and run "
                "`usher-pipeline gc`"
            )
        return data

    def runs(self) -> list[dict[str, Any]]:
        """Every kept run record, oldest first."""
        return [self.load(run_id) for run_id in self.run_ids()]

    def latest(self) -> dict[str, Any] | None:
        """The newest kept run, or None."""
        ids = self.run_ids()
        return self.load(ids[-1]) if ids else None

    def previous(self, run: Mapping[str, Any]) -> dict[str, Any] | None:
        """The kept run before `run`, or None."""
        earlier = [run_id for run_id in self.run_ids() if run_id < str(run["run_id"])]
        return self.load(earlier[-1]) if earlier else None

    def run_for_provenance(self, provenance_run_id: str) -> dict[str, Any] | None:
        """The newest kept run whose provenance merge had this run id, or None."""
        for run_id in reversed(self.run_ids()):
            run = self.load(run_id)
            if run.get("provenance_run_id") == provenance_run_id:
                return run
        return None

    def resolve(self, ref: str) -> dict[str, Any]:
        """A run named by its id (or a unique prefix of it), `latest`, `latest~N`, or a date or
        time (the newest run that ended by then: `2026-12-01` means by the end of that day, UTC)."""
        ids = self.run_ids()
        if not ids:
            raise RunNotFound(
                f"no run is recorded in {self.runs_dir}: run the workflow (its provenance rule "
                "records each run)"
            )
        text = ref.strip()
        back = re.fullmatch(r"latest(?:~(\d+))?", text)
        if back:
            steps = int(back.group(1) or 0)
            if steps >= len(ids):
                raise RunNotFound(
                    f"run {ref} does not exist: {len(ids)} runs are kept, so the oldest is "
                    f"latest~{len(ids) - 1}"
                )
            return self.load(ids[-1 - steps])
        if text in ids:
            return self.load(text)
        by_prefix = [run_id for run_id in ids if run_id.startswith(text)] if len(text) >= 4 else []
        if len(by_prefix) == 1:
            return self.load(by_prefix[0])
        moment = _as_moment(text)
        if moment is not None and not by_prefix:
            ended = [run["run_id"] for run in self.runs() if parse_time(run["ended_at"]) <= moment]
            if not ended:
                raise RunNotFound(
                    f"no kept run ended by {ref}: the oldest kept run is {ids[0]} "
                    "(`usher-pipeline runs` lists them)"
                )
            return self.load(ended[-1])
        if len(by_prefix) > 1:
            raise RunNotFound(
                f"run {ref} is ambiguous ({len(by_prefix)} runs start so): give more of its id"
            )
        raise RunNotFound(
            f"no run {ref}: give a run id from `usher-pipeline runs`, latest, latest~N or a "
            "date such as 2026-12-01"
        )

    def save_run(self, record: Mapping[str, Any]) -> Path:
        """Write a run record whole (the last act of recording a run)."""
        return write_json_atomic(self.run_path(str(record["run_id"])), dict(record))

    def remove_leftovers(self) -> int:
        """Delete the temporary files of writers that were killed (a record or a version
        half-written); a live writer's are kept. Returns how many were removed."""
        removed = 0
        for folder in (self.runs_dir, self.objects_dir):
            if not folder.is_dir():
                continue
            for path in folder.glob(".*"):
                name = _TEMP_OF.fullmatch(path.name)
                if name is not None:
                    removed += len(remove_stale_temps(folder / name["target"]))
        return removed

    # -- table versions --------------------------------------------------------------------

    def object_path(self, fingerprint: str) -> Path:
        """The file of the table version with this fingerprint."""
        return self.objects_dir / object_name(fingerprint)

    def add_object(self, fingerprint: str, sentinel: Path, sha256: str | None) -> int:
        """Keep the content of `sentinel` as the version `fingerprint`; returns the bytes it
        added now (0 for a version already kept or a hard link). `sha256` is the digest the
        step log names: a sentinel replaced since is refused rather than kept under a wrong
        fingerprint.

        A version kept already as another file (a job rerun that wrote the same content
        anew) becomes a link of the new sentinel, so that the old file is freed: a run that
        changes nothing leaves the history holding no byte more."""
        target = self.object_path(fingerprint)
        kept = target.exists()
        if kept and os.path.samefile(target, sentinel):
            return 0
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        tmp = temp_path_for(target)
        added = 0
        try:
            try:
                os.link(sentinel, tmp)
            except OSError:  # another filesystem, or links not allowed: copy
                if kept:
                    return 0  # the same content is kept already
                shutil.copyfile(sentinel, tmp)
                added = tmp.stat().st_size
            if sha256 is not None and sha256_file(tmp) != sha256:
                raise HistoryError(
                    f"sentinel {sentinel} is not the file its step log describes (SHA-256 "
                    "differs): rerun the job that writes it (`usher-pipeline verify` names it)"
                )
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
        return added

    def versions(self, table: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(run, the table's entry in it) for every kept run that has the table, oldest first."""
        found = [(run, run["tables"][table]) for run in self.runs() if table in run["tables"]]
        if not found:
            known = sorted({name for run in self.runs() for name in run["tables"]})
            hint = f" (kept tables: {', '.join(known[:8])}{', ...' if len(known) > 8 else ''})"
            raise TableNotInHistory(
                f"table {table} was saved by no kept run{hint if known else ''}: check the "
                "name, or run the workflow that makes it"
            )
        return found

    def version_file(self, run: Mapping[str, Any], table: str) -> Path:
        """The object file of `table` as run `run` left it."""
        tables = run["tables"]
        if table not in tables:
            raise TableNotInHistory(
                f"run {run['run_id']} has no table {table}: `usher-pipeline history {table}` "
                "lists the runs that have it"
            )
        path = self.root / str(tables[table]["object"])
        if not path.is_file():
            raise HistoryError(
                f"the version of {table} in run {run['run_id']} is missing ({path}): the history "
                "was edited by hand; delete that run record and run `usher-pipeline gc`"
            )
        return path

    # -- retention -------------------------------------------------------------------------

    def gc(
        self,
        *,
        keep_runs: int | None,
        keep_days: float | None,
        dry_run: bool = False,
        now: datetime | None = None,
    ) -> GcReport:
        """Remove the runs that neither `keep_runs` (the last N) nor `keep_days` (younger than
        D days) keeps, the latest run always kept, then every object no kept run names."""
        if keep_runs is not None and keep_runs < 1:
            raise HistoryError(
                f"keep_runs is {keep_runs}: keep at least 1 run (the latest is always kept)"
            )
        if keep_days is not None and not keep_days > 0:
            raise HistoryError(f"keep_days is {keep_days}: give a number of days above 0")
        with self.locked():
            self.remove_leftovers()
            ids = self.run_ids()
            runs = {run_id: self.load(run_id) for run_id in ids}  # each record read once
            keep = set(ids[-1:])
            if keep_runs is None and keep_days is None:
                keep = set(ids)
            if keep_runs is not None:
                keep.update(ids[-keep_runs:])
            if keep_days is not None:
                cutoff = (now or datetime.now(UTC)) - timedelta(days=keep_days)
                keep.update(i for i in ids if parse_time(runs[i]["ended_at"]) >= cutoff)
            removed = tuple(i for i in ids if i not in keep)
            named: set[str] = set()
            for run_id in ids:
                if run_id in keep:
                    tables = runs[run_id]["tables"].values()
                    named.update(Path(str(entry["object"])).name for entry in tables)
            if not dry_run:
                for run_id in removed:  # records first: a kept record never misses an object
                    self.run_path(run_id).unlink(missing_ok=True)
                    if run_id != removed[-1]:
                        fault_point("history_gc_between", "")
            freed = objects = shared = 0
            for path in self._object_files():
                if path.name in named:
                    continue
                info = path.stat()
                objects += 1
                if info.st_nlink > 1:
                    shared += 1  # still a current sentinel: removing the link frees nothing
                else:
                    freed += info.st_size
                if not dry_run:
                    path.unlink(missing_ok=True)
            return GcReport(removed, len(ids) - len(removed), objects, freed, shared, dry_run)

    def _object_files(self) -> list[Path]:
        if not self.objects_dir.is_dir():
            return []
        return sorted(p for p in self.objects_dir.iterdir() if OBJECT_PATTERN.match(p.name))

    def disk_usage(self) -> tuple[int, int]:
        """(bytes of the objects held only by the history, bytes shared with a sentinel)."""
        own = shared = 0
        for path in self._object_files():
            info = path.stat()
            if info.st_nlink > 1:
                shared += info.st_size
            else:
                own += info.st_size
        return own, shared


def _as_moment(text: str) -> datetime | None:
    """A date (the end of that day, UTC) or a time given by the user, or None."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ][\d:.]+(Z|[+-]\d{2}:?\d{2})?", text):
            return parse_time(text)
    except ValueError:
        return None
    return None
