"""Merge step logs into provenance sidecars, a run-level record and `_provenance` rows.

A sidecar carries the step logs of its output's whole lineage (`usher_pipeline.lineage`),
upstream first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usher_pipeline._io import write_json_atomic
from usher_pipeline.hashing import sha256_json
from usher_pipeline.lineage import Lineage, path_key, step_label
from usher_pipeline.persistence.provenance import sidecar_path, utc_now
from usher_pipeline.workflow.ingest import ingested_fingerprints
from usher_pipeline.workflow.steplog import load_steplog

if TYPE_CHECKING:
    from usher_pipeline.persistence.duckdb_store import PipelineStore

log = logging.getLogger("usher_pipeline.merge")


def processing_step(record: Mapping[str, Any]) -> dict[str, Any]:
    """A step log as a ProvenanceTracker-style processing step."""
    return {"step_name": step_label(record), "timestamp": record["ended_at"], "details": record}


def add_ingested_fingerprints(
    records: Sequence[dict[str, Any]], fingerprints: Mapping[str, tuple[str, str]]
) -> None:
    """Fill in the fingerprint of each table output that lacks one, from the ingest records."""
    for record in records:
        for entry in record["outputs"]:
            if entry.get("table") and not entry.get("fingerprint"):
                digest, fingerprint = fingerprints.get(path_key(entry["path"]), (None, None))
                if digest is not None and digest == entry.get("sha256"):
                    entry["fingerprint"] = fingerprint


def merge_provenance(
    steplogs: Sequence[str | Path],
    *,
    pipeline_version: str,
    config_hash: str | None,
    data_source_versions: Mapping[str, Any],
    run_record: str | Path | None = None,
    store: PipelineStore | None = None,
    ingested: Sequence[str | Path] = (),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write a sidecar for every output of every step log, the run record and `_provenance` rows.

    In head database mode a job records no fingerprint; the ingest records (`ingested`)
    supply it for each sentinel they loaded with the SHA-256 the step log names.

    Returns a summary: run id, number of step logs and sidecars, and the sidecar paths.
    """
    report = progress or log.info
    started = time.monotonic()
    records = [load_steplog(p) for p in steplogs]
    if ingested:
        add_ingested_fingerprints(records, ingested_fingerprints(ingested))
    graph = Lineage(records)
    created_at = utc_now()
    run_id = sha256_json([config_hash, sorted(sha256_json(r) for r in records)])[:32]
    base = {"pipeline_version": pipeline_version, "config_hash": config_hash, "run_id": run_id}
    sidecars: list[str] = []
    rows: list[tuple[str, dict[str, Any]]] = []
    for job, record in enumerate(records):
        jobs = graph.lineage(job)
        sources = dict(data_source_versions)
        for upstream in jobs:
            sources.update(records[upstream].get("data_sources") or {})
        steps = [processing_step(records[j]) for j in jobs]
        for entry in record["outputs"]:
            metadata = {
                **base,
                "data_source_versions": sources,
                "created_at": created_at,
                "output": {k: v for k, v in entry.items() if k != "name"},
                "processing_steps": steps,
            }
            target = sidecar_path(entry["path"])
            write_json_atomic(target, metadata)
            sidecars.append(str(target))
            rows.append((entry["path"], metadata))
        if (job + 1) % 1000 == 0:
            report(f"provenance: {job + 1}/{len(records)} step logs merged")
    all_sources = dict(data_source_versions)
    for record in records:
        all_sources.update(record.get("data_sources") or {})
    run = {
        **base,
        "data_source_versions": all_sources,
        "created_at": created_at,
        "outputs": [e for r in records for e in r["outputs"]],
        "processing_steps": [processing_step(records[j]) for j in graph.order],
    }
    if run_record is not None:
        write_json_atomic(run_record, run)
        rows.append((str(run_record), run))
    if store is not None:
        store.record_provenance_many(run_id, rows)
    seconds = time.monotonic() - started
    report(
        f"provenance: merged {len(records)} step logs into {len(sidecars)} sidecars "
        f"in {seconds:.2f} s (run {run_id})"
    )
    return {"run_id": run_id, "steplogs": len(records), "sidecars": sidecars, "seconds": seconds}


__all__ = [
    "Lineage",
    "add_ingested_fingerprints",
    "merge_provenance",
    "processing_step",
    "step_label",
]
