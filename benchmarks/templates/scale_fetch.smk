# The scale case: one fetch job asks the loopback API bench_queries questions per key, through
# the source client inside job.fetch, a few batches in flight. Run from a work folder holding
# config.yaml (bench_keys, bench_queries, bench_url, api, cache_dir).


configfile: "config.yaml"


include: "../../rules/library.smk"


USHER.register("answers")


rule all:
    default_target: True
    input:
        USHER.sentinel("answers"),


rule fetch_answers:
    output:
        table=USHER.sentinel("answers"),
        steplog=USHER.steplog("answers"),
    log:
        USHER.log("fetch_answers", "answers"),
    params:
        genes=config["bench_keys"],
        queries=config["bench_queries"],
        url=config["bench_url"],
        batch_size=config["bench_batch_size"],
        in_flight=config["bench_in_flight"],
    script:
        "scale_fetch.py"
