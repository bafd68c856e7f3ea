"""Merge step logs into provenance sidecars, a run-level record and `_provenance` rows.

Each job's step log names its inputs and outputs by path, so the logs form a graph: an
output's lineage is the job that wrote it plus, transitively, the jobs that wrote its inputs.
A sidecar carries the step logs of that whole lineage, upstream first.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usher_pipeline._io import write_json_atomic
from usher_pipeline.hashing import sha256_json
from usher_pipeline.persistence.provenance import sidecar_path, utc_now
from usher_pipeline.workflow.ingest import ingested_fingerprints
from usher_pipeline.workflow.steplog import load_steplog

if TYPE_CHECKING:
    from usher_pipeline.persistence.duckdb_store import PipelineStore

log = logging.getLogger("usher_pipeline.merge")


def _key(path: str | Path) -> str:
    return os.path.normpath(str(path))


def step_label(record: Mapping[str, Any]) -> str:
    """'evidence[layer=hearing]' for a job of rule evidence with that wildcard."""
    wildcards = record.get("wildcards") or {}
    if not wildcards:
        return str(record["rule"])
    inner = ",".join(f"{k}={v}" for k, v in sorted(wildcards.items()))
    return f"{record['rule']}[{inner}]"


class Lineage:
    """The graph of jobs described by a set of step logs."""

    def __init__(self, records: Sequence[dict[str, Any]]) -> None:
        self.records = list(records)
        self.producer: dict[str, int] = {}
        for index, record in enumerate(self.records):
            for entry in record["outputs"]:
                self.producer[_key(entry["path"])] = index
        self.parents: list[list[int]] = []
        for index, record in enumerate(self.records):
            found = {self.producer.get(_key(e["path"])) for e in record["inputs"]}
            self.parents.append(sorted(p for p in found if p is not None and p != index))
        self.order = self._topological_order()
        self.position = {job: n for n, job in enumerate(self.order)}
        self._ancestors: dict[int, frozenset[int]] = {}

    def _topological_order(self) -> list[int]:
        done: set[int] = set()
        order: list[int] = []
        for start in sorted(range(len(self.records)), key=lambda i: self.records[i]["ended_at"]):
            stack: list[tuple[int, int]] = [(start, 0)]
            while stack:
                node, child = stack.pop()
                if node in done and child == 0:
                    continue
                parents = self.parents[node]
                if child < len(parents):
                    stack.append((node, child + 1))
                    if parents[child] not in done:
                        stack.append((parents[child], 0))
                elif node not in done:
                    done.add(node)
                    order.append(node)
        return order

    def ancestors(self, job: int) -> frozenset[int]:
        """Every job upstream of `job`, itself included."""
        # parents come first in the order, so the memo is filled by walking it once, resuming
        # where the previous call stopped (linear in the number of jobs over all calls)
        while job not in self._ancestors:
            node = self.order[len(self._ancestors)]
            found = {node}
            for parent in self.parents[node]:
                found |= self._ancestors[parent]
            self._ancestors[node] = frozenset(found)
        return self._ancestors[job]

    def lineage(self, job: int) -> list[int]:
        """Jobs of `job`'s lineage, upstream first."""
        return sorted(self.ancestors(job), key=self.position.__getitem__)


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
                digest, fingerprint = fingerprints.get(_key(entry["path"]), (None, None))
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
