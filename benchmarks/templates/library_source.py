import polars as pl

from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    i = int(snakemake.wildcards.i)
    n = int(snakemake.params.rows)
    frame = pl.DataFrame(
        {
            "id": pl.int_range(i * n, (i + 1) * n, eager=True),
            "value": [float(k % 97) / 7 for k in range(n)],
            "label": [f"gene_{i}_{k}" for k in range(n)],
        }
    )
    job.save(frame, description="source")
