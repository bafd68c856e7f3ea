"""The graph of jobs a set of step logs describes, and the label of each job.

Each job's step log names its inputs and outputs by path, so the logs form a graph: an
output's lineage is the job that wrote it plus, transitively, the jobs that wrote its inputs.
The provenance merge, the exports and `verify` all read a run through this model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def path_key(path: str | Path) -> str:
    """The form under which step logs' paths are compared ('results/./x' is 'results/x')."""
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
                self.producer[path_key(entry["path"])] = index
        self.parents: list[list[int]] = []
        for index, record in enumerate(self.records):
            found = {self.producer.get(path_key(e["path"])) for e in record["inputs"]}
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

    def upstream_first(self) -> Lineage:
        """The same graph with its records listed in `order` (job n is `order[n]` here), so
        that its own order is 0, 1, 2...; built from this one, not from the records again."""
        index = self.position
        graph = Lineage([])
        graph.records = [self.records[job] for job in self.order]
        graph.producer = {path: index[job] for path, job in self.producer.items()}
        graph.parents = [sorted(index[p] for p in self.parents[job]) for job in self.order]
        graph.order = list(range(len(self.order)))
        graph.position = {job: job for job in graph.order}
        return graph


__all__ = ["Lineage", "path_key", "step_label"]
