import polars as pl

frame = pl.read_parquet(snakemake.input.table)
frame.with_columns((pl.col("value") * 2).alias("doubled")).write_parquet(snakemake.output.table)
