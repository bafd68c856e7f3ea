# The workflow's own rules: a table, its transform through the resumable batched fetch, and
# a summary as a table and a TSV report. Shared by Snakefile and Snakefile_module.


rule numbers:
    output:
        table=USHER.sentinel("numbers"),
        steplog=USHER.steplog("numbers"),
    log:
        USHER.log("numbers", "numbers"),
    conda:
        "../../envs/usher_pipeline.yaml"
    params:
        how_many=config["count"],
    script:
        "scripts/numbers.py"


rule squares:
    input:
        numbers=USHER.sentinel("numbers"),
    output:
        table=USHER.sentinel("squares"),
        steplog=USHER.steplog("squares"),
    log:
        USHER.log("squares", "squares"),
    conda:
        "../../envs/usher_pipeline.yaml"
    params:
        batch_size=config["batch_size"],
    script:
        "scripts/squares.py"


rule square_summary:
    input:
        squares=USHER.sentinel("squares"),
    output:
        table=USHER.sentinel("square_summary"),
        tsv=USHER.final("square_summary.tsv"),
        steplog=USHER.steplog("square_summary"),
    log:
        USHER.log("square_summary", "square_summary"),
    conda:
        "../../envs/usher_pipeline.yaml"
    script:
        "scripts/square_summary.py"
