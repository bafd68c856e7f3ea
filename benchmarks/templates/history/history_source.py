import polars as pl

from usher_pipeline.workflow import Job

# 6 columns: the key, two doubles (one moved by the salt), a label, a count and a category
with Job(snakemake) as job:
    i = int(snakemake.wildcards.i)
    n = int(snakemake.params.rows)
    salt = float(snakemake.params.salt)
    ids = pl.int_range(i * n, (i + 1) * n, eager=True, dtype=pl.Int64).alias("id")
    frame = pl.DataFrame(ids).with_columns(
        (pl.col("id") * 0.5 + salt).alias("score"),
        ((pl.col("id").hash(7) % 1_000_003).cast(pl.Float64) / 7.0).alias("weight"),
        pl.format("gene_{}", pl.col("id")).alias("name"),
        (pl.col("id").hash(11) % 1000).cast(pl.Int64).alias("count"),
        pl.when(pl.col("id") % 3 == 0)
        .then(pl.lit("low"))
        .when(pl.col("id") % 3 == 1)
        .then(pl.lit("mid"))
        .otherwise(pl.lit("high"))
        .alias("tier"),
    )
    job.save(frame, description="source")
