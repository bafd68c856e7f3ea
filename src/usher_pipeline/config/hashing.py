"""The config hash: one definition for the demo's model and for any workflow's raw config.

Two outputs with the same hash were computed with the same settings. The hash leaves out
what says where files sit and how data are fetched or stored, so a moved run is the same run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from usher_pipeline.hashing import sha256_json

#: Settings of the library's config that do not change results: paths, store, API calls,
#: and the demo's fetch batching and HPO folder. Keys starting with `_` are left out too
#: (the workflow's own state, such as the run's identity and the table registry).
UNHASHED: Final = (
    "data_dir",
    "cache_dir",
    "duckdb_path",
    "results_dir",
    "logs_dir",
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
