"""A one-page HTML provenance summary of a run, for `snakemake --report`.

It shows what a reviewer asks first: which software versions ran, under which config hash,
on which data releases, and each job with its timings and the rows it produced. It is built
from the run-level record `<results>/provenance.json` that the provenance rule writes.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from html import escape
from pathlib import Path
from typing import Any

from usher_pipeline._io import read_json, write_text_atomic
from usher_pipeline.errors import UsherError
from usher_pipeline.export.run import parse_time, software_versions
from usher_pipeline.lineage import step_label

_STYLE = """
body { font-family: sans-serif; font-size: 14px; margin: 1em; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 12px; }
"""


def _table(
    headers: list[str], rows: list[list[Any]], numeric: AbstractSet[int] = frozenset()
) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="n">{escape(str(v))}</td>' if i in numeric else f"<td>{escape(str(v))}</td>"
            for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def summary_rows(run: dict[str, Any]) -> list[list[Any]]:
    """One row per job: step, rule, start, end, seconds, rows out, host."""
    rows = []
    for step in run.get("processing_steps", []):
        record = step["details"]
        started = parse_time(record.get("started_at"))
        ended = parse_time(record.get("ended_at"))
        tables = [e for e in record["outputs"] if e.get("table")]
        out_rows = sum(int(e.get("rows") or 0) for e in tables)
        rows.append(
            [
                step_label(record),
                record["rule"],
                started.strftime("%Y-%m-%d %H:%M:%S") if started else "",
                ended.strftime("%H:%M:%S") if ended else "",
                f"{float(record.get('duration_seconds') or 0):.2f}",
                out_rows,
                ", ".join(str(e.get("table")) for e in tables),
                record.get("host") or "",
            ]
        )
    return rows


def render_summary(run: dict[str, Any]) -> str:
    """The provenance summary of a run record as a standalone HTML page."""
    software = software_versions(s["details"] for s in run.get("processing_steps", []))
    sources = run.get("data_source_versions") or {}
    jobs = summary_rows(run)
    total = sum(float(r[4]) for r in jobs)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Provenance summary</title><style>{_STYLE}</style></head><body>",
        "<h1>Provenance summary</h1>",
        _table(
            ["item", "value"],
            [
                ["pipeline version", run.get("pipeline_version", "")],
                ["config hash", run.get("config_hash", "")],
                ["run id", run.get("run_id", "")],
                ["merged at", run.get("created_at", "")],
                ["jobs", len(jobs)],
                ["job time (sum)", f"{total:.2f} s"],
            ],
        ),
        "<h2>Software</h2>",
        _table(["software", "version"], [[k, v] for k, v in sorted(software.items())]),
        "<h2>Data sources</h2>",
        _table(["source", "version"], [[k, v] for k, v in sorted(sources.items())]),
        "<h2>Steps</h2>",
        _table(
            ["step", "rule", "started (UTC)", "ended", "seconds", "rows out", "tables", "host"],
            jobs,
            numeric={4, 5},
        ),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_summary(run_record: str | Path, target: str | Path) -> Path:
    """Write the HTML provenance summary of `run_record` (results/provenance.json)."""
    try:
        run = read_json(run_record)
    except (OSError, ValueError) as exc:
        raise UsherError(
            f"run record {run_record} cannot be read ({exc}): rerun the provenance rule"
        ) from None
    return write_text_atomic(target, render_summary(run))
