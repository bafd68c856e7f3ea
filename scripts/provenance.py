"""Merge every step log into sidecars, the run-level record and the _provenance table, and
summarise the run for `snakemake --report`."""

from pathlib import Path

from usher_pipeline._io import remove_stale_temps
from usher_pipeline.config.library import validate_library_config
from usher_pipeline.export.summary import write_summary
from usher_pipeline.history.record import HistoryOptions
from usher_pipeline.workflow.job import StoreSettings, job_logger, user_errors
from usher_pipeline.workflow.merge import merge_provenance

log = job_logger("provenance", snakemake.log[0] if snakemake.log else None)
with user_errors(log, "rule provenance"):
    for output in snakemake.output:  # what a merge killed mid-write left
        remove_stale_temps(Path(output))
    library = validate_library_config(snakemake.config)
    history = (
        HistoryOptions(
            results_dir=library.results_dir,
            config=snakemake.config,
            table_meta=dict(snakemake.params.history_meta),
            keep_runs=library.history.keep_runs,
            keep_days=library.history.keep_days,
        )
        if library.history.enabled
        else None
    )
    merge_provenance(
        list(snakemake.input.steplogs),
        pipeline_version=snakemake.params.pipeline_version,
        expected_versions=dict(snakemake.params.expected_versions),
        run_record=snakemake.output.run,
        store=StoreSettings.from_config(snakemake.config).store(),
        ingested=list(snakemake.input.ingested),
        progress=log.info,
        history=history,
    )
    write_summary(snakemake.output.run, snakemake.output.summary)
