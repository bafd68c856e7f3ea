"""What `usher-pipeline diff` knows of a registered table: its key, noun and label.

`USHER.register("gene_scores", key=["ncbi_gene_id"], noun="genes", label="gene_symbol")`
keeps them in the registry (plain JSON, in Snakemake's config), by table or by pattern.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

from usher_pipeline.errors import UsherError

KeySpec = str | Sequence[str] | Mapping[str, str | Sequence[str]] | None


class LayoutError(UsherError, ValueError):
    """A table, file or pattern that cannot be registered as given."""


def put_table_meta(
    registry: dict[str, Any],
    tables: Sequence[str],
    key: KeySpec,
    noun: str | None,
    label: str | None,
) -> None:
    """Keep the key, noun and label given to one `register()` call for each of its tables."""
    keys = key if isinstance(key, Mapping) else dict.fromkeys(tables, key)
    unknown = sorted(set(keys) - set(tables))
    if unknown:
        raise LayoutError(
            f"key= names {', '.join(map(repr, unknown))}, which this register() call does "
            "not register: give keys only for its own tables"
        )
    for text, what in ((noun, "noun"), (label, "label")):
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise LayoutError(f"{what}= must be a non-empty string, not {text!r}")
    for table in tables:
        columns = _key_columns(table, keys.get(table))
        if columns is None and noun is None and label is None:
            continue
        registry.setdefault("meta", {})[table] = {"key": columns, "noun": noun, "label": label}


def table_meta(registry: Mapping[str, Any], table: str) -> dict[str, Any]:
    """The key, noun and label registered for a concrete table, or for a pattern it matches."""
    meta: dict[str, dict[str, Any]] = registry.get("meta") or {}
    if table in meta:
        return dict(meta[table])
    for pattern, found in meta.items():
        if "{" in pattern and _matcher(pattern).fullmatch(table):
            return dict(found)
    return {"key": None, "noun": None, "label": None}


def _matcher(pattern: str) -> re.Pattern[str]:
    parts = []
    for literal, name, _spec, _conversion in string.Formatter().parse(pattern):
        parts.append(re.escape(literal))
        if name is not None:
            parts.append("[a-z0-9_]+")
    return re.compile("".join(parts))


def _key_columns(table: str, key: str | Sequence[str] | None) -> list[str] | None:
    """The key columns given for `table`, checked: None, or a non-empty list of names."""
    if key is None:
        return None
    columns = [key] if isinstance(key, str) else list(key)
    if not columns or not all(isinstance(c, str) and c for c in columns):
        raise LayoutError(
            f"key= of table {table!r} must name one or more columns, such as "
            f"key=['ncbi_gene_id'], not {key!r}"
        )
    if len(set(columns)) != len(columns):
        raise LayoutError(f"key= of table {table!r} names a column twice: {columns}")
    return columns
