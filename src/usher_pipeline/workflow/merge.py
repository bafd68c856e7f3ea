"""Merge step logs into provenance sidecars, a run-level record and `_provenance` rows.

A sidecar carries the step logs of its output's whole lineage (`usher_pipeline.lineage`),
upstream first. Each job's lineage becomes one `ProvenanceTracker`, which writes the sidecars
of the job's outputs; a tracker of every job writes the run record; the trackers then write
their `_provenance` rows in one statement. A sidecar's `config_hash` is the hash of the config
slices of its lineage's jobs, the run record's that of every job's
(`config.hashing.jobs_config_hash`): both come from the step logs, never from the config.
So do the data source versions: a sidecar lists those its lineage's jobs recorded, the run
record those of every job, and only the run record carries the config's `versions` as
`expected_data_source_versions` (which `usher-pipeline verify` compares with them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usher_pipeline.config.hashing import jobs_config_hash
from usher_pipeline.hashing import sha256_json
from usher_pipeline.lineage import Lineage, path_key, step_label
from usher_pipeline.persistence.provenance import ProvenanceTracker, utc_now
from usher_pipeline.steplog import load_steplog
from usher_pipeline.workflow.fetch import drop_batches
from usher_pipeline.workflow.ingest import ingested_fingerprints

if TYPE_CHECKING:
    from usher_pipeline.history.record import HistoryOptions
    from usher_pipeline.persistence.duckdb_store import PipelineStore

log = logging.getLogger("usher_pipeline.merge")


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
    expected_versions: Mapping[str, Any] | None = None,
    run_record: str | Path | None = None,
    store: PipelineStore | None = None,
    ingested: Sequence[str | Path] = (),
    progress: Callable[[str], None] | None = None,
    history: HistoryOptions | None = None,
) -> dict[str, Any]:
    """Write a sidecar for every output of every step log, the run record and `_provenance` rows.

    In head database mode a job records no fingerprint; the ingest records (`ingested`)
    supply it for each sentinel they loaded with the SHA-256 the step log names. The fetch
    batches of each table the step logs name are removed last (`fetch.drop_batches`): call
    it only with the step logs of jobs that Snakemake has recorded as finished.
    `expected_versions` are the config's `versions`, recorded in the run record only.
    With `history`, the run is then recorded in the run history (`history.record`), before
    the fetch batches go.

    Returns a summary: run id, number of step logs and sidecars, and the sidecar paths.
    """
    report = progress or log.info
    started = time.monotonic()
    records = [load_steplog(p) for p in steplogs]
    if ingested:
        add_ingested_fingerprints(records, ingested_fingerprints(ingested))
    graph = Lineage(records)
    created_at = utc_now()
    run_hash = jobs_config_hash(records)
    run_id = sha256_json([run_hash, sorted(sha256_json(r) for r in records)])[:32]

    def tracker(config_hash: str, expected: Mapping[str, Any] | None = None) -> ProvenanceTracker:
        return ProvenanceTracker(
            pipeline_version,
            run_id=run_id,
            config_hash=config_hash,
            created_at=created_at,
            expected_versions=expected,
        )

    trackers: list[ProvenanceTracker] = []
    sidecars: list[str] = []
    for job, record in enumerate(records):
        upstreams = graph.lineage(job)
        lineage = tracker(jobs_config_hash(records[upstream] for upstream in upstreams))
        for upstream in upstreams:
            lineage.record_steplog(records[upstream])
            lineage.add_data_sources(records[upstream].get("data_sources") or {})
        for entry in record["outputs"]:
            output = {k: v for k, v in entry.items() if k != "name"}
            sidecars.append(str(lineage.save_sidecar(entry["path"], output=output)))
        trackers.append(lineage)
        if (job + 1) % 1000 == 0:
            report(f"provenance: {job + 1}/{len(records)} step logs merged")
    if run_record is not None:
        run = tracker(run_hash, expected_versions)
        for record in records:
            run.add_data_sources(record.get("data_sources") or {})
        for job in graph.order:
            run.record_steplog(records[job])
        run.save_run_record(run_record, [e for r in records for e in r["outputs"]])
        trackers.append(run)
    if store is not None:
        ProvenanceTracker.save_many_to_store(store, trackers)
    history_run = None
    if history is not None:
        from usher_pipeline.history.record import record_run

        history_run = record_run(
            records,
            history,
            pipeline_version=pipeline_version,
            provenance_run_id=run_id,
            expected_versions=expected_versions,
            progress=report,
        )["run_id"]
    # The jobs of these step logs are finished: their fetch batches are needed no more.
    dropped = drop_batches(e["path"] for r in records for e in r["outputs"] if e.get("table"))
    seconds = time.monotonic() - started
    report(
        f"provenance: merged {len(records)} step logs into {len(sidecars)} sidecars "
        f"in {seconds:.2f} s (run {run_id})"
        + (f"; removed {dropped} fetch batch files" if dropped else "")
    )
    return {
        "run_id": run_id,
        "steplogs": len(records),
        "sidecars": sidecars,
        "seconds": seconds,
        "batches_dropped": dropped,
        "history_run": history_run,
    }


__all__ = ["Lineage", "add_ingested_fingerprints", "merge_provenance", "step_label"]
