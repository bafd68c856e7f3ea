# The DAG of library.smk written without the library: polars read_parquet / write_parquet.


configfile: "config.yaml"


N = int(config["bench_jobs"])


wildcard_constraints:
    i=r"\d+",


rule all:
    default_target: True
    input:
        [f"results/tables/derived_{i}.parquet" for i in range(N)],


rule source:
    output:
        table="results/tables/src_{i}.parquet",
    params:
        rows=config["bench_rows"],
    script:
        "plain_source.py"


rule derived:
    input:
        table="results/tables/src_{i}.parquet",
    output:
        table="results/tables/derived_{i}.parquet",
    script:
        "plain_derived.py"
