"""Known Usher genes (positive controls): genes of every OMIM disease named Usher syndrome."""

from pathlib import Path

from usher_pipeline.demo import hpo_release, usher_genes
from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    data_dir = Path(snakemake.input.diseases).parent
    job.record_data_source("hpo", hpo_release(data_dir))
    genes = usher_genes(data_dir, snakemake.params.pattern)
    job.record_step(
        "select_usher_genes",
        {"pattern": snakemake.params.pattern, "genes": genes["gene_symbol"].to_list()},
    )
    job.save(genes, description="known Usher syndrome genes (positive controls)")
