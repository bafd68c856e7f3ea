# The batched fetch: one record per key, committed batch by batch (scripts/fetch_records.py).


rule records:
    output:
        table=USHER.sentinel("records"),
        steplog=USHER.steplog("records"),
    log:
        USHER.log("records", "records"),
    priority: usher_fetch_priority("records")
    conda:
        "../envs/workflow.yaml"
    params:
        # what is fetched: a change reruns this job and everything downstream
        how_many=config["records"]["how_many"],
        prefix=config["records"]["prefix"],
    script:
        "../scripts/fetch_records.py"
