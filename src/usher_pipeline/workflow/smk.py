"""Snakemake's containers (input, output, params, wildcards, log) as plain names and values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def named(container: Any) -> dict[str, Any]:
    """The named entries of a Snakemake container, in declaration order ({} for None)."""
    if container is None or not hasattr(container, "keys"):
        return {}
    return {str(name): container[name] for name in container.keys()}


def named_files(container: Any) -> list[tuple[str, str]]:
    """(name, path) of every file in a Snakemake container; a file of a list entry is named
    `<entry>[<i>]`, an unnamed one by its position."""
    names: dict[str, str] = {}
    for name, value in named(container).items():
        if isinstance(value, list | tuple):
            for j, sub in enumerate(value):
                names.setdefault(str(sub), f"{name}[{j}]")
        else:
            names.setdefault(str(value), name)
    return [(names.get(str(p), str(i)), str(p)) for i, p in enumerate(container or [])]


def jsonable(value: Any) -> Any:
    """`value` as plain JSON values (Snakemake's namedlists and paths included)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
