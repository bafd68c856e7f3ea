"""The demo's score distribution for the report: every gene's score, the HIGH and MEDIUM
thresholds and where the positive controls (the known Usher genes) landed."""

from pathlib import Path

from usher_pipeline._io import remove_stale_temps
from usher_pipeline.export.pictures import draw_score_distribution
from usher_pipeline.workflow.job import job_logger, user_errors

log = job_logger("score_distribution", snakemake.log[0] if snakemake.log else None)
with user_errors(log, "rule score_distribution"):
    picture = Path(snakemake.output.picture)
    remove_stale_temps(picture)
    thresholds = dict(snakemake.params.tiers)
    draw_score_distribution(
        Path(snakemake.input.tiers),
        Path(snakemake.input.controls),
        high=thresholds["high"],
        medium=thresholds["medium"],
        path=picture,
    )
    log.info("drew %s", picture)
