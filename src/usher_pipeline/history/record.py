"""Record one run into the history: what ran, with which config, versions and inputs, and
the fingerprint of every table it left; the provenance rule calls `record_run` last.

The run is described from the step logs of every registered job (what the provenance merge
reads) and the workflow's config as Snakemake gave it to the provenance job. A job "ran" in
this run when its step log is not the one the previous run recorded, so a run that reran
only the scoring names only the scoring jobs, whatever the clocks say.
"""

from __future__ import annotations

import getpass
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from usher_pipeline.config.hashing import jobs_config_hash
from usher_pipeline.hashing import sha256_json
from usher_pipeline.history.changes import (
    changed_names,
    config_changes,
    plain_config,
)
from usher_pipeline.history.store import RUN_FORMAT, History, run_id_for
from usher_pipeline.lineage import path_key, step_label
from usher_pipeline.settings import RUNTIME_KEY
from usher_pipeline.workflow.faults import fault_point

log = logging.getLogger("usher_pipeline.history")


@dataclass(frozen=True)
class HistoryOptions:
    """What the provenance merge needs to record the run: where, the workflow's config, the
    tables' keys, nouns and labels (`Layout.history_meta`), and the retention."""

    results_dir: str | Path
    config: Mapping[str, Any] = field(default_factory=dict)
    table_meta: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    keep_runs: int | None = None
    keep_days: float | None = None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _software(records: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Package -> version over every job; a package two jobs ran in different versions lists
    both, sorted ("2.0.0, 2.1.0")."""
    seen: dict[str, set[str]] = {}
    for record in records:
        for name, version in (record.get("software") or {}).items():
            seen.setdefault(str(name), set()).add(str(version))
    return {name: ", ".join(sorted(versions)) for name, versions in sorted(seen.items())}


def _workflow_identity() -> dict[str, Any]:
    """The workflow's name and version from its run manifest, when it has one."""
    from usher_pipeline.workflow.manifest import ManifestError, find_manifest, load_manifest

    found = find_manifest(Path.cwd())
    unknown: dict[str, Any] = {"name": Path.cwd().name, "version": None, "files": {}}
    if found is None:
        return unknown
    try:
        manifest = load_manifest(found)
    except ManifestError:
        return unknown
    return {
        "name": manifest.workflow.name,
        "version": manifest.workflow.version,
        # the config files' changes are the config keys' (the run's config)
        "files": {f.path: f.sha256 for f in manifest.workflow.files if f.role != "config"},
    }


def build_run(
    records: Sequence[Mapping[str, Any]],
    *,
    previous: Mapping[str, Any] | None,
    config: Mapping[str, Any],
    table_meta: Mapping[str, Mapping[str, Any]],
    pipeline_version: str,
    provenance_run_id: str,
    expected_versions: Mapping[str, Any] | None = None,
    object_of: Callable[[str], str],
    ended: datetime | None = None,
) -> dict[str, Any]:
    """The run record of these step logs (format in docs/history.md); `object_of` gives a
    fingerprint's object path relative to the history folder."""
    ended = ended or datetime.now(UTC)
    old_jobs = {job["step"]: job for job in (previous or {}).get("jobs", [])}
    old_tables = (previous or {}).get("tables", {})
    sentinels: dict[str, str] = {}
    written_paths: set[str] = set()
    for record in records:
        for entry in record["outputs"]:
            written_paths.add(path_key(entry["path"]))
            if entry.get("table"):
                sentinels[path_key(entry["path"])] = str(entry["table"])
    jobs: list[dict[str, Any]] = []
    tables: dict[str, dict[str, Any]] = {}
    inputs: dict[str, str | None] = {}
    data_sources: dict[str, Any] = {}
    for record in records:
        step = step_label(record)
        digest = sha256_json(record)
        ran = old_jobs.get(step, {}).get("steplog_sha256") != digest
        jobs.append(
            {
                "step": step,
                "rule": record.get("rule"),
                "started_at": record.get("started_at"),
                "ended_at": record.get("ended_at"),
                "config_slice_hash": record.get("config_slice_hash"),
                "params": plain_config(record.get("params") or {}),
                "inputs": sorted({str(e["path"]) for e in record.get("inputs") or []}),
                "steplog_sha256": digest,
                "ran": ran,
            }
        )
        data_sources.update(record.get("data_sources") or {})
        upstream = []
        for entry in record.get("inputs") or []:
            key = path_key(entry["path"])
            if key in sentinels:
                upstream.append(sentinels[key])
            elif key not in written_paths:
                inputs[str(entry["path"])] = entry.get("sha256")
        for entry in record["outputs"]:
            table = entry.get("table")
            fingerprint = entry.get("fingerprint")
            if not table or not fingerprint:
                continue
            meta = table_meta.get(str(table)) or {}
            tables[str(table)] = {
                "fingerprint": fingerprint,
                "rows": entry.get("rows"),
                "size": entry.get("size"),
                "sha256": entry.get("sha256"),
                "object": object_of(str(fingerprint)),
                "rule": record.get("rule"),
                "step": step,
                "committed_at": entry.get("committed_at") or record.get("ended_at"),
                "written": ran,
                "changed": old_tables.get(str(table), {}).get("fingerprint") != fingerprint,
                "key": meta.get("key"),
                "noun": meta.get("noun"),
                "label": meta.get("label"),
                "upstream": sorted(set(upstream)),
            }
    started = [str(job["started_at"]) for job in jobs if job["ran"] and job["started_at"]]
    ended_text = ended.isoformat().replace("+00:00", "Z")
    run: dict[str, Any] = {
        "format": RUN_FORMAT,
        "run_id": run_id_for(ended, secrets.token_hex(3)),
        "previous_run": (previous or {}).get("run_id"),
        "started_at": min(started) if started else ended_text,
        "ended_at": ended_text,
        "user": _user(),
        "host": socket.gethostname(),
        "workdir": str(Path.cwd()),
        "workflow": _workflow_identity(),
        "pipeline_version": pipeline_version,
        "provenance_run_id": provenance_run_id,
        "config": plain_config(
            {k: v for k, v in config.items() if not str(k).startswith("_") and k != RUNTIME_KEY}
        ),
        "config_hash": jobs_config_hash(records),
        "config_slices": {job["step"]: job["config_slice_hash"] for job in jobs},
        "data_source_versions": data_sources,
        "expected_data_source_versions": dict(expected_versions or {}),
        "software": _software(records),
        "inputs": dict(sorted(inputs.items())),
        "jobs": jobs,
        "tables": dict(sorted(tables.items())),
    }
    run["changed"] = summary_of_changes(previous, run)
    return run


def summary_of_changes(
    previous: Mapping[str, Any] | None, run: Mapping[str, Any]
) -> dict[str, list[str]]:
    """The names of what changed since `previous` (for `usher-pipeline runs`)."""
    old = previous or {}
    return {
        "config": [c["key"] for c in config_changes(old.get("config") or {}, run["config"])]
        if previous is not None
        else [],
        "tables": [name for name, entry in run["tables"].items() if entry["changed"]]
        + sorted(set(old.get("tables", {})) - set(run["tables"])),
        "data_sources": changed_names(
            old.get("data_source_versions"), run["data_source_versions"], previous
        ),
        "software": changed_names(old.get("software"), run["software"], previous),
        "inputs": changed_names(old.get("inputs"), run["inputs"], previous),
        "workflow_files": changed_names(
            (old.get("workflow") or {}).get("files"), run["workflow"].get("files"), previous
        ),
    }


def record_run(
    records: Sequence[Mapping[str, Any]],
    options: HistoryOptions,
    *,
    pipeline_version: str,
    provenance_run_id: str,
    expected_versions: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Keep each table version the step logs name, then write the run record, then apply the
    retention (`keep_runs`, `keep_days`); all under the history's lock. Returns the record."""
    report = progress or log.info
    history = History(options.results_dir)
    began = time.monotonic()
    with history.locked():
        history.remove_leftovers()
        previous = history.latest()
        if previous is not None and previous.get("provenance_run_id") == provenance_run_id:
            # the same step logs merged again: this run was recorded, and the job is being
            # rerun because it was killed before Snakemake marked it finished
            report(f"history: run {previous['run_id']} is recorded already")
            return previous
        run = build_run(
            records,
            previous=previous,
            config=options.config,
            table_meta=options.table_meta,
            pipeline_version=pipeline_version,
            provenance_run_id=provenance_run_id,
            expected_versions=expected_versions,
            object_of=lambda fp: f"objects/{history.object_path(fp).name}",
        )
        sentinels = {  # one lookup per table: a merge may hold thousands of step logs
            (step_label(record), output["fingerprint"]): Path(str(output["path"]))
            for record in records
            for output in record["outputs"]
            if output.get("table") and output.get("fingerprint")
        }
        added = 0
        for entry in run["tables"].values():
            sentinel = sentinels[(entry["step"], entry["fingerprint"])]
            added += history.add_object(entry["fingerprint"], sentinel, entry.get("sha256"))
        fault_point("history_after_objects", "")
        history.save_run(run)
    changed = run["changed"]["tables"]
    report(
        f"history: recorded run {run['run_id']} ({len(run['tables'])} tables, "
        f"{len(changed)} changed; {added} bytes copied) in {time.monotonic() - began:.2f} s"
    )
    if options.keep_runs is not None or options.keep_days is not None:
        freed = history.gc(keep_runs=options.keep_runs, keep_days=options.keep_days)
        if freed.runs_removed or freed.objects_removed:
            report(
                f"history: retention removed {len(freed.runs_removed)} runs and "
                f"{freed.objects_removed} table versions ({freed.bytes_freed} bytes freed)"
            )
    return run
