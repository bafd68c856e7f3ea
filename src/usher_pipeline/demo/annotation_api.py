"""The HPO gene annotations as an HTTP API serves them, for evidence layers that look their
genes up through the source client (``demo.fetch.api_url``).

The API answers ``GET <api_url>/genes?ids=7399,4647`` with JSON
``{"results": [{"id": "7399", "hpo_ids": ["HP:0000365", ...]}, ...]}``: one record per gene
asked, holding the HPO terms annotated to it (other fields are ignored), and may name its HPO
release in the response header ``X-HPO-Release``. Pure functions: the request's URL and query
in, the batch's annotations out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import polars as pl

from usher_pipeline.demo.files import DemoDataError

__all__ = ["GENES_PATH", "RELEASE_HEADER", "annotations_from_answer", "genes_request"]

#: The API's path for gene annotations, under its base URL.
GENES_PATH = "/genes"
#: The response header in which the API names its HPO release (``2025-01-16``).
RELEASE_HEADER = "X-HPO-Release"


def genes_request(api_url: str, gene_ids: Sequence[int]) -> tuple[str, dict[str, str]]:
    """The URL and query parameters that ask the API for the annotations of ``gene_ids``."""
    return api_url.rstrip("/") + GENES_PATH, {"ids": ",".join(str(g) for g in gene_ids)}


def annotations_from_answer(answer: object, gene_ids: Sequence[int]) -> pl.DataFrame:
    """Distinct (ncbi_gene_id, hpo_id) of an answer to ``genes_request``, sorted by both.

    Raises DemoDataError unless the answer holds exactly one record per gene asked, each with
    a list of HPO term ids; a gene without annotations has an empty list and no rows.
    """
    results = answer.get("results") if isinstance(answer, Mapping) else None
    if not isinstance(results, list):
        raise DemoDataError(
            'the HPO annotation API answered without a "results" list: point '
            "demo.fetch.api_url at an API that answers GET /genes?ids= as config/README.md says"
        )
    asked = {int(g) for g in gene_ids}
    genes: list[int] = []
    terms: list[str] = []
    answered: set[int] = set()
    for record in results:
        if not isinstance(record, Mapping):
            raise DemoDataError(
                f"the HPO annotation API answered a record that is not an object ({record!r}): "
                "fix the API behind demo.fetch.api_url"
            )
        gene = _gene_of(record)
        hpo_ids = record.get("hpo_ids")
        if not isinstance(hpo_ids, list) or not all(isinstance(t, str) for t in hpo_ids):
            raise DemoDataError(
                f"the HPO annotation API's record of gene {gene} has no list of HPO term ids "
                '("hpo_ids"): fix the API behind demo.fetch.api_url'
            )
        if gene in answered or gene not in asked:
            what = "twice" if gene in answered else "without being asked for"
            raise DemoDataError(
                f"the HPO annotation API answered gene {gene} {what}: fix the API behind "
                "demo.fetch.api_url"
            )
        answered.add(gene)
        genes.extend([gene] * len(hpo_ids))
        terms.extend(hpo_ids)
    missing = sorted(asked - answered)
    if missing:
        shown = ", ".join(str(g) for g in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DemoDataError(
            f"the HPO annotation API did not answer for {len(missing)} gene(s) asked ({shown}): "
            "fix the API behind demo.fetch.api_url"
        )
    frame = pl.DataFrame(
        {"ncbi_gene_id": genes, "hpo_id": terms},
        schema={"ncbi_gene_id": pl.Int64, "hpo_id": pl.String},
    )
    return frame.unique().sort("ncbi_gene_id", "hpo_id")


def _gene_of(record: Mapping[str, object]) -> int:
    """The NCBI Gene ID of one record (``"id"``, a positive integer or its digits)."""
    raw = record.get("id")
    if isinstance(raw, str) and raw.isdigit() and not raw.startswith("0"):
        return int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
        return raw
    raise DemoDataError(
        f"the HPO annotation API answered a record without an NCBI Gene ID ({raw!r} as its "
        '"id"): fix the API behind demo.fetch.api_url'
    )
