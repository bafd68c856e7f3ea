"""Evidence layers, scoring, tiers and positive controls of the demo screen.

Pure polars functions: no database, no Snakemake. Rows come out in a documented,
deterministic order so that equal inputs give equal tables (and equal fingerprints).

Scoring in one paragraph: a layer (hearing, retina, vestibular) is a set of HPO terms, the
descendant closure of its root term(s). A gene's evidence in a layer is ``n``, the number of
distinct HPO terms annotated to the gene inside that closure. The layer score is the
saturating curve ``n / (n + half_saturation)`` (default half_saturation = 1: one term gives
0.5, two 0.67, three 0.75, never 1), and the gene score is the weighted mean of the layer
scores. Because a layer can contribute at most its weight, many terms in one organ system
cannot outweigh evidence across systems: with the default weights (0.4, 0.35, 0.25) a gene
seen in one system stays below 0.4, while a single term in each of the three systems
already gives exactly 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import polars as pl

from usher_pipeline.demo.files import DemoDataError
from usher_pipeline.settings import is_table_name

__all__ = [
    "SCORE_DECIMALS",
    "assign_tiers",
    "integrate",
    "layer_evidence",
    "layer_score_expr",
    "positive_control_report",
    "positive_control_summary",
    "score_genes",
    "top_novel_candidates",
]

#: Scores are rounded to this many decimals, so that sums of exact fractions (0.2 + 0.175 +
#: 0.125) compare with thresholds as on paper and do not depend on the summation order.
SCORE_DECIMALS = 9


def layer_evidence(
    annotations: pl.DataFrame, gene_ids: Sequence[int], closure: Sequence[str]
) -> pl.DataFrame:
    """Evidence of one batch of genes in one layer (the demo's "fetch").

    One row per distinct requested gene, sorted by ncbi_gene_id, genes without annotations
    included with zeros: ncbi_gene_id (Int64), n_layer_terms (distinct annotated HPO terms
    inside ``closure``), n_terms (distinct annotated HPO terms overall). A gene's row depends
    only on that gene, so any batching of the keys gives the same rows.
    """
    requested = pl.DataFrame({"ncbi_gene_id": list(gene_ids)}, schema={"ncbi_gene_id": pl.Int64})
    requested = requested.unique().sort("ncbi_gene_id")
    layer_terms = pl.Series("closure", list(closure), dtype=pl.String).implode()
    counts = (
        annotations.lazy()
        .filter(pl.col("ncbi_gene_id").is_in(requested["ncbi_gene_id"].implode()))
        .group_by("ncbi_gene_id")
        .agg(
            pl.col("hpo_id")
            .filter(pl.col("hpo_id").is_in(layer_terms))
            .n_unique()
            .alias("n_layer_terms"),
            pl.col("hpo_id").n_unique().alias("n_terms"),
        )
        .collect()
    )
    return requested.join(counts, on="ncbi_gene_id", how="left").select(
        "ncbi_gene_id",
        pl.col("n_layer_terms").fill_null(0).cast(pl.Int64),
        pl.col("n_terms").fill_null(0).cast(pl.Int64),
    )


def _check_layer_name(layer: str) -> None:
    """Raise DemoDataError unless `layer` is a table name (it names columns and tables)."""
    if not is_table_name(layer):
        raise DemoDataError(
            f"layer name {layer!r} is not valid: rename it to lowercase letters, digits and "
            "underscores, starting with a letter"
        )


def integrate(universe: pl.DataFrame, layers: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    """The universe with each layer's n_layer_terms as ``<layer>_terms`` (0 where missing).

    Keeps the universe's rows and order; layer columns follow in the mapping's order.
    """
    result = universe
    for layer, evidence in layers.items():
        _check_layer_name(layer)
        column = f"{layer}_terms"
        if column in result.columns:
            raise DemoDataError(
                f"layer {layer!r} is given twice or clashes with column {column}: "
                "give each layer once, under a name that no universe column ends in"
            )
        if evidence["ncbi_gene_id"].is_duplicated().any():
            raise DemoDataError(
                f"evidence of layer {layer!r} has more than one row per gene: "
                "make it with layer_evidence, which gives one row per gene"
            )
        result = result.join(
            evidence.select("ncbi_gene_id", pl.col("n_layer_terms").alias(column)),
            on="ncbi_gene_id",
            how="left",
            maintain_order="left",
        ).with_columns(pl.col(column).fill_null(0).cast(pl.Int64))
    return result


def layer_score_expr(column: str, half_saturation: float = 1.0) -> pl.Expr:
    """Saturating layer score ``n / (n + half_saturation)`` in [0, 1) of a count column."""
    n = pl.col(column).cast(pl.Float64)
    return n / (n + half_saturation)


def score_genes(
    evidence: pl.DataFrame, weights: Mapping[str, float], half_saturation: float = 1.0
) -> pl.DataFrame:
    """Add ``<layer>_score`` per weighted layer and their weighted mean ``score`` in [0, 1].

    ``weights`` are relative (divided by their sum); each layer needs a ``<layer>_terms``
    column (see integrate). Scores are rounded to SCORE_DECIMALS decimals. Row order is kept.
    """
    if not weights:
        raise DemoDataError("scoring got no layer weights: pass a weight for each layer")
    if half_saturation <= 0:
        raise DemoDataError(f"half_saturation is {half_saturation}: pass a number above 0")
    for layer, weight in weights.items():
        _check_layer_name(layer)
        if f"{layer}_terms" not in evidence.columns:
            raise DemoDataError(
                f"evidence has no column {layer}_terms for weighted layer {layer!r}: "
                "integrate that layer's evidence first, or drop its weight"
            )
        if not weight >= 0:
            raise DemoDataError(f"weight of layer {layer!r} is {weight}: use a number of 0 or more")
    total = float(sum(weights.values()))
    if total <= 0:
        raise DemoDataError("layer weights must not all be zero: give one layer a weight above 0")
    layer_scores = [
        layer_score_expr(f"{layer}_terms", half_saturation).alias(f"{layer}_score")
        for layer in weights
    ]
    weighted = pl.sum_horizontal(
        [pl.col(f"{layer}_score") * (weight / total) for layer, weight in weights.items()]
    )
    return evidence.with_columns(layer_scores).with_columns(
        weighted.clip(0.0, 1.0).round(SCORE_DECIMALS).alias("score"),
        *[pl.col(f"{layer}_score").round(SCORE_DECIMALS) for layer in weights],
    )


def assign_tiers(scores: pl.DataFrame, high: float, medium: float) -> pl.DataFrame:
    """Add ``rank`` (1 = best; ties by ncbi_gene_id) and ``tier``; sorted by rank.

    tier is HIGH for score >= high, MEDIUM for score >= medium, otherwise LOW.
    """
    if not 0 <= medium <= high <= 1:
        raise DemoDataError(
            f"tier thresholds are medium={medium}, high={high}: "
            "use 0 <= medium <= high <= 1 (demo.tiers)"
        )
    return (
        scores.sort(["score", "ncbi_gene_id"], descending=[True, False])
        .with_row_index("rank", offset=1)
        .with_columns(
            pl.col("rank").cast(pl.Int64),
            pl.when(pl.col("score") >= high)
            .then(pl.lit("HIGH"))
            .when(pl.col("score") >= medium)
            .then(pl.lit("MEDIUM"))
            .otherwise(pl.lit("LOW"))
            .alias("tier"),
        )
        .select(pl.exclude("rank", "tier"), "rank", "tier")
    )


def positive_control_report(tiers: pl.DataFrame, usher: pl.DataFrame) -> pl.DataFrame:
    """Where each known Usher gene landed: gene_symbol, ncbi_gene_id, disease_ids, rank,
    score, tier (``ABSENT`` with null rank and score if not in the scored universe).

    Sorted by rank (absent genes last, by symbol).
    """
    known = usher.select(
        "gene_symbol",
        "ncbi_gene_id",
        *(["disease_ids"] if "disease_ids" in usher.columns else []),
    ).unique("ncbi_gene_id", keep="first", maintain_order=True)
    return (
        known.join(
            tiers.select("ncbi_gene_id", "rank", "score", "tier"),
            on="ncbi_gene_id",
            how="left",
        )
        .with_columns(pl.col("tier").fill_null("ABSENT"))
        .sort(["rank", "gene_symbol"], nulls_last=True)
    )


def positive_control_summary(report: pl.DataFrame) -> dict[str, object]:
    """Counts per tier, recovery_high (= n_high / n_known) and the median rank of the present."""
    counts = dict(report.group_by("tier").len().iter_rows())
    n_known = report.height
    n_high = int(counts.get("HIGH", 0))
    median_rank = report.select(pl.col("rank").median()).item()  # nulls (absent) ignored
    return {
        "n_known": n_known,
        "n_high": n_high,
        "n_medium": int(counts.get("MEDIUM", 0)),
        "n_low": int(counts.get("LOW", 0)),
        "n_absent": int(counts.get("ABSENT", 0)),
        "recovery_high": n_high / n_known if n_known else 0.0,
        "median_rank": float(median_rank) if median_rank is not None else None,
    }


def top_novel_candidates(tiers: pl.DataFrame, usher: pl.DataFrame, n: int = 10) -> pl.DataFrame:
    """The ``n`` best-ranked genes that are not known Usher genes, in rank order."""
    if n < 0:
        raise DemoDataError(f"number of candidates is {n}: ask for 0 or more")
    return (
        tiers.join(usher.select("ncbi_gene_id"), on="ncbi_gene_id", how="anti").sort("rank").head(n)
    )
