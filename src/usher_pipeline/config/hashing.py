"""The config hashes: of the slice a job used, of the jobs behind an output, of a whole config.

- `slice_hash(params)`: a job's config slice, the settings it receives as `params:` (the
  step log's `config_slice_hash` and the `_checkpoints.config_hash` of the table it saves).
- `jobs_config_hash(step_logs)`: the slices of a set of jobs, by step name: a sidecar's
  `config_hash` (the jobs of its output's lineage) and the run record's (every job of the
  run). A key that no job receives is in no slice, so adding one changes no hash and reruns
  nothing.
- `config_hash(config)`: a whole config without what says where files sit and how data are
  fetched or stored, for a config used outside a workflow (`PipelineConfig.config_hash`).

Two outputs with the same hash were computed with the same settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from usher_pipeline.hashing import sha256_json
from usher_pipeline.lineage import step_label

#: Settings of a whole config that do not change results: paths, the workflow's name, store,
#: API calls, and the demo's fetch batching and HPO folder. Keys starting with `_` are left
#: out too (the workflow's own state, such as the run's identity and the table registry).
UNHASHED: Final = (
    "data_dir",
    "cache_dir",
    "duckdb_path",
    "results_dir",
    "logs_dir",
    "workflow_name",
    "store",
    "api",
    "demo.fetch",
    "demo.hpo_data_dir",
)


def config_hash(config: Mapping[str, Any], exclude: Iterable[str] = ()) -> str:
    """SHA-256 of the canonical JSON of `config` without UNHASHED, `_` keys and `exclude`.

    `exclude` names further dotted paths (`section.key`) of a workflow's own settings that do
    not change results; a path that is not in `config` is ignored.
    """
    kept = {key: value for key, value in config.items() if not str(key).startswith("_")}
    for dotted in (*UNHASHED, *exclude):
        kept = _without(kept, dotted.split("."))
    return sha256_json(kept)


def slice_hash(params: Mapping[str, Any]) -> str:
    """The hash of a job's config slice: SHA-256 of the canonical JSON of its params (the
    JSON-able form a step log records)."""
    return sha256_json(dict(params))


def job_slice_hash(record: Mapping[str, Any]) -> str:
    """The slice hash a step log records; for a step log without one, that of its params (a
    job with no params has the slice `{}`)."""
    recorded = record.get("config_slice_hash")
    if isinstance(recorded, str) and recorded:
        return recorded
    return slice_hash(record.get("params") or {})


def jobs_config_hash(records: Iterable[Mapping[str, Any]]) -> str:
    """The hash of the config slices of a set of jobs, from their step logs: SHA-256 of the
    canonical JSON of the sorted `[step name, slice hash]` pairs (the step name as in
    `processing_steps`, `rule[wildcard=value]`). The order of the step logs does not count."""
    return sha256_json(sorted([step_label(record), job_slice_hash(record)] for record in records))


def _without(section: Mapping[str, Any], path: list[str]) -> dict[str, Any]:
    """A copy of `section` without the value at `path` (copying only the sections on it)."""
    head, *rest = path
    copy = dict(section)
    if head not in copy:
        return copy
    if not rest:
        del copy[head]
    elif isinstance(copy[head], Mapping):
        copy[head] = _without(copy[head], rest)
    return copy
