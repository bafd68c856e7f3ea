"""The run history commands of `usher-pipeline`: runs, diff, history, show and gc.

    usher-pipeline runs                        the kept runs, newest first, and what each changed
    usher-pipeline diff [A] [B]                what changed from run A to run B (default: the
                                               last two), down to the rows of each table
    usher-pipeline history TABLE               the versions of one table across the kept runs
    usher-pipeline show TABLE --run R          one version of a table
    usher-pipeline gc                          drop the runs the retention does not keep

A run is named by its id (or a unique prefix), `latest`, `latest~N`, or a date.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usher_pipeline.cli_render import Progress, cell, format_table, print_frame
from usher_pipeline.errors import UsherError

if TYPE_CHECKING:
    from usher_pipeline.cli import Settings
    from usher_pipeline.history.store import History

AddCommand = Callable[[str, Callable[..., int], str], argparse.ArgumentParser]
SHOWN_PER_TRANSITION = 10


class HistoryCommandError(UsherError):
    """A history command that cannot do what was asked."""


def _history(settings: Settings) -> History:
    from usher_pipeline.history.store import History

    return History(settings.results)


def _when(text: str) -> str:
    """A run record's time as `2026-12-02 04:24:59Z`."""
    return text.replace("T", " ")[:19] + "Z" if text else ""


def _took(run: Mapping[str, Any]) -> str:
    from usher_pipeline.history.store import parse_time

    seconds = (parse_time(run["ended_at"]) - parse_time(run["started_at"])).total_seconds()
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _names(names: Sequence[str], most: int = 3) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def run_summary(run: Mapping[str, Any]) -> str:
    """One line on what a run changed since the run before it."""
    if run.get("previous_run") is None:
        return f"first run: {len(run['tables'])} tables"
    changed = run.get("changed") or {}
    parts = []
    for key, what in (
        ("config", "config"),
        ("data_sources", "data"),
        ("software", "software"),
        ("inputs", "inputs"),
        ("workflow_files", "workflow files"),
    ):
        if changed.get(key):
            parts.append(f"{what} {_names(changed[key])}")
    tables = changed.get("tables") or []
    parts.append(
        f"{len(tables)} tables changed ({_names(tables)})" if tables else "no table changed"
    )
    return "; ".join(parts)


# -- runs ----------------------------------------------------------------------------------


def cmd_runs(args: argparse.Namespace, settings: Settings) -> int:
    """List the kept runs, newest first."""
    runs = list(reversed(_history(settings).runs()))
    if not runs:
        raise HistoryCommandError(
            f"no run is recorded in {settings.results}/history: run the workflow "
            f"(`{settings.hints.snakemake()}`); its provenance rule records each run"
        )
    rows = [
        {
            "run": run["run_id"],
            "ended": _when(run["ended_at"]),
            "took": _took(run),
            "by": f"{run.get('user')}@{run.get('host')}",
            "changes": run_summary(run),
        }
        for run in runs
    ]
    _print_rows(rows, args.format, keep=(0, 1, 2, 3))
    return 0


def _print_rows(rows: list[dict[str, Any]], fmt: str, keep: Sequence[int] = ()) -> None:
    if fmt == "json":
        json.dump(rows, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        sys.stdout.write(buffer.getvalue())
    else:
        cells = [list(map(cell, r.values())) for r in rows]
        width = None if sys.stdout.isatty() else 10_000  # a pipe gets whole cells
        print(format_table(list(rows[0]), cells, width=width, keep=keep))


# -- diff ----------------------------------------------------------------------------------


def _two_runs(history: History, refs: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    if len(refs) > 2:
        raise HistoryCommandError(f"diff takes two runs at most, not {len(refs)}: diff A B")
    if len(history.run_ids()) < 2 and len(refs) < 2:
        kept = len(history.run_ids())
        raise HistoryCommandError(
            f"diff needs two runs and {kept} {'is' if kept == 1 else 'are'} kept: run the "
            "workflow again after a change, or name two runs"
        )
    old = history.resolve(refs[0] if refs else "latest~1")
    new = history.resolve(refs[1] if len(refs) > 1 else "latest")
    return old, new


def cmd_diff(args: argparse.Namespace, settings: Settings) -> int:
    """What changed between two runs."""
    from usher_pipeline.history.diff import diff_runs

    history = _history(settings)
    old, new = _two_runs(history, args.runs)
    if args.table:
        return _diff_one_table(history, old, new, args)
    with Progress() as progress:
        diff = diff_runs(history, old, new, progress=progress)
    data = diff.as_json()
    if args.format == "json":
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif args.format == "csv":
        _diff_csv(data)
    else:
        for line in diff_lines(data, settings):
            print(line)
    return 0


def _diff_one_table(
    history: History, old: Mapping[str, Any], new: Mapping[str, Any], args: argparse.Namespace
) -> int:
    import polars as pl

    from usher_pipeline.persistence.tablediff import diff_rows

    table = args.table
    if table not in old["tables"] and table not in new["tables"]:
        history.versions(table)  # names the kept tables, or says no run saved it
        raise HistoryCommandError(
            f"neither run {old['run_id']} nor {new['run_id']} has table {table}: "
            f"`usher-pipeline history {table}` lists the runs that do"
        )
    if table not in old["tables"] or table not in new["tables"]:
        run = new if table in new["tables"] else old
        frame = pl.read_parquet(history.version_file(run, table))
        change = "added" if run is new else "removed"
        frame = frame.select(pl.lit(change).alias("change"), pl.all())
    elif old["tables"][table]["fingerprint"] == new["tables"][table]["fingerprint"]:
        frame = pl.DataFrame({"change": []}, schema={"change": pl.String})
    else:
        entry = new["tables"][table]
        frame = diff_rows(
            history.version_file(old, table),
            history.version_file(new, table),
            table=table,
            key=entry.get("key") or old["tables"][table].get("key"),
            label=entry.get("label"),
        )
    if args.format == "table":
        print(f"{table}: run {old['run_id']} -> {new['run_id']}")
    print_frame(frame, args.format, args.limit)
    return 0


def _diff_csv(data: Mapping[str, Any]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["section", "item", "old", "new", "added", "removed", "changed"])
    for entry in data["config"]:
        writer.writerow(["config", entry["key"], _text(entry["old"]), _text(entry["new"])])
    for section, name in (
        ("data_sources", "name"),
        ("software", "name"),
        ("inputs", "path"),
        ("workflow_files", "path"),
    ):
        for entry in data[section]:
            writer.writerow([section, entry[name], entry["old"], entry["new"]])
    for entry in data["tables"]:
        writer.writerow(
            [
                "table",
                entry["table"],
                entry.get("rows_old"),
                entry.get("rows_new"),
                entry.get("added", ""),
                entry.get("removed", ""),
                entry.get("changed", ""),
            ]
        )
    for table in data["unchanged_tables"]:
        writer.writerow(["table", table, "", "", 0, 0, 0])
    sys.stdout.write(buffer.getvalue())


def _text(value: Any) -> str:
    """A config value as the YAML/JSON a user would write."""
    return json.dumps(value, default=str) if not isinstance(value, str) else value


def diff_lines(data: Mapping[str, Any], settings: Settings | None = None) -> list[str]:
    """The diff as lines of text: config, versions and inputs, then each table."""
    from usher_pipeline.history.diff import headline

    old, new = data["old"], data["new"]
    lines = [f"diff {old['run_id']} -> {new['run_id']}"]
    lines.append("config" + ("" if data["config"] else ": unchanged"))
    for entry in data["config"]:
        lines.append(f"  {entry['key']}: {_text(entry['old'])} -> {_text(entry['new'])}")
    for section, title, name in (
        ("data_sources", "data sources", "name"),
        ("software", "software", "name"),
        ("inputs", "input files", "path"),
        ("workflow_files", "workflow files", "path"),
    ):
        entries = data[section]
        lines.append(title + ("" if entries else ": unchanged"))
        for entry in entries:
            old_value, new_value = entry["old"], entry["new"]
            if section in ("inputs", "workflow_files"):
                old_value = (old_value or "none")[:12]
                new_value = (new_value or "none")[:12]
            lines.append(f"  {entry[name]}: {old_value} -> {new_value}")
    tables = data["tables"]
    lines.append(f"tables: {len(tables)} changed, {len(data['unchanged_tables'])} unchanged")
    for entry in tables:
        lines.append("  " + headline(entry))
        lines.extend(f"    why: {cause}" for cause in entry.get("why") or [])
        lines.extend("    " + line for line in _table_detail(entry))
    if data["unchanged_tables"]:
        lines.append("  unchanged: " + ", ".join(data["unchanged_tables"]))
    if tables:
        hint = settings.hints.usher("diff", "--table", "TABLE") if settings else "diff --table"
        lines.append(f"every changed row of one table: {hint}")
    return lines


def _table_detail(entry: Mapping[str, Any]) -> list[str]:
    """The transitions with their rows (labels), then a few sample changes."""
    lines = []
    for move in entry.get("transitions") or []:
        labels = [str(x) for x in move.get("labels") or []] or [
            ", ".join(map(str, k)) for k in move.get("keys") or []
        ]
        shown = ", ".join(labels[:SHOWN_PER_TRANSITION])
        more = int(move["rows"]) - min(len(labels), SHOWN_PER_TRANSITION)
        tail = f" and {more} more" if more > 0 else ""
        lines.append(
            f"{move['column']} {move['old']} -> {move['new']} ({move['rows']}): {shown}{tail}"
        )
    samples = entry.get("samples") or {}
    for change in (samples.get("changed") or [])[:3]:
        who = change.get("label") or ", ".join(f"{k}={v}" for k, v in change["key"].items())
        moved = ", ".join(
            f"{column} {cell(change['old'].get(column))} -> {cell(value)}"
            for column, value in list(change["new"].items())[:4]
        )
        lines.append(f"e.g. {who}: {moved}")
    label, key = entry.get("label"), entry.get("key") or []
    for kind in ("added", "removed"):
        rows = samples.get(kind) or []
        if rows:
            names = [_row_name(row, label, key) for row in rows[:5]]
            dots = " ..." if int(entry.get(kind) or 0) > len(names) else ""
            lines.append(f"{kind}: {', '.join(names)}{dots}")
    return lines


def _row_name(row: Mapping[str, Any], label: str | None, key: Sequence[str]) -> str:
    """A sample row by its label, else its key, else its values (a whole-row diff)."""
    if label and label in row:
        return cell(row[label])
    if key:
        return ", ".join(cell(row.get(k)) for k in key)
    return "(" + ", ".join(cell(v) for v in row.values()) + ")"


# -- history and show ----------------------------------------------------------------------


def cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    """The versions of one table across the kept runs, newest first."""
    history = _history(settings)
    found = history.versions(args.table)
    numbers: dict[str, int] = {}
    rows = []
    for run, entry in found:
        numbers.setdefault(entry["fingerprint"], len(numbers) + 1)
        rows.append(
            {
                "run": run["run_id"],
                "ended": _when(run["ended_at"]),
                "version": f"v{numbers[entry['fingerprint']]}",
                "rows": entry.get("rows"),
                "fingerprint": entry["fingerprint"],
                "changed": "yes" if entry.get("changed") else "",
                "file": _shown_path(history.root / entry["object"]),
            }
        )
    rows.reverse()
    if args.format == "table":
        for row in rows:
            row["fingerprint"] = str(row["fingerprint"])[4:16]
    _print_rows(rows, args.format, keep=(0, 1, 2, 3, 5, 6))
    if args.format == "table":
        print(
            f"{len(numbers)} versions in {len(rows)} runs; read one with "
            f"`{settings.hints.usher('show', args.table, '--run', 'RUN')}`"
        )
    return 0


def _shown_path(path: Path) -> str:
    """A path relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    """One version of a table, as `query` prints results."""
    from usher_pipeline.persistence.tablediff import load_version

    history = _history(settings)
    history.versions(args.table)  # one line when no kept run has the table
    run = history.resolve(args.run)
    frame = load_version(history.version_file(run, args.table))
    print_frame(frame, args.format, args.limit)
    return 0


# -- gc ------------------------------------------------------------------------------------


def _size(count: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)


def cmd_gc(args: argparse.Namespace, settings: Settings) -> int:
    """Remove the runs the retention does not keep and the table versions only they named."""
    from usher_pipeline.config.library import HistoryConfig, validate_library_config
    from usher_pipeline.config.loader import read_config_file

    retention = HistoryConfig()
    if settings.config is not None and settings.config.is_file():
        config = read_config_file(settings.config)
        retention = validate_library_config(config, [settings.config]).history
    keep_runs = args.keep_runs if args.keep_runs is not None else retention.keep_runs
    keep_days = args.keep_days if args.keep_days is not None else retention.keep_days
    history = _history(settings)
    report = history.gc(keep_runs=keep_runs, keep_days=keep_days, dry_run=args.dry_run)
    verb = "would remove" if report.dry_run else "removed"
    rule = ", ".join(
        part
        for part in (
            f"the last {keep_runs} runs" if keep_runs is not None else "",
            f"runs of the last {keep_days:g} days" if keep_days is not None else "",
        )
        if part
    )
    print(
        f"gc: {verb} {len(report.runs_removed)} runs and {report.objects_removed} table "
        f"versions, {'would free' if report.dry_run else 'freed'} {_size(report.bytes_freed)}; "
        f"kept {report.runs_kept} runs ({rule or 'every run'})"
        + (
            f"; {report.shared_kept} of those versions are current tables, so they free nothing"
            if report.shared_kept
            else ""
        )
    )
    for run_id in report.runs_removed:
        print(f"  {run_id}")
    own, shared = history.disk_usage()
    print(
        f"history now holds {_size(own)} of earlier versions "
        f"({_size(shared)} shared with current tables)"
    )
    return 0


def _at_least_one(text: str) -> int:
    """--keep-runs: a whole number of runs, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of runs") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: keep at least 1 run (the latest always is)")
    return value


def _positive_days(text: str) -> float:
    """--keep-days: a number of days above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: give a number of days above 0")
    return value


def add_history_commands(add: AddCommand) -> None:
    """Register the history commands with the `usher-pipeline` parser."""
    formats = ["table", "csv", "json"]
    runs = add("runs", cmd_runs, "list the kept runs, newest first, and what each changed")
    runs.add_argument("--format", choices=formats, default="table")
    diff = add("diff", cmd_diff, "show what changed between two runs, down to the rows")
    diff.add_argument(
        "runs",
        nargs="*",
        metavar="RUN",
        help="old and new run: an id, latest, latest~N or a date (default: latest~1 latest)",
    )
    diff.add_argument("--table", metavar="TABLE", help="list every changed row of one table")
    diff.add_argument("--format", choices=formats, default="table")
    diff.add_argument(
        "--limit", type=int, default=0, help="rows shown with --table (default 0 = all)"
    )
    table = add("history", cmd_history, "list the versions of one table across the kept runs")
    table.add_argument("table", metavar="TABLE")
    table.add_argument("--format", choices=formats, default="table")
    show = add("show", cmd_show, "print one version of a table")
    show.add_argument("table", metavar="TABLE")
    show.add_argument("--run", default="latest", help="the run (default latest)")
    show.add_argument("--format", choices=formats, default="table")
    show.add_argument("--limit", type=int, default=50, help="rows shown as a table (0 = all)")
    gc = add("gc", cmd_gc, "remove the runs the retention does not keep; report what it frees")
    gc.add_argument("--keep-runs", type=_at_least_one, metavar="N", help="keep the last N runs")
    gc.add_argument(
        "--keep-days", type=_positive_days, metavar="D", help="keep runs younger than D days"
    )
    gc.add_argument("--dry-run", action="store_true", help="report only; remove nothing")
