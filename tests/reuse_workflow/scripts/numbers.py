"""Source rule of the reuse workflow: the numbers 0 .. count-1 as a table."""

import polars as pl

from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    count = int(snakemake.params.how_many)
    job.record_step("make_numbers", {"count": count})
    job.save(pl.DataFrame({"n": list(range(count))}), description="the numbers 0 .. count-1")
