# usher_pipeline rule library: shared state and helpers for any workflow that stores its
# results with usher_pipeline. Include this file first, register each table your rules
# save (USHER.register(...)), then include provenance.smk last.
#
#   include: "<path to usher_pipeline>/rules/library.smk"
#   USHER.register("my_table")                  # job saving results/tables/my_table.parquet
#   include: "<path to usher_pipeline>/rules/provenance.smk"


from usher_pipeline import __version__ as USHER_VERSION
from usher_pipeline.hashing import sha256_json
from usher_pipeline.workflow.layout import Layout

USHER = Layout(
    results_dir=str(config.get("results_dir", "results")),
    logs_dir=str(config.get("logs_dir", "logs")),
)
# Written by the workflow, read by the job helpers: what identifies this run's config.
config.setdefault(
    "_usher",
    {
        "config_hash": sha256_json(
            {k: v for k, v in config.items() if not str(k).startswith("_")}
        ),
        "pipeline_version": USHER_VERSION,
    },
)
USHER_DATABASE_MODE = str((config.get("store") or {}).get("database_mode", "job"))


wildcard_constraints:
    table="[a-z][a-z0-9_]*",


def usher_steplogs(wildcards):
    """Every registered step log (resolved when the DAG is built, after registration)."""
    return USHER.steplogs()


def usher_ingest_markers(wildcards):
    """In 'head' database mode, the markers of every table ingested on the submit host."""
    return USHER.ingest_markers() if USHER_DATABASE_MODE == "head" else []


def usher_ingest_inputs(wildcards):
    """The sentinel and step log of the table one ingest job loads."""
    table = wildcards.table
    if table not in USHER.tables:
        raise ValueError(f"table '{table}' is not registered with USHER.register(...)")
    return {
        "table": USHER.sentinel(table),
        "steplog": USHER.steplog(USHER.tables[table]),
    }
