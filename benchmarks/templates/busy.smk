# Jobs that compute for bench_compute seconds of CPU, then save a table through the library.
# Each job declares one unit of duckdb_writer: a run given `--resources duckdb_writer=1` runs
# whole jobs one at a time, a run without it leaves the store's lock to serialise the commits.


configfile: "config.yaml"


include: "../../rules/library.smk"


N = int(config["bench_jobs"])
for _i in range(N):
    USHER.register(f"src_{_i}")


include: "../../rules/provenance.smk"


wildcard_constraints:
    i=r"\d+",


rule all:
    default_target: True
    input:
        [USHER.sentinel(f"src_{i}") for i in range(N)],


rule source:
    output:
        table=USHER.sentinel("src_{i}"),
        steplog=USHER.steplog("src_{i}"),
    log:
        USHER.log("source", "src_{i}"),
    resources:
        duckdb_writer=1,
    params:
        compute=config["bench_compute"],
    script:
        "busy.py"
