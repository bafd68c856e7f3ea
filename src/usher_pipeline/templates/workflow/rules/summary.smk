# A derived table and its TSV report (scripts/summarise_records.py).


rule record_summary:
    input:
        records=USHER.sentinel("records"),
    output:
        table=USHER.sentinel("record_summary"),
        tsv=USHER.final("record_summary.tsv"),
        steplog=USHER.steplog("record_summary"),
    log:
        USHER.log("record_summary", "record_summary"),
    conda:
        "../envs/workflow.yaml"
    params:
        threshold=config["summary"]["threshold"],
    script:
        "../scripts/summarise_records.py"
