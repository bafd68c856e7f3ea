# The usher_pipeline library of rules. Shared state and helpers for any workflow that stores its
# results with usher_pipeline. Include this file first, register each table your rules
# save (USHER.register(...)), then include provenance.smk last.
#
#   include: "<path to usher_pipeline>/rules/library.smk"
#   USHER.register("my_table")                  # job saving results/tables/my_table.parquet
#   include: "<path to usher_pipeline>/rules/provenance.smk"
#
# Or load the provenance rules as a module (rules/module.smk) after registering.


import os
import sys
from pathlib import Path

from usher_pipeline import __version__ as USHER_VERSION
from usher_pipeline.config.library import validate_library_config
from usher_pipeline.config.loader import check_config_file
from usher_pipeline.errors import UsherError
from usher_pipeline.settings import (
    DEFAULT_DATABASE_MODE,
    DEFAULT_LOGS_DIR,
    DEFAULT_RESULTS_DIR,
    RUNTIME_KEY,
    TABLE_NAME_PATTERN,
)
from usher_pipeline.workflow.fetch import remaining_share
from usher_pipeline.workflow.interpreter import plain_interpreter
from usher_pipeline.workflow.layout import Layout, new_registry, rule_paths
from usher_pipeline.workflow.runguard import (
    claim_workdir,
    rerun_incomplete,
    rerun_incomplete_when_ready,
)

# YAML keeps the last of a key given twice in a config file: refuse that before any job runs.
# Then the library's own keys (paths, workflow_name, store, api, versions): a misspelt one, a
# wrong type or bound stops the run in one line; the workflow's own keys stay free.
try:
    for _usher_configfile in workflow.configfiles:
        check_config_file(_usher_configfile)
    validate_library_config(config, workflow.configfiles)
except UsherError as error:
    sys.exit(f"usher_pipeline: {error}")

# The registry of tables lives in the config, which Snakemake hands to a module as the same
# object: the rules of a `module` given `config: config` see what was registered here.
# Table patterns ("stats_{chrom}") are expanded when provenance.smk is included.
USHER_REGISTRY = config.setdefault("_usher_registry", new_registry())
USHER = Layout(
    results_dir=str(config.get("results_dir", DEFAULT_RESULTS_DIR)),
    logs_dir=str(config.get("logs_dir", DEFAULT_LOGS_DIR)),
    registry=USHER_REGISTRY,
    exit_on_error=True,
)
# Written by the workflow, read by the job helpers. No hash of the whole config: each job
# records the hash of its own slice, its params (config/hashing.py, config/README.md).
config.setdefault(RUNTIME_KEY, {"pipeline_version": USHER_VERSION})
USHER_DATABASE_MODE = str(
    (config.get("store") or {}).get("database_mode", DEFAULT_DATABASE_MODE)
)
# The checkout that envs/usher_pipeline.yaml installs with `--sdm conda` (pip expands it).
if workflow.current_basedir.is_local:
    os.environ.setdefault(
        "USHER_PIPELINE_ROOT",
        str(Path(workflow.current_basedir.get_path_or_uri(secret_free=True)).parent),
    )


# Snakemake runs script jobs with an unquoted interpreter path (workflow/interpreter.py).
sys.executable = plain_interpreter(sys.executable, sys.prefix)
# Resume with the same command after a hard kill: the main process holds a run lock for its
# lifetime, and Snakemake locks that no live run holds are cleared (see workflow/runguard.py).
if workflow.is_main_process:
    USHER_RUN_GUARD = claim_workdir(Path.cwd())
    if USHER_RUN_GUARD is not None and USHER_RUN_GUARD.cleared:
        print(
            "usher_pipeline: removed the Snakemake locks left by a run that was killed "
            f"({len(USHER_RUN_GUARD.cleared)} files in .snakemake/locks)",
            file=sys.stderr,
        )
    # A job killed after writing its outputs, before Snakemake recorded it finished, reruns
    # (as with --rerun-incomplete): its outputs are renamed into place whole, and its batched
    # fetch keeps its batches until the provenance merge (workflow/runguard.py).
    rerun_incomplete_when_ready(workflow)
# The run manifest that the `usher-pipeline` command reads (where the store, results and
# config are): written when Snakemake starts executing, after the whole Snakefile is parsed.
if workflow.is_main_process:
    from usher_pipeline.workflow.manifest import write_manifest_at_start

    write_manifest_at_start(
        workflow,
        config,
        library_rules=(
            Path(workflow.current_basedir.get_path_or_uri(secret_free=True))
            if workflow.current_basedir.is_local
            else None
        ),
    )


wildcard_constraints:
    table=TABLE_NAME_PATTERN,


def usher_steplogs(wildcards):
    """Every registered step log (resolved when the DAG is built, after registration)."""
    if workflow.is_main_process:  # the DAG settings exist now, before incomplete checks
        rerun_incomplete(workflow)
    return USHER.steplogs()


def usher_fetch_priority(table):
    """The priority of a job that fetches `table` (a pattern such as "evidence_{layer}") with
    `job.fetch`: the share of its batches still to fetch, 1 until it starts. After a crash
    the fetches with the most left to do start first, beside the interrupted ones.

        priority: usher_fetch_priority("evidence_{layer}")
    """

    def priority(wildcards):
        return remaining_share(USHER.sentinel(table.format(**wildcards)))

    return priority


def usher_ingest_record(wildcards):
    """In 'head' database mode, the record of the tables ingested on the submit host."""
    return [USHER.ingest_record] if USHER_DATABASE_MODE == "head" else []


def usher_ingest_inputs(wildcards):
    """The sentinels and step logs of every registered table, for the head-node ingest."""
    return {
        "tables": [USHER.sentinel(table) for table in USHER.tables],
        "steplogs": USHER.table_steplogs(),
    }
