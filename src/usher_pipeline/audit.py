"""Check that the database, the sentinels and the step logs of a run agree, and repair the
database from the sentinels when they do not.

The sentinel Parquet files and the step logs are Snakemake's outputs; the database is not.
So the sentinels are the reference: a table missing from the database (or whose content
differs) is restored from its sentinel, with the checkpoint row its step log describes. A
sentinel that no longer matches its step log cannot be trusted and must be recomputed.

`verify` also compares the data source versions the jobs recorded having read (their step
logs' `data_sources`) with those the config expects (its `versions`, kept in the run record
as `expected_data_source_versions`): a `versions` key is the name a job gives
`job.record_data_source`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from usher_pipeline._io import read_json
from usher_pipeline.cli_render import Hints
from usher_pipeline.config.hashing import job_slice_hash
from usher_pipeline.export.run import RunRecords, TableOutput, parse_time
from usher_pipeline.hashing import sha256_file
from usher_pipeline.lineage import path_key, step_label
from usher_pipeline.persistence.duckdb_store import PROVENANCE, PipelineStore
from usher_pipeline.persistence.errors import StoreFileError
from usher_pipeline.persistence.fingerprint import fingerprint_parquet, short_fingerprint
from usher_pipeline.persistence.provenance import ProvenanceTracker, sidecar_path
from usher_pipeline.settings import DEFAULT_LOCK_TIMEOUT_S, RUN_RECORD_NAME

# DuckDB's messages for a file it cannot read: damaged blocks, a truncated or foreign file.
_DAMAGED_BLOCK = re.compile(r"[Cc]orrupt|checksum")
_DAMAGED = re.compile(r"[Cc]orrupt|checksum|Could not read enough bytes|not a valid DuckDB")
_MOVES_ASIDE = "moves it aside and rebuilds it from the sentinels"


@dataclass(frozen=True)
class Problem:
    """One disagreement, with what fixes it."""

    kind: str  # short tag shown first: MISSING, DIFFERS, CHANGED, GONE, DATABASE, VERSION
    message: str
    table: str | None = None
    repairable: bool = False


@dataclass
class Report:
    """What `verify` found: the problems and what was checked."""

    problems: list[Problem] = field(default_factory=list)
    tables: int = 0
    sentinels: int = 0
    steplogs: int = 0
    outputs: int = 0
    database_readable: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems


PLAIN: Final = Hints()  # the commands as run in the working directory


def _recompute(table: TableOutput, hints: Hints) -> str:
    """The command that recomputes a table: a forced rerun of the job that saved it."""
    return hints.forcerun(table.sentinel)


def _short(fingerprint: str | None) -> str:
    return short_fingerprint(fingerprint, missing="none")


def _sentinel_state(table: TableOutput) -> tuple[str | None, str | None]:
    """(fingerprint of the sentinel or None when missing, why it cannot be trusted or None)."""
    import duckdb

    if not table.sentinel.is_file():
        return None, f"sentinel {table.sentinel} is missing"
    try:
        fingerprint, _ = fingerprint_parquet(table.sentinel)
    except duckdb.Error:  # cut short, overwritten: DuckDB finds no Parquet file in it
        return None, f"sentinel {table.sentinel} is not a readable Parquet file"
    recorded = table.entry.get("fingerprint")
    if recorded and fingerprint != recorded:
        return fingerprint, (
            f"sentinel {table.sentinel} differs from its step log "
            f"({_short(fingerprint)} vs {_short(recorded)})"
        )
    return fingerprint, None


@dataclass
class _DatabaseState:
    """What a database holds, read once: its checkpoints, its tables and their fingerprints;
    `error` (and no store) when it is missing, cannot be opened or a block of it is damaged."""

    store: PipelineStore | None = None
    checkpoints: Sequence[Mapping[str, Any]] = ()
    tables: list[str] = field(default_factory=list)
    fingerprints: dict[str, str | None] = field(default_factory=dict)
    provenance_rows: int = 0
    error: str | None = None


def _read_state(db_path: Path, lock_timeout: float) -> _DatabaseState:
    """Read every table of a database in one read-only transaction, without creating it.

    Each table is scanned (its fingerprint), so a block that fails its checksum anywhere in
    the data is found here, before anything is compared or restored.
    """
    import duckdb

    if not db_path.exists():
        return _DatabaseState(error=f"database {db_path} does not exist")
    try:
        store = PipelineStore(db_path, lock_timeout)
        with store.transaction(read_only=True):  # one lock and connection for every table
            checkpoints = store.list_checkpoints()
            tables = store.list_tables()
            fingerprints = {name: store.fingerprint(name) for name in tables}
            provenance = 0
            if store.table_exists(PROVENANCE):
                provenance = store.execute_query(f"SELECT * FROM {PROVENANCE}").height
    except StoreFileError as exc:
        return _DatabaseState(error=_unreadable(db_path, exc))
    except duckdb.Error as exc:
        if not _DAMAGED.search(str(exc)):
            raise
        return _DatabaseState(error=_unreadable(db_path, exc))
    return _DatabaseState(store, checkpoints, tables, fingerprints, provenance)


def _unreadable(db_path: Path, exc: Exception) -> str:
    """One line on why the database cannot be used: a damaged block, or why it cannot open."""
    if _DAMAGED_BLOCK.search(str(exc)):
        return f"database {db_path} is damaged (a block of it fails its checksum)"
    return str(exc).split(" (", 1)[0] + " (unreadable)"


def verify(
    run: RunRecords,
    db_path: str | Path,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    progress: Callable[[str], None] | None = None,
    hints: Hints = PLAIN,
) -> Report:
    """Compare database, sentinels and step logs; one Problem per disagreement, whose fix
    names the commands as `hints` spells them.

    Read-only: a missing database is reported, never created.
    """
    report = progress or (lambda _message: None)
    found = Report(steplogs=len(run.records))
    state = _read_state(Path(db_path), lock_timeout)
    store = state.store
    if state.error:
        found.database_readable = False
        fix = _MOVES_ASIDE if Path(db_path).exists() else "rebuilds it"
        found.problems.append(
            Problem("DATABASE", f"{state.error}: `{hints.usher('repair')}` {fix}", None, True)
        )
    by_name = {c["table_name"]: c for c in state.checkpoints}
    present = set(state.tables)
    produced = run.tables()
    found.tables = len(produced)
    distrusted: set[str] = set()
    table_fps = state.fingerprints
    for n, (name, table) in enumerate(sorted(produced.items()), 1):
        report(f"verify: table {n}/{len(produced)} {name}")
        sentinel_fp, distrust = _sentinel_state(table)
        if sentinel_fp is not None:
            found.sentinels += 1
        if distrust:
            distrusted.add(path_key(table.sentinel))
            also = ""
            if sentinel_fp is not None and name in table_fps and table_fps[name] != sentinel_fp:
                also = " and from the table"
            found.problems.append(
                Problem("CHANGED", f"{distrust}{also}: `{_recompute(table, hints)}`", name)
            )
        if store is not None:
            found.problems.extend(
                _table_problems(
                    table,
                    sentinel_fp,
                    distrust,
                    stored=name in present,
                    checkpoint=by_name.get(name),
                    table_fp=table_fps.get(name),
                    hints=hints,
                )
            )
    found.problems.extend(_orphan_checkpoints(by_name, produced))
    for record, path in zip(run.records, run.steplogs, strict=True):
        for entry in record["outputs"]:
            found.outputs += 1
            if path_key(entry["path"]) not in distrusted:
                found.problems.extend(_check_output(path, entry, hints))
    found.problems.extend(version_problems(run))
    return found


def version_problems(run: RunRecords) -> list[Problem]:
    """One VERSION problem per data source version that jobs read and the config does not
    expect: the step logs' `data_sources` against the run record's
    `expected_data_source_versions` (the config's `versions`), matched by name and compared
    as text (`1` and `"1"` agree). None when the run has no run record yet."""
    expected = (run.run_record or {}).get("expected_data_source_versions") or {}
    if not isinstance(expected, Mapping):
        return []
    read: dict[str, dict[str, list[str]]] = {}
    for record in run.records:
        for name, version in (record.get("data_sources") or {}).items():
            steps = read.setdefault(str(name), {}).setdefault(_text(version), [])
            steps.append(step_label(record))
    problems = []
    for name, want in sorted(expected.items()):
        for version, steps in read.get(name, {}).items():
            if version == _text(want):
                continue
            jobs = ", ".join(steps[:3]) + (f" and {len(steps) - 3} more" if len(steps) > 3 else "")
            problems.append(
                Problem(
                    "VERSION",
                    f"data source {name}: {jobs} read version {version} but the config expects "
                    f"{_text(want)} (versions.{name}): set versions.{name} to what the jobs "
                    "should read, and rerun them if it is not the version they read",
                )
            )
    return problems


def _text(version: Any) -> str:
    """A version as text, as a message shows it (a string as is, anything else as JSON)."""
    return version if isinstance(version, str) else json.dumps(version)


def _table_problems(
    table: TableOutput,
    sentinel_fp: str | None,
    distrust: str | None,
    *,
    stored: bool,
    checkpoint: Mapping[str, Any] | None,
    table_fp: str | None,
    hints: Hints,
) -> list[Problem]:
    """Where a table's database copy and checkpoint row disagree with its sentinel: the table
    or its row missing, the sentinel gone, or fingerprints that differ."""
    name = table.table
    repairable = distrust is None and sentinel_fp is not None
    fix = hints.usher("repair") if repairable else _recompute(table, hints)
    if not stored:
        return [Problem("MISSING", f"table {name} is not in the database: {fix}", name, repairable)]
    problems = []
    if checkpoint is None:
        problems.append(
            Problem("MISSING", f"table {name} has no checkpoint row: {fix}", name, repairable)
        )
    if sentinel_fp is None:
        if checkpoint is not None and table.sentinel.is_file():
            return problems  # unreadable: reported as CHANGED, with its recompute
        if checkpoint is not None:
            problems.append(
                Problem(
                    "GONE",
                    f"checkpoint {name}: its sentinel {table.sentinel} is gone: "
                    f"`{hints.snakemake(targets=[str(table.sentinel)])}`",
                    name,
                )
            )
        return problems
    if distrust:  # reported as CHANGED: the sentinel is no reference to compare with
        return problems
    if table_fp != sentinel_fp:
        problems.append(
            Problem(
                "DIFFERS",
                f"table {name} differs from its sentinel {table.sentinel} "
                f"({_short(table_fp)} vs {_short(sentinel_fp)}): {fix}",
                name,
                repairable,
            )
        )
    elif checkpoint is not None and checkpoint["fingerprint"] != table_fp:
        problems.append(
            Problem(
                "DIFFERS",
                f"checkpoint {name} records {_short(checkpoint['fingerprint'])} but the "
                f"table is {_short(table_fp)}: {fix}",
                name,
                repairable,
            )
        )
    return problems


def _orphan_checkpoints(
    checkpoints: Mapping[str, Mapping[str, Any]], produced: dict[str, TableOutput]
) -> list[Problem]:
    """Checkpoint rows of tables no step log names, whose recorded sentinel is gone."""
    problems = []
    for name in sorted(set(checkpoints) - set(produced)):
        sentinel = checkpoints[name].get("sentinel")
        if sentinel and not Path(sentinel).is_file():
            problems.append(
                Problem("GONE", f"checkpoint {name}: its sentinel {sentinel} is gone", name)
            )
    return problems


def _check_output(steplog: Path, entry: dict[str, Any], hints: Hints) -> list[Problem]:
    """A problem when the file a step log describes is gone or changed since the job; the fix
    reruns the one job that wrote it."""
    target = Path(entry["path"])
    hint = hints.forcerun(target)
    if not target.exists():
        return [Problem("GONE", f"step log {steplog}: output {target} is missing: `{hint}`")]
    if entry.get("sha256") is None:
        return []
    size = target.stat().st_size
    if entry.get("size") is not None and size != entry["size"]:
        what = f"size {size} bytes, recorded {entry['size']}"
    elif sha256_file(target) != entry["sha256"]:
        what = f"sha256 differs from {entry['sha256'][:12]}"
    else:
        return []
    return [Problem("CHANGED", f"step log {steplog}: output {target} changed ({what}): `{hint}`")]


@dataclass
class RepairResult:
    """What `repair` did and what it left for Snakemake to recompute."""

    restored: list[str] = field(default_factory=list)
    moved_aside: Path | None = None
    created: bool = False
    unrepairable: list[str] = field(default_factory=list)
    provenance_rows: int = 0


def move_aside(db_path: Path) -> Path:
    """Rename an unreadable database (and its WAL) to `<db>.corrupt-<UTC timestamp>`."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = db_path.with_name(f"{db_path.name}.corrupt-{stamp}")
    os.replace(db_path, target)
    wal = db_path.with_name(db_path.name + ".wal")
    if wal.exists():
        os.replace(wal, target.with_name(target.name + ".wal"))
    return target


def repair(
    run: RunRecords,
    db_path: str | Path,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    progress: Callable[[str], None] | None = None,
    hints: Hints = PLAIN,
) -> RepairResult:
    """Restore from their sentinels the tables the database lacks or holds differently.

    An unreadable database file is moved aside (never deleted) and a new one is built.
    """
    report = progress or (lambda _message: None)
    result = RepairResult()
    db_path = Path(db_path)
    state = _read_state(db_path, lock_timeout)
    store = state.store
    if state.error and db_path.exists():
        result.moved_aside = move_aside(db_path)
        report(f"moved unreadable database {db_path} to {result.moved_aside}")
    if store is None:
        result.created = True
        store = PipelineStore(db_path, lock_timeout)
    by_name = {c["table_name"]: c for c in state.checkpoints}
    present = set(state.tables)
    produced = run.tables()
    for n, (name, table) in enumerate(sorted(produced.items()), 1):
        report(f"repair: checking table {n}/{len(produced)} {name}")
        sentinel_fp, distrust = _sentinel_state(table)
        if name in present and sentinel_fp is not None:
            table_fp = state.fingerprints.get(name)
            checkpoint = by_name.get(name)
            if (
                table_fp == sentinel_fp
                and checkpoint is not None
                and checkpoint["fingerprint"] == table_fp
            ):
                continue
        if sentinel_fp is None:
            result.unrepairable.append(
                f"table {name}: sentinel {table.sentinel} is missing; recompute it with "
                f"`{hints.snakemake(targets=[str(table.sentinel)])}`"
            )
            continue
        if distrust:
            result.unrepairable.append(
                f"table {name}: {distrust}; recompute it with `{_recompute(table, hints)}`"
            )
            continue
        restored = PipelineStore(
            db_path, lock_timeout, config_hash=job_slice_hash(table.record)
        ).ingest_parquet(
            table.sentinel,
            name,
            description=table.entry.get("description", ""),
            rule=table.record["rule"],
            sentinel=table.sentinel,
            fingerprint=table.entry.get("fingerprint") or sentinel_fp,
            row_count=table.entry.get("rows"),
            created_at=_naive(
                parse_time(table.entry.get("committed_at") or table.record["ended_at"])
            ),
        )
        result.restored.append(
            f"restored table {name} from its sentinel ({restored['row_count']} rows, "
            f"{_short(restored['fingerprint'])})"
        )
        report(result.restored[-1])
    if result.created or not state.provenance_rows:
        result.provenance_rows = restore_provenance(run, store)
    return result


def restore_provenance(run: RunRecords, store: PipelineStore) -> int:
    """Re-record the `_provenance` rows from the run record and the sidecars on disk."""
    rows: list[tuple[str, str, dict[str, Any]]] = []
    record = run.results_dir / RUN_RECORD_NAME
    paths = [(str(record), record)] if record.is_file() else []
    for step in run.records:
        for entry in step["outputs"]:
            paths.append((str(entry["path"]), sidecar_path(entry["path"])))
    for output_path, sidecar in paths:
        if sidecar.is_file():
            try:
                metadata = read_json(sidecar)
            except ValueError:
                continue
            if isinstance(metadata, dict) and metadata.get("run_id"):
                rows.append((str(metadata["run_id"]), output_path, metadata))
    ProvenanceTracker.record_rows(store, rows)
    return len(rows)


def _naive(stamp: datetime | None) -> datetime | None:
    """UTC without tzinfo, as `_checkpoints.created_at` stores it."""
    return stamp.astimezone(UTC).replace(tzinfo=None) if stamp else None
