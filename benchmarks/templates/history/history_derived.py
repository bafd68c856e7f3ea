import polars as pl

from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    salt = float(snakemake.params.salt)
    frame = job.read("table")
    job.save(
        frame.with_columns((pl.col("weight") * 2 + salt).alias("weight")),
        description="derived",
    )
