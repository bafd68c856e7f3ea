"""Candidate tiers (HIGH/MEDIUM/LOW) and the positive-control report of the known Usher genes."""

from usher_pipeline.demo import assign_tiers, positive_control_report, positive_control_summary
from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    thresholds = dict(snakemake.params.tiers)
    tiers = assign_tiers(job.read("scores"), thresholds["high"], thresholds["medium"])
    counts = dict(tiers.group_by("tier").len().sort("tier").iter_rows())
    job.record_step("assign_tiers", {"thresholds": thresholds, "counts": counts})
    controls = positive_control_report(tiers, job.read("usher"))
    summary = positive_control_summary(controls)
    job.record_step("positive_controls", summary)
    job.save(tiers, output="table", description="ranked candidate genes with tiers")
    job.save(controls, output="controls", description="rank and tier of each known Usher gene")
    job.write_tsv(tiers, "tsv")
    job.write_tsv(controls, "controls_tsv")
