"""The report's "Changes since the previous run" page, from a run diff.

The diff is the JSON that `usher-pipeline diff --format json` prints (`RunDiff.as_json()`):
config keys, data-source, software and input versions, and per changed table its counts,
transitions of categorical columns and sample rows. The page is one self-contained HTML
file (its style inline, the lineage picture by an address the caller gives,
a `data:` URI in the report); every value from
the diff is escaped, and values are shown as JSON (a string in quotes, a number bare), so
that `"0.5"` and `0.5` do not look alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any, Final

from usher_pipeline._io import write_text_atomic
from usher_pipeline.history.diff import headline

TITLE: Final = "Changes since the previous run"
NO_PREVIOUS: Final = (
    "This is the first recorded run, so there is no previous run to compare it with."
)
_SHOWN_LABELS: Final = 12  # labels listed per transition

_STYLE = """
body { font-family: sans-serif; font-size: 14px; margin: 1em; }
table { border-collapse: collapse; margin-bottom: 1.2em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
code, td.v { font-family: monospace; font-size: 12px; }
p.headline { font-weight: bold; }
section.table { border-left: 4px solid #f4a03c; padding-left: 0.8em; margin-bottom: 1.5em; }
img { max-width: 100%; }
"""


def _value(value: Any) -> str:
    """A value as JSON text, escaped for HTML."""
    try:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(value)
    return escape(text)


def _text(value: Any) -> str:
    return escape(str(value))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table of already escaped cells."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _config(entries: Sequence[Mapping[str, Any]]) -> str:
    if not entries:
        return "<p>No config key changed.</p>"
    rows = []
    for entry in entries:
        change = str(entry.get("change") or "changed")
        old = "(not set)" if change == "added" else _value(entry.get("old"))
        new = "(not set)" if change == "removed" else _value(entry.get("new"))
        rows.append([f"<code>{_text(entry.get('key'))}</code>", old, new])
    return _table(["config key", "previous run", "this run"], rows)


def _versions(title: str, entries: Sequence[Mapping[str, Any]], name: str) -> str:
    if not entries:
        return ""
    rows = [
        [
            f"<code>{_text(entry.get(name))}</code>",
            _versioned(entry.get("old")),
            _versioned(entry.get("new")),
        ]
        for entry in entries
    ]
    return f"<h3>{escape(title)}</h3>" + _table([name, "previous run", "this run"], rows)


def _versioned(value: Any) -> str:
    return "(none)" if value is None else f"<code>{_text(value)}</code>"


def _transitions(entry: Mapping[str, Any]) -> str:
    moves = entry.get("transitions") or []
    if not moves:
        return ""
    noun = str(entry.get("noun") or "rows")
    rows = []
    for move in moves:
        labels = [str(label) for label in move.get("labels") or []]
        keys = move.get("keys") or []
        named = labels or [", ".join(str(part) for part in key) for key in keys]
        listed = ", ".join(named[:_SHOWN_LABELS])
        count = int(move.get("rows") or 0)
        if count > len(named[:_SHOWN_LABELS]) and named:
            listed += f", ... ({count - len(named[:_SHOWN_LABELS])} more)"
        rows.append(
            [
                f"<code>{_text(move.get('column'))}</code>",
                f"{_value(move.get('old'))} &rarr; {_value(move.get('new'))}",
                str(count),
                _text(listed),
            ]
        )
    return _table(["column", "previous \u2192 this run", noun, "which"], rows)


def _changed_samples(samples: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for sample in samples:
        key = sample.get("key") or {}
        who = ", ".join(f"{k}={_value(v)}" for k, v in key.items())
        if sample.get("label") is not None:
            who = f"<b>{_text(sample['label'])}</b> ({who})"
        old, new = sample.get("old") or {}, sample.get("new") or {}
        changes = "<br>".join(
            f"<code>{_text(column)}</code>: {_value(old.get(column))} &rarr; "
            f"{_value(new.get(column))}"
            for column in sorted(set(old) | set(new))
        )
        rows.append([who, changes])
    return _table(["row", "changed values"], rows) if rows else ""


def _row_samples(title: str, rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    columns = list(dict.fromkeys(column for row in rows for column in row))
    cells = [[_value(row.get(column)) for column in columns] for row in rows]
    return f"<p>{escape(title)}</p>" + _table(columns, cells)


def _table_section(entry: Mapping[str, Any]) -> str:
    parts = [
        f'<section class="table"><h3><code>{_text(entry.get("table"))}</code></h3>',
        f'<p class="headline">{_text(headline(entry))}</p>',
    ]
    for cause in entry.get("why") or []:
        parts.append(f"<p>Why: {_text(cause)}.</p>")
    if entry.get("status") == "changed":
        key = ", ".join(str(k) for k in entry.get("key") or []) or "(whole row)"
        parts.append(
            f"<p>{_text(entry.get('rows_old'))} &rarr; {_text(entry.get('rows_new'))} rows, "
            f"compared by <code>{_text(key)}</code> ({_text(entry.get('key_source'))}).</p>"
        )
        columns = entry.get("changed_columns") or []
        if columns:
            listed = ", ".join(f"<code>{_text(c)}</code> ({_text(n)})" for c, n in columns)
            parts.append(f"<p>Changed columns (rows): {listed}.</p>")
        parts.append(_transitions(entry))
        samples = entry.get("samples") or {}
        parts.append(_changed_samples(samples.get("changed") or []))
        parts.append(_row_samples("Added rows (sample):", samples.get("added") or []))
        parts.append(_row_samples("Removed rows (sample):", samples.get("removed") or []))
    parts.append("</section>")
    return "".join(parts)


def _run_line(diff: Mapping[str, Any]) -> str:
    old, new = diff.get("old") or {}, diff.get("new") or {}
    return (
        f"<p>This run <code>{_text(new.get('run_id'))}</code> (ended {_text(new.get('ended_at'))})"
        f" compared with the previous run <code>{_text(old.get('run_id'))}</code> (ended "
        f"{_text(old.get('ended_at'))}).</p>"
    )


def render_changes(
    diff: Mapping[str, Any] | None, *, lineage_png: str | None = None, note: str | None = None
) -> str:
    """The page as HTML text (see `write_changes`)."""
    body = [f"<h1>{escape(TITLE)}</h1>"]
    if diff is None:
        body.append(f"<p>{escape(note or NO_PREVIOUS)}</p>")
    else:
        body.append(_run_line(diff))
        body.append("<h2>Config</h2>")
        body.append(_config(diff.get("config") or []))
        versions = "".join(
            [
                _versions("Data sources", diff.get("data_sources") or [], "name"),
                _versions("Software", diff.get("software") or [], "name"),
                _versions("Input files (sha256)", diff.get("inputs") or [], "path"),
                _versions("Workflow files (sha256)", diff.get("workflow_files") or [], "path"),
            ]
        )
        body.append("<h2>Versions and inputs</h2>")
        body.append(
            versions or "<p>No data source, software, input file or workflow file changed.</p>"
        )
        tables = diff.get("tables") or []
        body.append("<h2>Tables</h2>")
        if not tables:
            body.append("<p>No table changed.</p>")
        body.extend(_table_section(entry) for entry in tables)
        unchanged = diff.get("unchanged_tables") or []
        if unchanged:
            listed = ", ".join(f"<code>{_text(name)}</code>" for name in unchanged)
            body.append(f"<p>Unchanged ({len(unchanged)}): {listed}.</p>")
    if lineage_png is not None:
        body.append("<h2>Lineage of this run</h2>")
        body.append(f'<img src="{escape(lineage_png, quote=True)}" alt="lineage of this run">')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(TITLE)}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def write_changes(
    diff: Mapping[str, Any] | None,
    path: Path,
    *,
    lineage_png: str | None = None,
    note: str | None = None,
) -> Path:
    """Write the "Changes since the previous run" page for the Snakemake report to `path`:
    config keys old -> new, data-source, software and input changes, each changed table's
    headline, transitions (with labels) and sample rows, and the unchanged tables in one line.
    `diff` None (no previous run) writes a page that says so (or says `note`); `lineage_png` is
    the lineage picture's address (relative to the page, or a `data:image/png;base64,` URI
    that keeps the page self-contained), shown below it when given."""
    return write_text_atomic(path, render_changes(diff, lineage_png=lineage_png, note=note))
