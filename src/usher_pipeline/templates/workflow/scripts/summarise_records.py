"""Summarise the fetched records as a one-row table and a TSV report."""

import polars as pl

from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    records = job.read("records")  # the input sentinel, read without the database lock
    threshold = int(snakemake.params.threshold)
    summary = records.select(
        pl.len().alias("records"),
        (pl.col("value") >= threshold).sum().alias("at_or_above_threshold"),
        pl.col("value").min().alias("min_value"),
        pl.col("value").max().alias("max_value"),
    )
    job.record_step("summarise", {"threshold": threshold, **summary.row(0, named=True)})
    job.save(summary, description=f"how many records, and how many at or above {threshold}")
    job.write_tsv(summary, "tsv")
