# Provenance: merge every step log into a sidecar beside each product, a run-level record
# and rows of the store's _provenance table. Include after every USHER.register(...).
# Its config hashes come from the step logs (each job's slice), so a config key that no job
# receives reruns nothing; only the library's version and the config's `versions` (the data
# source versions it expects, which the run record keeps beside those the jobs recorded) and
# the tables' keys for `usher-pipeline diff` (USHER.register(..., key=...)) are params. The
# job also records the run into the run history (<results_dir>/history, docs/history.md).


# The provenance rule's outputs are fixed here: table patterns take the values that the
# rules defined so far name (and those given at registration), or stop the run.
USHER.expand_patterns(rule_paths(workflow.rules))


include: "ingest.smk"
include: "report.smk"


rule provenance:
    input:
        steplogs=usher_steplogs,
        ingested=usher_ingest_record,
    output:
        sidecars=USHER.sidecars(),
        run=USHER.run_record,
        summary=report(
            USHER.final("provenance_summary.html"),
            caption="../report/provenance_summary.rst",
            category="Provenance",
        ),
    log:
        USHER.log("provenance", "provenance"),
    localrule: True
    conda:
        "../envs/usher_pipeline.yaml"
    params:
        pipeline_version=USHER_VERSION,
        expected_versions=config.get("versions") or {},
        history_meta=USHER.history_meta(),
    script:
        "../scripts/provenance.py"
