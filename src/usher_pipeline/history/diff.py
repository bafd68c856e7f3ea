"""The difference between two kept runs: config, versions, inputs, and each table's rows.

Tables whose fingerprints are equal are unchanged without reading them; the others are
compared row by row by their key (`persistence.tablediff`): the key declared at registration
(`USHER.register("gene_scores", key=["ncbi_gene_id"])`), else a column unique in both
versions, else whole rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from usher_pipeline.history.changes import config_changes, version_changes
from usher_pipeline.history.store import History


@dataclass
class RunDiff:
    """What changed from run `old` to run `new`."""

    old: dict[str, Any]
    new: dict[str, Any]
    config: list[dict[str, Any]]
    data_sources: list[dict[str, Any]]
    software: list[dict[str, Any]]
    inputs: list[dict[str, Any]]
    workflow_files: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    unchanged_tables: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The diff as JSON values (what `usher-pipeline diff --format json` prints)."""
        return {
            "old": _run_head(self.old),
            "new": _run_head(self.new),
            "config": self.config,
            "data_sources": self.data_sources,
            "software": self.software,
            "inputs": self.inputs,
            "workflow_files": self.workflow_files,
            "tables": self.tables,
            "unchanged_tables": self.unchanged_tables,
        }


def _run_head(run: Mapping[str, Any]) -> dict[str, Any]:
    return {"run_id": run["run_id"], "ended_at": run["ended_at"]}


def table_entry_diff(
    history: History,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    table: str,
    *,
    samples: int = 5,
) -> dict[str, Any]:
    """One table's diff between two runs (both must have it, with different content)."""
    from usher_pipeline.persistence.tablediff import diff_parquet

    before, after = old["tables"][table], new["tables"][table]
    key = after.get("key") or before.get("key")
    label = after.get("label") or before.get("label")
    result = diff_parquet(
        history.version_file(old, table),
        history.version_file(new, table),
        table=table,
        key=key,
        label=label,
        samples=samples,
    )
    return {
        "table": table,
        "status": "changed",
        "noun": after.get("noun") or before.get("noun"),
        "label": label,
        **result.as_json(),
    }


def diff_runs(
    history: History,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    tables: Sequence[str] | None = None,
    samples: int = 5,
    progress: Callable[[str], None] | None = None,
) -> RunDiff:
    """Compare two run records; `tables` limits the row diffs to those tables."""
    diff = RunDiff(
        old=dict(old),
        new=dict(new),
        config=config_changes(old.get("config") or {}, new.get("config") or {}),
        data_sources=version_changes(
            old.get("data_source_versions"), new.get("data_source_versions")
        ),
        software=version_changes(old.get("software"), new.get("software")),
        inputs=version_changes(old.get("inputs"), new.get("inputs"), name="path"),
        workflow_files=version_changes(
            (old.get("workflow") or {}).get("files"),
            (new.get("workflow") or {}).get("files"),
            name="path",
        ),
    )
    names = sorted(set(old["tables"]) | set(new["tables"]))
    for table in names:
        if tables is not None and table not in tables:
            continue
        before, after = old["tables"].get(table), new["tables"].get(table)
        if before is not None and after is not None:
            if before["fingerprint"] == after["fingerprint"]:
                diff.unchanged_tables.append(table)
                continue
            if progress is not None:
                progress(f"comparing {table} ({before['rows']} -> {after['rows']} rows)")
            entry = table_entry_diff(history, old, new, table, samples=samples)
            entry["why"] = causes(diff, old, new, table)
            diff.tables.append(entry)
            continue
        entry = after if after is not None else before
        assert entry is not None
        diff.tables.append(
            {
                "table": table,
                "status": "added" if after is not None else "removed",
                "noun": entry.get("noun"),
                "label": entry.get("label"),
                "rows_old": before["rows"] if before is not None else 0,
                "rows_new": after["rows"] if after is not None else 0,
            }
        )
    return diff


def _jobs(run: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(job["step"]): job for job in run.get("jobs") or []}


def _values(changes: Sequence[Mapping[str, Any]], most: int = 3) -> str:
    shown = [f"{c['key']} {_json(c['old'])} -> {_json(c['new'])}" for c in changes[:most]]
    return ", ".join(shown) + (f" and {len(changes) - most} more" if len(changes) > most else "")


def _json(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value, default=str)


def causes(diff: RunDiff, old: Mapping[str, Any], new: Mapping[str, Any], table: str) -> list[str]:
    """Why a table changed, from what the two runs recorded of the job that wrote it: its
    params (its config slice), the tables and files it read, else the workflow's files or
    software, else a rerun with the same params and inputs."""
    before, after = old["tables"][table], new["tables"][table]
    job_old, job_new = _jobs(old).get(before["step"]), _jobs(new).get(after["step"])
    why: list[str] = []
    step = after["step"]
    if job_old is not None and job_new is not None:
        if "params" in job_old and "params" in job_new:
            moved = config_changes(job_old["params"], job_new["params"])
            if moved:
                why.append(f"the params of {step} changed: {_values(moved)}")
        elif job_old.get("config_slice_hash") != job_new.get("config_slice_hash"):
            why.append(f"the params of {step} changed")
    changed_tables = {
        name
        for name, entry in new["tables"].items()
        if (old["tables"].get(name) or {}).get("fingerprint") != entry["fingerprint"]
    }
    upstream = [name for name in after.get("upstream") or [] if name in changed_tables]
    if upstream:
        why.append(f"{step} read changed tables: {', '.join(upstream)}")
    moved_inputs = {entry["path"] for entry in diff.inputs}
    files = [path for path in (job_new or {}).get("inputs") or [] if path in moved_inputs]
    if files:
        why.append(f"{step} read changed files: {', '.join(files[:3])}")
    if not why and diff.workflow_files:
        why.append(
            "the workflow's files changed: "
            + ", ".join(entry["path"] for entry in diff.workflow_files[:3])
        )
    if not why and diff.software:
        why.append(
            "software changed: "
            + ", ".join(f"{e['name']} {e['old']} -> {e['new']}" for e in diff.software[:3])
        )
    if not why:
        why.append(f"{step} ran again with the same params and inputs")
    return why


def _noun(noun: str | None, count: int) -> str:
    word = noun or "rows"
    return word[:-1] if count == 1 and word.endswith("s") else word


def headline(entry: Mapping[str, Any]) -> str:
    """One table's change in one line, as a result reads: "candidate_tiers: 37 genes changed
    tier (12 MEDIUM -> HIGH, 25 LOW -> MEDIUM); 4012 genes changed score, rank"."""
    table, noun = entry["table"], entry.get("noun")
    if entry["status"] == "added":
        return f"{table}: new table, {entry['rows_new']} {_noun(noun, entry['rows_new'])}"
    if entry["status"] == "removed":
        return f"{table}: no longer made (had {entry['rows_old']} {_noun(noun, entry['rows_old'])})"
    parts: list[str] = []
    by_column: dict[str, list[Mapping[str, Any]]] = {}
    for transition in entry.get("transitions") or []:
        by_column.setdefault(str(transition["column"]), []).append(transition)
    for column, moves in by_column.items():
        total = sum(int(m["rows"]) for m in moves)
        shown = ", ".join(f"{m['rows']} {m['old']} -> {m['new']}" for m in moves[:4])
        more = f", {len(moves) - 4} more" if len(moves) > 4 else ""
        parts.append(f"{total} {_noun(noun, total)} changed {column} ({shown}{more})")
    others = [(c, n) for c, n in entry.get("changed_columns") or [] if c not in by_column]
    changed = int(entry.get("changed") or 0)
    if others:
        columns = ", ".join(c for c, _n in others[:4]) + (", ..." if len(others) > 4 else "")
        parts.append(f"{changed} {_noun(noun, changed)} changed {columns}")
    if entry.get("added"):
        parts.append(f"{entry['added']} added")
    if entry.get("removed"):
        parts.append(f"{entry['removed']} removed")
    for key, what in (("columns_added", "new columns"), ("columns_removed", "columns dropped")):
        if entry.get(key):
            parts.append(f"{what}: {', '.join(entry[key])}")
    if entry.get("types_changed"):
        parts.append(
            "types changed: " + ", ".join(f"{c} {a} -> {b}" for c, a, b in entry["types_changed"])
        )
    if entry.get("key_source") == "whole row":
        parts.append("rows compared whole (no key)")
    if not parts:
        parts.append("same rows, stored differently")
    return f"{table}: " + "; ".join(parts)
