"""The library's download rule: one bulk file, resumed after a kill (rules/download.smk)."""

from usher_pipeline.sources.download import download_for_job
from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    download_for_job(job)
