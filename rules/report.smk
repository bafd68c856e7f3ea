# The report's history pages: what changed since the previous run and this run's lineage.
# Included by provenance.smk (and module.smk): it reads the run record that the provenance
# rule writes after recording the run into <results_dir>/history/.


rule usher_history_report:
    input:
        run=USHER.run_record,
    output:
        changes=report(
            USHER.final("changes.html"),
            caption="../report/changes.rst",
            category="Provenance",
        ),
        lineage=report(
            USHER.final("lineage.png"),
            caption="../report/lineage.rst",
            category="Provenance",
        ),
    log:
        USHER.log("usher_history_report", "usher_history_report"),
    localrule: True
    conda:
        "../envs/usher_pipeline.yaml"
    script:
        "../scripts/report_history.py"
