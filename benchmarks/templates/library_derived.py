import polars as pl

from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    frame = job.read("table")
    job.save(frame.with_columns((pl.col("value") * 2).alias("doubled")), description="derived")
