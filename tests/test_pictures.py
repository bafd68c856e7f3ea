"""The report's pictures (lineage graph, score distribution) and its "Changes since the
previous run" page: real PNG files read back pixel by pixel, real HTML text, and the report
script run on a run history written to disk."""

from __future__ import annotations

import random
import runpy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import polars as pl
import pytest
from matplotlib import colors as mcolors
from matplotlib import image as mimage

from usher_pipeline._io import write_json_atomic
from usher_pipeline.export.changes import NO_PREVIOUS, TITLE, write_changes
from usher_pipeline.export.pictures import (
    CHANGED_COLOR,
    CONTROL_COLOR,
    DPI,
    FONT,
    HIGH_COLOR,
    MEDIUM_COLOR,
    NODE_PT,
    PAD,
    PictureError,
    draw_lineage,
    draw_score_distribution,
    lineage_layout,
    node_label,
)

REPO = Path(__file__).resolve().parents[1]


def fingerprint(rng: random.Random) -> str:
    return "fp2:" + "".join(rng.choice("0123456789abcdef") for _ in range(32))


def entry(rng: random.Random, rule: str, upstream: list[str], changed: bool, **more: Any):
    fp = fingerprint(rng)
    return {
        "fingerprint": fp,
        "rows": rng.randint(1, 20000),
        "size": 1000,
        "object": f"objects/fp2-{fp[4:]}.parquet",
        "rule": rule,
        "step": rule,
        "committed_at": "2026-12-02T04:18:34.1Z",
        "written": True,
        "changed": changed,
        "key": None,
        "noun": None,
        "label": None,
        "upstream": upstream,
        "columns": [["x", "BIGINT"]],
        **more,
    }


def demo_run(changed: set[str], seed: int = 0) -> dict[str, Any]:
    """A run record shaped like the demo's (10 tables)."""
    rng = random.Random(seed)
    layers = ["evidence_hearing", "evidence_retina", "evidence_vestibular"]
    shape = {
        "hpo_terms": ("hpo_terms", []),
        "known_usher_genes": ("known_usher_genes", []),
        "gene_universe": ("gene_universe", ["known_usher_genes"]),
        **{layer: ("evidence", ["gene_universe", "hpo_terms"]) for layer in layers},
        "gene_evidence": ("gene_evidence", ["gene_universe", *layers]),
        "gene_scores": ("gene_scores", ["gene_evidence"]),
        "candidate_tiers": ("candidate_tiers", ["gene_scores", "known_usher_genes"]),
        "positive_controls": ("candidate_tiers", ["gene_scores", "known_usher_genes"]),
    }
    return {
        "format": "usher_pipeline.run/1",
        "run_id": "20261202T041834Z-3fa9c1",
        "previous_run": "20261201T101010Z-aaaaaa",
        "ended_at": "2026-12-02T04:18:34.1Z",
        "tables": {
            name: entry(rng, rule, up, name in changed) for name, (rule, up) in shape.items()
        },
    }


def wide_run(tables: int, seed: int = 7) -> dict[str, Any]:
    """A synthetic run: each table reads up to 3 earlier ones; a third changed."""
    rng = random.Random(seed)
    names = [f"table_with_a_long_name_{i:02d}" for i in range(tables)]
    run: dict[str, Any] = {"run_id": "20261202T000000Z-000000", "previous_run": None}
    run["tables"] = {
        name: entry(
            rng,
            f"rule_{i % 9}",
            rng.sample(names[:i], k=min(i, rng.randint(0, 3))),
            rng.random() < 0.3,
        )
        for i, name in enumerate(names)
    }
    return run


def pixels(path: Path) -> np.ndarray:
    """The PNG as an (h, w, 3) array of 0..255 integers."""
    image = mimage.imread(path)
    assert image.dtype == np.float32 and image.ndim == 3
    return np.round(image[:, :, :3] * 255).astype(np.int64)


def count(image: np.ndarray, color: str) -> int:
    """How many pixels are exactly `color`."""
    rgb = np.round(np.array(mcolors.to_rgb(color)) * 255).astype(np.int64)
    return int(np.all(image == rgb, axis=2).sum())


def assert_not_blank(image: np.ndarray) -> None:
    white = np.all(image == 255, axis=2).mean()
    assert 0.2 < white < 0.995, f"{white:.3f} of the picture is white"
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20


# -- lineage ---------------------------------------------------------------------------------


def test_lineage_marks_the_changed_tables(tmp_path):
    changed = draw_lineage(demo_run({"gene_scores", "candidate_tiers"}), tmp_path / "a.png")
    image = pixels(changed)
    height, width = image.shape[:2]
    assert 800 <= width <= 3000 and 250 <= height <= 1200, (width, height)
    assert_not_blank(image)
    # two boxes of at least 1.4 x 0.4 inches each are filled with the marked colour
    assert count(image, CHANGED_COLOR) > 2 * (1.4 * DPI) * (0.4 * DPI)


def test_lineage_without_changes_has_no_marked_colour(tmp_path):
    same = pixels(draw_lineage(demo_run(set()), tmp_path / "same.png"))
    assert_not_blank(same)
    assert count(same, CHANGED_COLOR) == 0
    one = pixels(draw_lineage(demo_run({"hpo_terms"}), tmp_path / "one.png"))
    assert count(one, CHANGED_COLOR) > 0


def test_lineage_layers_follow_the_longest_path():
    layout = lineage_layout(demo_run(set()))
    layer = {name: box.layer for name, box in layout.boxes.items()}
    assert layer["hpo_terms"] == layer["known_usher_genes"] == 0
    assert layer["gene_universe"] == 1
    assert layer["evidence_retina"] == 2  # its longest path runs through gene_universe
    assert layer["gene_evidence"] == 3 and layer["gene_scores"] == 4
    assert layer["candidate_tiers"] == layer["positive_controls"] == 5
    assert ("known_usher_genes", "positive_controls") in layout.edges
    for parent, child in layout.edges:  # edges run left to right
        assert layout.boxes[parent].x1 < layout.boxes[child].x0


def text_size(text: str) -> tuple[float, float]:
    """The rendered size of a box's text, in inches, as matplotlib draws it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(dpi=DPI)
    canvas = FigureCanvasAgg(figure)
    label = figure.text(0, 0, text, fontfamily=FONT, fontsize=NODE_PT, linespacing=1.25)
    extent = label.get_window_extent(renderer=canvas.get_renderer())
    return extent.width / DPI, extent.height / DPI


@pytest.mark.parametrize("tables", [10, 60])
def test_lineage_boxes_never_overlap_and_hold_their_text(tmp_path, tables):
    run = wide_run(tables)
    layout = lineage_layout(run)
    boxes = list(layout.boxes.values())
    assert len(boxes) == tables
    for i, box in enumerate(boxes):
        assert 0 <= box.x0 < box.x1 <= layout.width and 0 <= box.y0 < box.y1 <= layout.height
        for other in boxes[i + 1 :]:
            assert not box.overlaps(other), (box, other)
        width, height = text_size(node_label(box.table, run["tables"][box.table]))
        assert width <= box.x1 - box.x0 - 2 * PAD + 0.02, box.table
        assert height <= box.y1 - box.y0, box.table
    image = pixels(draw_lineage(run, tmp_path / "wide.png"))
    assert_not_blank(image)
    h, w = image.shape[:2]
    assert abs(w - layout.width * DPI) <= 2 and abs(h - layout.height * DPI) <= 2
    assert h < 8000 and w < 8000


def test_lineage_grows_with_the_graph():
    small, large = lineage_layout(wide_run(10)), lineage_layout(wide_run(60))
    assert large.width * large.height > 3 * small.width * small.height


def test_lineage_refuses_a_cycle(tmp_path):
    run = demo_run(set())
    run["tables"]["gene_universe"]["upstream"] = ["gene_scores"]
    with pytest.raises(PictureError, match="each other's upstream"):
        draw_lineage(run, tmp_path / "cycle.png")
    assert not (tmp_path / "cycle.png").exists()


def test_lineage_refuses_a_record_without_tables(tmp_path):
    with pytest.raises(PictureError, match="no `tables`"):
        draw_lineage({"run_id": "x"}, tmp_path / "x.png")


# -- score distribution ----------------------------------------------------------------------


@pytest.fixture
def scores(tmp_path) -> tuple[Path, Path]:
    rng = np.random.default_rng(3)
    values = rng.beta(1.2, 6.0, size=3000).tolist() + [None, 0.93, 0.88]
    tiers = tmp_path / "tiers.parquet"
    pl.DataFrame(
        {
            "ncbi_gene_id": list(range(len(values))),
            "gene_symbol": [f"G{i}" for i in range(len(values))],
            "score": pl.Series(values, dtype=pl.Float64),
        }
    ).write_parquet(tiers)
    controls = tmp_path / "controls.parquet"
    pl.DataFrame(
        {
            "gene_symbol": ["USH2A", "MYO7A", "CDH23", "PCDH15", "WHRN", "MISSING"],
            "score": [0.93, 0.88, 0.87, 0.62, 0.31, None],
            "tier": ["HIGH", "HIGH", "HIGH", "HIGH", "MEDIUM", "ABSENT"],
        }
    ).write_parquet(controls)
    return tiers, controls


def test_score_distribution_draws_thresholds_and_controls(tmp_path, scores):
    tiers, controls = scores
    path = draw_score_distribution(
        tiers, controls, high=0.6, medium=0.3, path=tmp_path / "dist.png"
    )
    image = pixels(path)
    h, w = image.shape[:2]
    assert 700 <= w <= 1400 and 400 <= h <= 900, (w, h)
    assert_not_blank(image)
    # each threshold is a 2-point line through both panels: at least a column of its colour
    assert count(image, HIGH_COLOR) > 0.6 * h
    assert count(image, MEDIUM_COLOR) > 0.6 * h
    assert count(image, CONTROL_COLOR) > 50


def test_score_distribution_without_controls(tmp_path, scores):
    tiers, _controls = scores
    image = pixels(
        draw_score_distribution(tiers, None, high=0.7, medium=0.2, path=tmp_path / "d.png")
    )
    assert count(image, HIGH_COLOR) > 0 and count(image, MEDIUM_COLOR) > 0
    assert count(image, CONTROL_COLOR) == 0


def test_score_distribution_names_a_missing_or_wrong_column(tmp_path, scores):
    tiers, controls = scores
    with pytest.raises(PictureError, match="no column rank_score"):
        draw_score_distribution(
            tiers, controls, high=0.6, medium=0.3, path=tmp_path / "x.png", score="rank_score"
        )
    with pytest.raises(PictureError, match="not a number"):
        draw_score_distribution(
            tiers, controls, high=0.6, medium=0.3, path=tmp_path / "x.png", score="gene_symbol"
        )
    with pytest.raises(PictureError, match="does not exist"):
        draw_score_distribution(
            tmp_path / "nope.parquet", None, high=0.6, medium=0.3, path=tmp_path / "x.png"
        )
    assert not (tmp_path / "x.png").exists()


# -- the changes page ------------------------------------------------------------------------


def run_diff() -> dict[str, Any]:
    return {
        "old": {"run_id": "20261201T101010Z-aaaaaa", "ended_at": "2026-12-01T10:10:10Z"},
        "new": {"run_id": "20261202T041834Z-3fa9c1", "ended_at": "2026-12-02T04:18:34Z"},
        "config": [
            {"key": "demo.layers.hearing.weight", "old": 0.4, "new": 0.5, "change": "changed"},
            {"key": "demo.note", "old": None, "new": "<script>x</script>", "change": "added"},
        ],
        "data_sources": [{"name": "hpo", "old": "2025-01-16", "new": "2025-03-01"}],
        "software": [{"name": "polars", "old": "2.0.0", "new": "2.1.0"}],
        "inputs": [{"path": "data/<b>x.tsv", "old": "a" * 64, "new": "b" * 64}],
        "tables": [
            {
                "table": "candidate_tiers",
                "status": "changed",
                "noun": "genes",
                "label": "gene_symbol",
                "key": ["ncbi_gene_id"],
                "key_source": "declared",
                "rows_old": 5132,
                "rows_new": 5132,
                "added": 0,
                "removed": 0,
                "changed": 4012,
                "columns_added": [],
                "columns_removed": [],
                "types_changed": [],
                "changed_columns": [["score", 4012], ["tier", 13]],
                "transitions": [
                    {
                        "column": "tier",
                        "old": "MEDIUM",
                        "new": "HIGH",
                        "rows": 12,
                        "keys": [[1234], [5678]],
                        "labels": ["USH2A", "<img src=x onerror=alert(1)>"],
                    },
                    {
                        "column": "tier",
                        "old": "LOW",
                        "new": "MEDIUM",
                        "rows": 1,
                        "keys": [[9]],
                        "labels": [],
                    },
                ],
                "samples": {
                    "added": [],
                    "removed": [],
                    "changed": [
                        {
                            "key": {"ncbi_gene_id": 1},
                            "label": "X<script>",
                            "old": {"score": 0.1},
                            "new": {"score": 0.2},
                        }
                    ],
                },
            },
            {
                "table": "gene_notes",
                "status": "added",
                "noun": None,
                "label": None,
                "rows_old": 0,
                "rows_new": 3,
            },
        ],
        "unchanged_tables": ["hpo_terms", "known_usher_genes"],
    }


def test_changes_page_shows_every_part_escaped(tmp_path):
    page = write_changes(run_diff(), tmp_path / "changes.html", lineage_png="lineage.png")
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and TITLE in html
    assert "<script>" not in html and "<img src=x" not in html and "<b>x.tsv" not in html
    assert "&lt;script&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<code>demo.layers.hearing.weight</code></td><td>0.4</td><td>0.5</td>" in html
    assert "<td>(not set)</td><td>&quot;&lt;script&gt;x&lt;/script&gt;&quot;</td>" in html
    assert "2025-01-16" in html and "2025-03-01" in html and "data/&lt;b&gt;x.tsv" in html
    assert (
        "candidate_tiers: 13 genes changed tier (12 MEDIUM -&gt; HIGH, 1 LOW -&gt; MEDIUM); "
        "4012 genes changed score" in html
    )
    assert "USH2A" in html and "9" in html  # a transition without labels shows its keys
    assert "<td>&quot;MEDIUM&quot; &rarr; &quot;HIGH&quot;</td><td>12</td>" in html
    assert "<code>score</code>: 0.1 &rarr; 0.2" in html
    assert "gene_notes: new table, 3 rows" in html
    assert "Unchanged (2): <code>hpo_terms</code>, <code>known_usher_genes</code>." in html
    assert '<img src="lineage.png"' in html


def test_changes_page_without_a_previous_run(tmp_path):
    html = write_changes(None, tmp_path / "c.html").read_text(encoding="utf-8")
    assert NO_PREVIOUS in html and "<table>" not in html and "<img" not in html
    noted = write_changes(None, tmp_path / "n.html", note="Not <in> the history.")
    assert "Not &lt;in&gt; the history." in noted.read_text(encoding="utf-8")


# -- the report script on a history on disk --------------------------------------------------


def saved_history(results: Path) -> None:
    """Two runs of a one-table history whose second run moved one gene from MEDIUM to HIGH."""
    from usher_pipeline.history.store import History

    history = History(results)
    history.objects_dir.mkdir(parents=True)
    rng = random.Random(5)
    runs = []
    for index, tier in enumerate(["MEDIUM", "HIGH"]):
        run = demo_run({"candidate_tiers"} if index else set(), seed=index)
        run["run_id"] = f"2026120{index + 1}T041834Z-00000{index}"
        run["provenance_run_id"] = f"prov-{index}"
        run["previous_run"] = runs[-1]["run_id"] if runs else None
        run["config"] = {"demo": {"tiers": {"high": 0.6 - 0.1 * index}}}
        for name, table in run["tables"].items():
            if runs and name != "candidate_tiers":
                table.update(runs[-1]["tables"][name])
            if name == "candidate_tiers":
                table["fingerprint"] = fingerprint(rng)
                table.update(key=["ncbi_gene_id"], noun="genes", label="gene_symbol")
            table["object"] = f"objects/fp2-{table['fingerprint'][4:]}.parquet"
            frame = pl.DataFrame(
                {"ncbi_gene_id": [1, 2], "gene_symbol": ["USH2A", "MYO7A"], "tier": [tier, "LOW"]}
            )
            if name != "candidate_tiers":
                frame = pl.DataFrame({"x": [table["fingerprint"]]})
            frame.write_parquet(history.root / table["object"])
        history.save_run(run)
        runs.append(run)


def run_report_script(results: Path, provenance_run_id: str) -> tuple[str, Path]:
    provenance = results / "provenance.json"
    write_json_atomic(provenance, {"run_id": provenance_run_id})
    outputs = SimpleNamespace(
        changes=str(results / "final/changes.html"), lineage=str(results / "final/lineage.png")
    )
    snakemake = SimpleNamespace(
        input=SimpleNamespace(run=str(provenance)),
        output=outputs,
        log=[str(results / "report.log")],
        config={"results_dir": str(results)},
    )
    runpy.run_path(str(REPO / "scripts/report_history.py"), init_globals={"snakemake": snakemake})
    return Path(outputs.changes).read_text(encoding="utf-8"), Path(outputs.lineage)


def test_report_script_compares_the_run_with_the_previous_one(tmp_path):
    pytest.importorskip("usher_pipeline.history.diff")
    results = tmp_path / "results"
    saved_history(results)
    html, lineage = run_report_script(results, "prov-1")
    assert "20261202T041834Z-000001" in html and "20261201T041834Z-000000" in html
    assert "<code>demo.tiers.high</code>" in html
    assert "candidate_tiers: 1 gene changed tier (1 MEDIUM -&gt; HIGH)" in html
    assert "USH2A" in html and 'src="data:image/png;base64,' in html
    assert count(pixels(lineage), CHANGED_COLOR) > 0
    first, first_lineage = run_report_script(results, "prov-0")
    assert NO_PREVIOUS in first and count(pixels(first_lineage), CHANGED_COLOR) == 0
    unknown, _ = run_report_script(results, "prov-unknown")
    assert "is not in the run history" in unknown
