"""How the `usher-pipeline` command shows things: the commands its hints name, tables fitted
to the terminal, a progress line on stderr, and the lineage tree of an output.

Kept apart from the commands so that they say what to show and this module how.
"""

from __future__ import annotations

import csv
import io
import json
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import polars as pl


@dataclass(frozen=True)
class Hints:
    """How messages spell the commands they suggest, so that each works pasted in the shell
    the user is in.

    `directory` is the workflow's working directory as the user gave it (`-C DIR`), None when
    the shell is in it; `usher_options` the options of `usher-pipeline` the user gave
    (`--db FILE`, ...); `snakemake_args` what `snakemake` needs to address the workflow from
    its working directory (the run manifest's `snakemake_args`).
    """

    directory: str | None = None
    usher_options: tuple[str, ...] = ()
    snakemake_args: tuple[str, ...] = ()

    def snakemake(self, *options: str, targets: Sequence[str] = ()) -> str:
        """A `snakemake` command (targets first: options such as --configfile take a list)."""
        words = ["snakemake", "--cores", "2", *targets, *self.snakemake_args, *options]
        command = shlex.join(words)
        return f"cd {shlex.quote(self.directory)} && {command}" if self.directory else command

    def forcerun(self, output: str | Path) -> str:
        """The command that reruns the one job that wrote `output` (and what depends on it)."""
        return self.snakemake("--forcerun", str(output))

    def usher(self, *arguments: str) -> str:
        """A `usher-pipeline` command on the same workflow."""
        where = ("-C", self.directory) if self.directory else ()
        return shlex.join(["usher-pipeline", *where, *self.usher_options, *arguments])


def terminal_width() -> int:
    """Columns of the terminal, 80 when there is none."""
    return max(40, shutil.get_terminal_size((80, 24)).columns)


def cell(value: object) -> str:
    """A value as the one-line text of a table cell."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.6g}"
    return " ".join(str(value).split())


def clip(text: str, width: int) -> str:
    """`text` cut to `width` characters, ending in `…` when something was cut."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    width: int | None = None,
    right: Sequence[int] = (),
    keep: Sequence[int] = (),
) -> str:
    """Rows as aligned columns that fit `width`; the widest columns are clipped first, the
    columns `keep` never."""
    limit = width or terminal_width()
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    gap = 2
    while sum(widths) + gap * (len(widths) - 1) > limit:
        clippable = [i for i in range(len(widths)) if i not in keep]
        if not clippable:
            break
        widest = max(clippable, key=widths.__getitem__)
        if widths[widest] <= 6:
            break
        widths[widest] -= 1

    def line(values: Sequence[str]) -> str:
        parts = []
        for i, value in enumerate(values):
            text = clip(value, widths[i])
            parts.append(text.rjust(widths[i]) if i in right else text.ljust(widths[i]))
        return (" " * gap).join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in cells)])


class Progress:
    """Progress on stderr: one self-overwriting line on a terminal, nothing otherwise.

    An instance is the `progress` callback that `audit` and the exports take.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.shown = False

    def __call__(self, message: str) -> None:
        if self.live:
            self.stream.write("\r" + clip(message, terminal_width() - 1) + "\033[K")
            self.stream.flush()
            self.shown = True

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.done()

    def done(self) -> None:
        """Erase the progress line."""
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


def lineage_lines(records: list[dict[str, Any]], start: int) -> list[str]:
    """An indented tree of job `start` and, below it, the jobs that made its inputs; an input
    no job made is a `file` leaf with its SHA-256."""
    from usher_pipeline.export.run import parse_time
    from usher_pipeline.lineage import Lineage, path_key, step_label

    graph = Lineage(records)
    lines: list[str] = []
    seen: set[int] = set()

    def describe(job: int) -> str:
        record = records[job]
        ended = parse_time(record.get("ended_at"))
        when = ended.strftime("%Y-%m-%d %H:%M:%S") if ended else "?"
        seconds = record.get("duration_seconds")
        rows = [e.get("rows") for e in record["outputs"] if e.get("table")]
        text = f"{step_label(record)}  {when}"
        if seconds is not None:
            text += f"  {float(seconds):.2f} s"
        if rows and rows[0] is not None:
            text += f"  {rows[0]} rows"
        return text

    def walk(job: int, prefix: str, last: bool, root: bool) -> None:
        branch = "" if root else ("└── " if last else "├── ")
        if job in seen:
            lines.append(f"{prefix}{branch}{step_label(records[job])}  (shown above)")
            return
        seen.add(job)
        lines.append(f"{prefix}{branch}{describe(job)}")
        below = prefix if root else prefix + ("    " if last else "│   ")
        parents = graph.parents[job]
        known = {path_key(e["path"]) for p in parents for e in records[p]["outputs"]}
        external = [e for e in records[job]["inputs"] if path_key(e["path"]) not in known]
        children: list[tuple[str, Any]] = [("job", p) for p in parents]
        children += [("file", e) for e in external]
        for n, (kind, item) in enumerate(children):
            is_last = n == len(children) - 1
            if kind == "job":
                walk(item, below, is_last, False)
            else:
                mark = "└── " if is_last else "├── "
                sha = (item.get("sha256") or "")[:12]
                lines.append(f"{below}{mark}file {Path(item['path']).name}  sha256 {sha}")

    walk(start, "", True, True)
    return lines


def print_frame(frame: pl.DataFrame, fmt: str, limit: int = 0) -> None:
    """Print a frame as JSON records, CSV, or a table of at most `limit` rows (0 = all) with
    its row count: the output formats of `query`, `show` and `diff --table`."""
    if fmt == "json":
        json.dump(frame.to_dicts(), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(frame.columns)
        writer.writerows(frame.rows())
        sys.stdout.write(buffer.getvalue())
    else:
        shown = frame.head(limit) if limit else frame
        numeric = [i for i, dtype in enumerate(frame.dtypes) if dtype.is_numeric()]
        print(format_table(frame.columns, shown.rows(), right=numeric))
        more = frame.height - shown.height
        tail = f" ({more} more not shown: raise --limit or use --format csv)" if more else ""
        print(f"{frame.height} rows{tail}")
