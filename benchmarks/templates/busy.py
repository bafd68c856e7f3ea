import time

import polars as pl

from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    deadline = time.process_time() + float(snakemake.params.compute)
    total = 0
    while time.process_time() < deadline:
        total += sum(range(1000))
    i = int(snakemake.wildcards.i)
    frame = pl.DataFrame({"id": pl.int_range(i * 1000, (i + 1) * 1000, eager=True)})
    job.save(frame.with_columns(pl.lit(total).alias("work")), description="busy")
