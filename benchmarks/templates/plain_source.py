import polars as pl

i = int(snakemake.wildcards.i)
n = int(snakemake.params.rows)
frame = pl.DataFrame(
    {
        "id": pl.int_range(i * n, (i + 1) * n, eager=True),
        "value": [float(k % 97) / 7 for k in range(n)],
        "label": [f"gene_{i}_{k}" for k in range(n)],
    }
)
frame.write_parquet(snakemake.output.table)
