# Several large tables written as a user of the library would, for the run history's overhead:
# bench_jobs source tables of bench_rows rows x 6 columns and as many derived tables reading
# them. Every rule reads `bench_salt`, so changing it changes every table's content (not its
# size). Run from a work folder holding config.yaml (bench_*, store, history.enabled).


configfile: "config.yaml"


include: "../../../rules/library.smk"


N = int(config["bench_jobs"])
for _i in range(N):
    USHER.register(f"src_{_i}", key=["id"], noun="rows", label="name")
    USHER.register(f"derived_{_i}", key=["id"], noun="rows", label="name")


include: "../../../rules/provenance.smk"


wildcard_constraints:
    i=r"\d+",


rule all:
    default_target: True
    input:
        [USHER.sentinel(f"derived_{i}") for i in range(N)],
        USHER.run_record,


rule source:
    output:
        table=USHER.sentinel("src_{i}"),
        steplog=USHER.steplog("src_{i}"),
    log:
        USHER.log("source", "src_{i}"),
    params:
        rows=config["bench_rows"],
        salt=config["bench_salt"],
    script:
        "history_source.py"


rule derived:
    input:
        table=USHER.sentinel("src_{i}"),
    output:
        table=USHER.sentinel("derived_{i}"),
        steplog=USHER.steplog("derived_{i}"),
    log:
        USHER.log("derived", "derived_{i}"),
    params:
        salt=config["bench_salt"],
    script:
        "history_derived.py"
