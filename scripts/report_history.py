"""The report's "Changes since the previous run" page and this run's lineage picture, from the
run history that the provenance rule recorded this run into."""

import base64
from pathlib import Path

from usher_pipeline._io import read_json, remove_stale_temps
from usher_pipeline.errors import UsherError
from usher_pipeline.export.changes import write_changes
from usher_pipeline.export.pictures import draw_lineage
from usher_pipeline.history.diff import diff_runs
from usher_pipeline.history.store import History
from usher_pipeline.workflow.job import job_logger, user_errors

log = job_logger("usher_history_report", snakemake.log[0] if snakemake.log else None)
with user_errors(log, "rule usher_history_report"):
    changes, lineage = Path(snakemake.output.changes), Path(snakemake.output.lineage)
    for output in (changes, lineage):  # what a killed job left
        remove_stale_temps(output)
    provenance_run_id = read_json(snakemake.input.run)["run_id"]
    history = History(snakemake.config.get("results_dir", "results"))
    run = history.run_for_provenance(provenance_run_id)
    if run is None:
        note = (
            f"This run (provenance run {provenance_run_id}) is not in the run history "
            f"{history.runs_dir}, so nothing can be compared with it."
        )
        log.info("%s", note)
        draw_lineage({"run_id": provenance_run_id, "tables": {}}, lineage)
        write_changes(None, changes, note=note)
    else:
        draw_lineage(run, lineage)
        picture = "data:image/png;base64," + base64.b64encode(lineage.read_bytes()).decode()
        previous = history.previous(run)
        if previous is None:
            log.info("run %s is the first recorded run: nothing to compare", run["run_id"])
            write_changes(None, changes, lineage_png=picture)
        else:
            log.info("comparing run %s with run %s", run["run_id"], previous["run_id"])
            try:
                diff = diff_runs(history, previous, run, progress=log.info).as_json()
            except UsherError as error:  # a declared key that is not unique: say so, go on
                note = (
                    f"The runs {previous['run_id']} and {run['run_id']} cannot be compared: {error}"
                )
                log.warning("%s", note)
                write_changes(None, changes, lineage_png=picture, note=note)
            else:
                write_changes(diff, changes, lineage_png=picture)
