# Small jobs written as a user of the library would: library.smk, register, provenance.smk.
# Run from a work folder holding config.yaml (bench_jobs, bench_rows, store.database_mode).


configfile: "config.yaml"


include: "../../rules/library.smk"


N = int(config["bench_jobs"])
for _i in range(N):
    USHER.register(f"src_{_i}")
    USHER.register(f"derived_{_i}")


include: "../../rules/provenance.smk"


wildcard_constraints:
    i=r"\d+",


rule all:
    default_target: True
    input:
        [USHER.sentinel(f"derived_{i}") for i in range(N)],
        usher_ingest_record,


rule source:
    output:
        table=USHER.sentinel("src_{i}"),
        steplog=USHER.steplog("src_{i}"),
    log:
        USHER.log("source", "src_{i}"),
    params:
        rows=config["bench_rows"],
    script:
        "library_source.py"


rule derived:
    input:
        table=USHER.sentinel("src_{i}"),
    output:
        table=USHER.sentinel("derived_{i}"),
        steplog=USHER.steplog("derived_{i}"),
    log:
        USHER.log("derived", "derived_{i}"),
    script:
        "library_derived.py"
