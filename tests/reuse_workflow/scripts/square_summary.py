"""Summary of the squares as a one-row table and a TSV report."""

import polars as pl

from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    squares = job.read("squares")
    summary = squares.select(
        pl.len().alias("numbers"), pl.col("square").sum().alias("sum_of_squares")
    )
    job.record_step("summarise", summary.row(0, named=True))
    job.save(summary, description="how many numbers and the sum of their squares")
    job.write_tsv(summary, "tsv")
