"""What changed between two run records, short of the rows: config keys as dotted paths,
data-source, software and input-file versions."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

_MISSING = object()


def plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as plain JSON values (YAML dates and other scalars as their text), so that a
    run record compares equal to itself after it is read back."""
    loaded: dict[str, Any] = json.loads(json.dumps(dict(config), default=str, sort_keys=True))
    return loaded


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted paths -> values; a list or scalar is one value, and an empty
    mapping is kept as the value `{}`."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _same(old: Any, new: Any) -> bool:
    """Equal as config values: 1 and 1.0 are one value, True and 1 are not, NaN equals NaN."""
    if isinstance(old, bool) or isinstance(new, bool):
        return type(old) is type(new) and old == new
    if isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new):
        return True
    return bool(old == new)


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every dotted config key whose value differs: {"key", "old", "new", "change"} with
    change "changed", "added" or "removed" (old or new is then None), sorted by key."""
    before, after = flatten(old), flatten(new)
    found = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key, _MISSING), after.get(key, _MISSING)
        if a is not _MISSING and b is not _MISSING and _same(a, b):
            continue
        change = "added" if a is _MISSING else "removed" if b is _MISSING else "changed"
        found.append(
            {
                "key": key,
                "old": None if a is _MISSING else a,
                "new": None if b is _MISSING else b,
                "change": change,
            }
        )
    return found


def version_changes(
    old: Mapping[str, Any] | None, new: Mapping[str, Any] | None, *, name: str = "name"
) -> list[dict[str, Any]]:
    """Entries of two flat mappings (name -> version or digest) that differ, sorted."""
    before, after = dict(old or {}), dict(new or {})
    return [
        {name: key, "old": before.get(key), "new": after.get(key)}
        for key in sorted(set(before) | set(after))
        if before.get(key, _MISSING) != after.get(key, _MISSING)
    ]


def changed_names(
    old: Mapping[str, Any] | None, new: Mapping[str, Any] | None, previous: object
) -> list[str]:
    """The names whose value differs; none for a first run (`previous` None)."""
    if previous is None:
        return []
    return [entry["name"] for entry in version_changes(old, new)]
