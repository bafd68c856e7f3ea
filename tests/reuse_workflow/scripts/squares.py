"""Each number and its square, computed in batches through the resumable fetch."""

import polars as pl

from usher_pipeline.workflow import Job


def squares(batch: list[int]) -> pl.DataFrame:
    """One batch of the transform, standing in for a call to an external service."""
    return pl.DataFrame({"n": batch, "square": [n * n for n in batch]})


with Job(snakemake) as job:
    numbers = job.read("numbers")["n"].to_list()
    result = job.fetch(numbers, squares, batch_size=int(snakemake.params.batch_size))
    job.save(result, description="n and its square")
