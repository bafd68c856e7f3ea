"""Weighted scoring of the integrated evidence."""

from usher_pipeline.demo import score_genes
from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    weights = dict(snakemake.params.weights)
    scores = score_genes(job.read("evidence"), weights)
    job.record_step("score", {"weights": weights, "genes": scores.height})
    job.save(scores, description="weighted evidence score per gene")
