"""Head-node ingest: load every table's sentinel into the database with its checkpoint row."""

from usher_pipeline.workflow.ingest import ingest_sentinels
from usher_pipeline.workflow.job import StoreSettings, job_logger, user_errors

log = job_logger("ingest", snakemake.log[0] if snakemake.log else None)
with user_errors(log, "rule ingest"):
    ingest_sentinels(
        StoreSettings.from_config(snakemake.config).store(),
        list(snakemake.input.tables),
        list(snakemake.input.steplogs),
        record=snakemake.output.record,
        progress=log.info,
    )
