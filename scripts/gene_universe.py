"""The gene universe: every gene in the HPO annotations, behind an identifier quality gate."""

from pathlib import Path

from usher_pipeline.demo import check_identifier_validity, gene_universe, hpo_release, limit_genes
from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    data_dir = Path(snakemake.input.annotations).parent
    job.record_data_source("hpo", hpo_release(data_dir))
    universe = gene_universe(data_dir)
    minimum = snakemake.params.min_valid_id_fraction
    fraction = check_identifier_validity(universe, minimum)
    job.record_step(
        "validate_identifiers",
        {"genes": universe.height, "valid_fraction": round(fraction, 6), "minimum": minimum},
    )
    usher = job.read("usher")
    limited = limit_genes(universe, snakemake.params.gene_limit, usher["ncbi_gene_id"].to_list())
    if limited.height != universe.height:
        job.record_step(
            "limit_genes", {"limit": snakemake.params.gene_limit, "kept": limited.height}
        )
    job.save(limited, description="genes annotated in HPO (NCBI Gene ID, HGNC symbol)")
