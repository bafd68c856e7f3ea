"""Head-node ingest: load one job's sentinel into the database with its checkpoint row."""

from usher_pipeline.workflow.ingest import ingest_sentinel
from usher_pipeline.workflow.job import StoreSettings, job_logger, user_errors

log = job_logger("ingest", snakemake.log[0] if snakemake.log else None)
with user_errors(log, f"rule ingest ({snakemake.wildcards.table})"):
    ingest_sentinel(
        StoreSettings.from_config(snakemake.config).store(),
        sentinel=snakemake.input.table,
        steplog=snakemake.input.steplog,
        marker=snakemake.output.marker,
        progress=log.info,
    )
