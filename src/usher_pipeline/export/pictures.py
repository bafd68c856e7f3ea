"""Pictures for the Snakemake report: a run's lineage graph and the demo's score distribution.

Both are drawn with matplotlib's Agg backend (no screen needed) into PNG files, written
atomically. The lineage graph is laid out here, without a graph library: each table sits in
the column of its longest path from a table with no upstream table, columns run left to right,
and the tables of a column are ordered by the mean position of their upstream tables (a few
sweeps of the barycenter heuristic) so that edges cross less. Box sizes are fixed in inches
and the figure grows with the number of columns and the tallest column, so that the text
stays the same size at 10 tables and at 60.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from usher_pipeline._io import atomic_path
from usher_pipeline.errors import UsherError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CHANGED_COLOR: Final = "#f4a03c"  # face of a table whose content changed since the previous run
UNCHANGED_COLOR: Final = "#dce8f5"
CHANGED_LEGEND: Final = "changed since the previous run"
EDGE_COLOR: Final = "#55606e"
HIGH_COLOR: Final = "#c0392b"  # the HIGH threshold line
MEDIUM_COLOR: Final = "#2e86c1"  # the MEDIUM threshold line
CONTROL_COLOR: Final = "#1e8449"
BAR_COLOR: Final = "#b8bcc2"
DPI: Final = 110

FONT: Final = "DejaVu Sans Mono"  # shipped with matplotlib: every glyph as wide as the next
NODE_PT: Final = 8.0  # size of the text in a table's box
_RULE_PT: Final = 7.0
_CHAR_W: Final = 0.602  # advance of one DejaVu Sans Mono glyph, in ems
_LINES: Final = 3  # name; rows and fingerprint; commit time
PAD: Final = 0.08  # inches between a box's edge and its text
_GAP_Y: Final = 0.22  # inches between two boxes of one column
_MARGIN: Final = 0.35
_HEADER: Final = 0.75  # inches above the boxes: title and legend
_SWEEPS: Final = 4
_UPRIGHT: Final[dict[str, Any]] = {"rotation": 90, "fontsize": 7, "ha": "center", "va": "bottom"}


class PictureError(UsherError):
    """A picture cannot be drawn from what it was given; the message says what to fix."""


@dataclass(frozen=True)
class Box:
    """A table's box in the lineage figure, in inches from the figure's bottom left."""

    table: str
    layer: int
    x0: float
    y0: float
    x1: float
    y1: float

    def overlaps(self, other: Box) -> bool:
        """Whether the two boxes share any area (touching edges do not count)."""
        return (
            self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1
        )


@dataclass(frozen=True)
class LineageLayout:
    """Where every table of a run goes: its box, the edges, and the figure's size in inches."""

    boxes: dict[str, Box]
    edges: list[tuple[str, str]]  # (upstream table, table)
    width: float
    height: float


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Figure, path: Path) -> Path:
    plt = _pyplot()
    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=DPI)
    finally:
        plt.close(figure)
    return path


# -- lineage ---------------------------------------------------------------------------------


def _tables(run: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    tables = run.get("tables")
    if not isinstance(tables, Mapping):
        raise PictureError(
            f"run record {run.get('run_id', '?')} has no `tables` object: pass a run record "
            "of the history (usher_pipeline.run/1)"
        )
    return {str(name): entry for name, entry in tables.items()}


def _layers(names: Sequence[str], upstream: Mapping[str, list[str]]) -> dict[str, int]:
    """Each table's longest path from a source (a table with no upstream table in the run)."""
    layer: dict[str, int] = {}
    remaining = {name: len(upstream[name]) for name in names}
    downstream: dict[str, list[str]] = {name: [] for name in names}
    for name in names:
        for parent in upstream[name]:
            downstream[parent].append(name)
    ready = [name for name in names if remaining[name] == 0]
    for name in ready:
        layer[name] = 0
    while ready:
        name = ready.pop()
        for child in downstream[name]:
            layer[child] = max(layer.get(child, 0), layer[name] + 1)
            remaining[child] -= 1
            if remaining[child] == 0:
                ready.append(child)
    if len(layer) < len(names):
        cycle = sorted(name for name in names if remaining[name] > 0)
        raise PictureError(
            f"the tables {', '.join(cycle[:5])} are each other's upstream in the run record: "
            "fix the record's `upstream` lists (a table cannot depend on itself)"
        )
    return layer


def _order(columns: list[list[str]], upstream: Mapping[str, list[str]]) -> None:
    """Reorder each column by the mean position of the tables linked to it (in place)."""
    downstream: dict[str, list[str]] = {name: [] for column in columns for name in column}
    for column in columns:
        for name in column:
            for parent in upstream[name]:
                downstream[parent].append(name)

    def sweep(indices: range, neighbours: Mapping[str, list[str]]) -> None:
        for i in indices:
            position = {  # centred, as the columns are drawn
                name: index - (len(column) - 1) / 2
                for column in columns
                for index, name in enumerate(column)
            }
            column = columns[i]
            keys: dict[str, tuple[float, int]] = {}
            for index, name in enumerate(column):
                linked = [position[n] for n in neighbours[name]]
                keys[name] = (sum(linked) / len(linked) if linked else float(index), index)
            column.sort(key=keys.__getitem__)

    for _ in range(_SWEEPS):
        sweep(range(1, len(columns)), upstream)
        sweep(range(len(columns) - 2, -1, -1), downstream)


def node_label(name: str, entry: Mapping[str, Any]) -> str:
    """A table's three lines in its box: name; rows and fingerprint; commit time (UTC)."""
    rows = entry.get("rows")
    rows_text = f"{rows:,} rows" if isinstance(rows, int) else "? rows"
    digest = str(entry.get("fingerprint") or "").partition(":")[2][:8] or "-"
    moment = re.search(r"T(\d\d:\d\d:\d\d)", str(entry.get("committed_at") or ""))
    return f"{name}\n{rows_text} {digest}\ncommitted {moment.group(1) if moment else '?'}"


def _em(points: float) -> float:
    return points / 72.0


def lineage_layout(run: Mapping[str, Any]) -> LineageLayout:
    """The boxes and edges of a run's lineage graph (what `draw_lineage` draws)."""
    tables = _tables(run)
    names = sorted(tables)
    upstream = {
        name: sorted({str(u) for u in tables[name].get("upstream") or [] if u in tables} - {name})
        for name in names
    }
    layer = _layers(names, upstream)
    columns: list[list[str]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for name in names:
        columns[layer[name]].append(name)
    _order(columns, upstream)

    widest = max(
        (len(line) for name in names for line in node_label(name, tables[name]).splitlines()),
        default=10,
    )
    box_w = widest * _CHAR_W * _em(NODE_PT) + 2 * PAD
    box_h = _LINES * 1.25 * _em(NODE_PT) + 2 * PAD
    rules = [str(tables[n].get("rule") or "") for n in names if upstream[n]]
    gap_x = max(0.6, max((len(r) for r in rules), default=0) * _CHAR_W * _em(_RULE_PT) + 0.45)
    tallest = max((len(column) for column in columns), default=0)
    body_h = tallest * box_h + max(tallest - 1, 0) * _GAP_Y
    width = max(4.5, 2 * _MARGIN + len(columns) * box_w + max(len(columns) - 1, 0) * gap_x)
    height = max(2.0, 2 * _MARGIN + _HEADER + body_h)

    boxes: dict[str, Box] = {}
    for index, column in enumerate(columns):
        x0 = _MARGIN + index * (box_w + gap_x)
        column_h = len(column) * box_h + max(len(column) - 1, 0) * _GAP_Y
        top = _MARGIN + body_h - (body_h - column_h) / 2
        for row, name in enumerate(column):
            y1 = top - row * (box_h + _GAP_Y)
            boxes[name] = Box(name, index, x0, y1 - box_h, x0 + box_w, y1)
    edges = [(parent, name) for name in names for parent in upstream[name]]
    return LineageLayout(boxes=boxes, edges=edges, width=width, height=height)


def draw_lineage(run: Mapping[str, Any], path: Path) -> Path:
    """Draw the run's tables (name, rows, fingerprint, commit time) and the edges from each
    table's upstream tables, labelled by the rule that made it, into the PNG `path`; tables
    changed since the previous run are filled with CHANGED_COLOR."""
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, Patch, Rectangle

    tables = _tables(run)
    layout = lineage_layout(run)
    figure = plt.figure(figsize=(layout.width, layout.height))
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    axes.set_xlim(0, layout.width)
    axes.set_ylim(0, layout.height)
    axes.set_axis_off()

    any_changed = any(entry.get("changed") is True for entry in tables.values())
    for name, box in layout.boxes.items():
        entry = tables[name]
        changed = entry.get("changed") is True
        axes.add_patch(
            Rectangle(
                (box.x0, box.y0),
                box.x1 - box.x0,
                box.y1 - box.y0,
                facecolor=CHANGED_COLOR if changed else UNCHANGED_COLOR,
                edgecolor="#33414f",
                linewidth=1.0,
                linestyle="-" if entry.get("written", True) else "--",
                zorder=3,
            )
        )
        axes.text(
            box.x0 + PAD,
            (box.y0 + box.y1) / 2,
            node_label(name, entry),
            fontfamily=FONT,
            fontsize=NODE_PT,
            linespacing=1.25,
            va="center",
            ha="left",
            zorder=4,
        )

    labelled: set[str] = set()
    for parent, child in layout.edges:
        start, end = layout.boxes[parent], layout.boxes[child]
        port = (end.x0, (end.y0 + end.y1) / 2)
        axes.add_patch(
            FancyArrowPatch(
                (start.x1, (start.y0 + start.y1) / 2),
                port,
                arrowstyle="-|>",
                mutation_scale=9,
                color=EDGE_COLOR,
                linewidth=0.8,
                shrinkA=0,
                shrinkB=1,
                zorder=2,
            )
        )
        if child not in labelled:  # every edge into a table is labelled by its one rule
            labelled.add(child)
            axes.text(
                port[0] - 0.06,
                port[1] + 0.05,
                str(tables[child].get("rule") or "?"),
                fontfamily=FONT,
                fontsize=_RULE_PT,
                color="#2c3e50",
                ha="right",
                va="bottom",
                zorder=5,
                bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none"},
            )

    title = f"Lineage of run {run.get('run_id', '?')}"
    if run.get("previous_run"):
        title += f" (previous run {run['previous_run']})"
    elif tables:
        title += " (the first recorded run: every table is new)"
    top = layout.height - _MARGIN * 0.6
    axes.text(_MARGIN, top, title, fontsize=10, fontweight="bold", ha="left", va="top")
    edge = "#33414f"
    handles: list[Any] = []
    if any_changed:
        handles.append(Patch(facecolor=CHANGED_COLOR, edgecolor=edge, label=CHANGED_LEGEND))
    if not all(entry.get("changed") is True for entry in tables.values()):
        handles.append(Patch(facecolor=UNCHANGED_COLOR, edgecolor=edge, label="unchanged"))
    if any(entry.get("written", True) is False for entry in tables.values()):
        handles.append(Line2D([], [], color="#33414f", linestyle="--", label="job not rerun"))
    if not tables:
        axes.text(
            layout.width / 2, layout.height / 2, "no table is recorded for this run", ha="center"
        )
    if handles:
        figure.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(_MARGIN / layout.width, 1 - (_MARGIN * 0.6 + 0.22) / layout.height),
            ncol=len(handles),
            fontsize=8,
            frameon=False,
        )
    return _save(figure, path)


# -- score distribution ----------------------------------------------------------------------


def _read_scores(path: Path, columns: Sequence[str], what: str) -> Any:
    import polars as pl

    if not path.is_file():
        raise PictureError(f"{what} {path} does not exist: run the job that writes it first")
    frame = pl.read_parquet(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PictureError(
            f"{what} {path} has no column {', '.join(missing)}: name its columns with "
            f"`score=` and `label=` (it has {', '.join(frame.columns)})"
        )
    if not frame.schema[columns[0]].is_numeric():
        raise PictureError(
            f"column {columns[0]} of {what} {path} is {frame.schema[columns[0]]}, not a number: "
            "pass the score column as `score=`"
        )
    return frame


def _spread(values: Sequence[float], gap: float, low: float, high: float) -> list[float]:
    """Positions near `values` (sorted) at least `gap` apart, kept within [low, high] where
    they fit."""
    places: list[float] = []
    for value in values:
        places.append(max(value, places[-1] + gap) if places else value)
    if places and places[-1] > high:
        places[-1] = high
        for i in range(len(places) - 2, -1, -1):
            places[i] = min(places[i], places[i + 1] - gap)
    return [max(place, low) if len(places) * gap <= high - low else place for place in places]


def draw_score_distribution(
    tiers: Path,
    controls: Path | None,
    *,
    high: float,
    medium: float,
    path: Path,
    score: str = "score",
    label: str = "gene_symbol",
) -> Path:
    """Draw the histogram of the `score` column of `tiers`, the HIGH and MEDIUM thresholds
    and, below it, the positive controls (rows of `controls`: their score and label) into the
    PNG `path`. Rows without a finite score are counted in the title, never drawn."""
    import polars as pl

    plt = _pyplot()
    frame = _read_scores(Path(tiers), [score], "tiers table")
    values = frame.get_column(score).cast(pl.Float64)
    finite = values.filter(values.is_finite())
    unscored = frame.height - finite.len()
    marks: list[tuple[float, str]] = []
    absent = 0
    if controls is not None:
        known = _read_scores(Path(controls), [score, label], "positive controls table")
        for value, name in known.select(score, label).iter_rows():
            if value is None or value != value or value in (float("inf"), float("-inf")):
                absent += 1
            else:
                marks.append((float(value), "?" if name is None else str(name)))
        marks.sort()

    ratios = {"height_ratios": [3.2, 1.0], "hspace": 0.05}
    figure, (hist, rug) = plt.subplots(2, 1, figsize=(9.0, 5.6), sharex=True, gridspec_kw=ratios)
    data = finite.to_list()
    low_edge = min([0.0, *data, medium, high])
    high_edge = max([1.0, *data, medium, high])
    hist.hist(data, bins=50, range=(low_edge, high_edge), color=BAR_COLOR, edgecolor="white")
    hist.set_yscale("symlog", linthresh=10)
    hist.set_ylabel("genes (log scale above 10)")
    for value, name, color in ((high, "HIGH", HIGH_COLOR), (medium, "MEDIUM", MEDIUM_COLOR)):
        for axes in (hist, rug):
            axes.axvline(value, color=color, linewidth=2.0, zorder=3)
        hist.text(
            value,
            0.97,
            f" {name} \u2265 {value:g}",
            transform=hist.get_xaxis_transform(),
            color=color,
            fontsize=9,
            fontweight="bold",
            ha="left",
            va="top",
        )
    title = f"Distribution of {score} over {finite.len():,} genes"
    if unscored:
        title += f" ({unscored:,} without a score, not drawn)"
    hist.set_title(title, fontsize=11)

    rug.set_yticks([])
    rug.set_ylim(0, 1)
    rug.set_xlabel(score)
    # labels stand upright, spread apart along the axis with a leader to their own score
    gap = (high_edge - low_edge) * 0.14 / 9.0 / 0.9  # one upright 7 pt line, in score units
    places = _spread([value for value, _name in marks], gap, low_edge, high_edge)
    for (value, name), place in zip(marks, places, strict=True):
        rug.plot([value, value], [0.0, 0.12], color=CONTROL_COLOR, linewidth=1.2)
        rug.plot([value], [0.12], marker="o", markersize=3.5, color=CONTROL_COLOR)
        rug.plot([value, place], [0.12, 0.3], color=CONTROL_COLOR, linewidth=0.5)
        rug.text(place, 0.32, name, color=CONTROL_COLOR, **_UPRIGHT)
    if controls is not None:
        legend = f"positive controls: {len(marks)}"
        if absent:
            legend += f" (+{absent} not scored)"
        rug.text(0.005, 0.97, legend, transform=rug.transAxes, fontsize=8, ha="left", va="top")
    hist.set_xlim(low_edge, high_edge)
    figure.subplots_adjust(left=0.08, right=0.98, top=0.93, bottom=0.1)
    return _save(figure, Path(path))
