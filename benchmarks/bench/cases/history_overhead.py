"""What the run history costs a run: its time, and the disk space its table versions take.

The workflow of benchmarks/templates/history/ writes 3 source tables and 3 derived tables
reading them (`rows_of` rows x 6 columns each: 2,000,000 at full size, about 200 MB of
sentinels in all), and requests the provenance merge, which records the run into the
history. The two variants run that same workflow, with `history.enabled: true` and with
`history.enabled: false` (the baseline: it does all the other work, the merge included), in
fresh folders per repetition. Each repetition runs, the variants in turn at every step:

1. a first run (untimed), then
2. `--forceall` with the same config: every job reruns and writes the same content, so the
   history must keep no new bytes (objects and their bytes held by no sentinel are counted,
   `st_blocks` x 512 of the object files with one link, and the run record's size apart);
3. `--forceall` after a config key that every rule reads changed: every table's content
   differs, at the same size; the history then holds the previous versions, whose bytes
   beyond the current sentinels (object files with one link, and the run records) are
   compared with the size the changed tables' previous sentinels took.

The wall ratio of two runs of a dozen seconds moves by several percent on a shared machine;
so the seconds the provenance job logs for recording the run ("history: recorded run ... in
X s") are reported beside it, added to the baseline run's time.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from bench.harness import FULL, Measure, Workflow, check_tables, in_turn, template_workflow
from bench.results import Comparison, Row, Timing

VARIANTS = ("history", "baseline")
SOURCES = 3  # source tables; as many derived tables read them
QUICK_ROWS = 50_000
FULL_ROWS = 2_000_000
RECORDED = re.compile(r"history: recorded run \S+ \((.*?)\) in ([0-9.]+) s")


def rows_of(measure: Measure) -> int:
    """2,000,000 rows per table at full size, 50,000 in quick mode."""
    return FULL_ROWS if measure.sizes.big_rows >= FULL.big_rows else QUICK_ROWS


def blocks(path: Path) -> int:
    """The bytes a file takes on disk."""
    return path.stat().st_blocks * 512


@dataclass(frozen=True)
class Disk:
    """What a work folder's history and sentinels take on disk at one moment."""

    objects: dict[str, tuple[int, int]]  # object file -> (inode, links)
    own: int  # bytes of the object files only the history holds (one link)
    records: int  # bytes of the run records
    runs: int  # how many run records
    sentinels: int  # bytes of the current sentinels

    @classmethod
    def of(cls, folder: Path) -> Disk:
        results = folder / "results"
        objects_dir = results / "history" / "objects"
        objects: dict[str, tuple[int, int]] = {}
        own = 0
        for path in sorted(objects_dir.glob("*")) if objects_dir.is_dir() else []:
            info = path.stat()
            objects[path.name] = (info.st_ino, info.st_nlink)
            if info.st_nlink == 1:
                own += info.st_blocks * 512
        records = sorted((results / "history" / "runs").glob("*.json"))
        sentinels = sum(blocks(p) for p in (results / "tables").glob("*.parquet"))
        return cls(objects, own, sum(blocks(p) for p in records), len(records), sentinels)

    def added_since(self, before: Disk) -> tuple[int, int]:
        """(object files added, bytes only the history holds that it did not before)."""
        return len(set(self.objects) - set(before.objects)), self.own - before.own


def history_seconds(folder: Path) -> tuple[str, float]:
    """What the provenance job's log says of recording the run, and its seconds."""
    text = (folder / "logs" / "provenance" / "provenance.log").read_text(errors="replace")
    found = RECORDED.findall(text)
    if not found:
        raise RuntimeError(f"{folder}: the provenance log records no run into the history")
    what, seconds = found[-1]
    return what, float(seconds)


def changed_tables(folder: Path) -> list[str]:
    """The tables the latest run record names as changed."""
    runs = sorted((folder / "results" / "history" / "runs").glob("*.json"))
    changed: list[str] = json.loads(runs[-1].read_text())["changed"]["tables"]
    return changed


def workflow_for(measure: Measure, variant: str, rows: int) -> Workflow:
    """A fresh work folder for the template, the history on or off."""
    workflow = template_workflow(measure.work / variant, "history/history", SOURCES, rows)
    set_config(workflow, history=variant == "history", salt=0)
    return workflow


def set_config(workflow: Workflow, *, history: bool, salt: int) -> None:
    path = workflow.folder / "config.yaml"
    config = json.loads(path.read_text())
    config["bench_salt"] = salt
    config["history"] = {"enabled": history, "keep_runs": 20, "keep_days": None}
    path.write_text(json.dumps(config, indent=2))


def run(measure: Measure) -> list[Row]:
    """The history's time and bytes on a run that changes nothing and one that changes all."""
    rows = rows_of(measure)
    tables = 2 * SOURCES
    what = f"{tables} tables of {rows:,} rows x 6 columns"
    compared = "the same workflow, history.enabled: false"
    unchanged_time = Row(
        f"run history, --forceall run changing nothing, {what}", compared, "<= 1.02", 1.02
    )
    unchanged_bytes = Row(
        f"run history, bytes kept by a run changing nothing, per sentinel byte, {what}",
        "the current sentinels",
        "0",
        0.0,
    )
    changed_time = Row(f"run history, run changing every table, {what}", compared, "report", None)
    changed_bytes = Row(
        f"run history, bytes held beyond the sentinels after a run changing every table, {what}",
        "the changed tables' previous sentinels",
        "<= 1.05",
        1.05,
    )
    # the wall-time ratio of two runs of a dozen seconds moves by more than 2% on a shared
    # machine; the seconds the provenance job logs for recording the run do not
    recording = Row(
        f"run history, --forceall run changing nothing: its recording time (provenance log) "
        f"added to the baseline run, {what}",
        "the baseline run",
        "report",
        None,
    )
    notes: dict[str, list[str]] = {"unchanged": [], "changed": [], "ub": [], "cb": []}

    def repetition(rep: int) -> dict[str, Timing]:
        order = in_turn(VARIANTS, rep)
        flows = {variant: workflow_for(measure, variant, rows) for variant in order}
        for variant in order:
            measure.snakemake(flows[variant])
        first = Disk.of(flows["history"].folder)
        timings: dict[str, Timing] = {}
        for variant in order:
            timings[f"unchanged {variant}"] = measure.snakemake(flows[variant], "--forceall")
        unchanged = Disk.of(flows["history"].folder)
        if changed_tables(flows["history"].folder):
            raise RuntimeError("the run meant to change nothing changed tables")
        _, seconds_unchanged = history_seconds(flows["history"].folder)
        for variant in order:
            set_config(flows[variant], history=variant == "history", salt=1)
        for variant in order:
            timings[f"changed {variant}"] = measure.snakemake(flows[variant], "--forceall")
            check_tables(flows[variant].folder, tables)
        changed = Disk.of(flows["history"].folder)
        if len(changed_tables(flows["history"].folder)) != tables:
            raise RuntimeError("the run meant to change every table left some unchanged")
        _, seconds_changed = history_seconds(flows["history"].folder)
        baseline_history = flows["baseline"].folder / "results" / "history" / "runs"
        if changed.runs != 3 or any(baseline_history.glob("*.json")):
            raise RuntimeError(
                f"expected 3 recorded runs with the history and none without, found "
                f"{changed.runs} and {len(list(baseline_history.glob('*.json')))}"
            )

        added_objects, added_bytes = unchanged.added_since(first)
        record = unchanged.records - first.records
        unchanged_bytes.add(added_bytes / unchanged.sentinels)
        notes["ub"].append(
            f"{added_objects} objects, {added_bytes:,} bytes (run record {record:,} bytes; "
            f"sentinels {unchanged.sentinels:,})"
        )
        previous = unchanged.sentinels  # every table changed: all of its previous versions
        held = changed.own + changed.records
        changed_bytes.add(held / previous)
        notes["cb"].append(
            f"{changed.own:,} object bytes + {changed.records:,} record bytes over {previous:,}"
        )
        baseline = timings["unchanged baseline"].seconds
        recording.add((baseline + seconds_unchanged) / baseline)
        recording.time("recording", seconds_unchanged)
        recording.time("baseline", baseline)
        notes["unchanged"].append(f"{seconds_unchanged:.2f}")
        notes["changed"].append(f"{seconds_changed:.2f}")
        unchanged_time.extra = (
            f"recording the run took {', '.join(notes['unchanged'])} s (provenance log)"
        )
        changed_time.extra = f"recording the run took {', '.join(notes['changed'])} s"
        recording.extra = f"recording the run took {', '.join(notes['unchanged'])} s"
        unchanged_bytes.extra = "; ".join(notes["ub"])
        changed_bytes.extra = "; ".join(notes["cb"])
        unchanged_bytes.ok_extra = all(n.startswith("0 objects") for n in notes["ub"])
        return timings

    names = ("history", "baseline")
    comparisons = [
        Comparison(unchanged_time, "unchanged history", "unchanged baseline", names),
        Comparison(changed_time, "changed history", "changed baseline", names),
    ]
    return measure.repeat(
        "history overhead",
        [unchanged_time, recording, unchanged_bytes, changed_time, changed_bytes],
        comparisons,
        repetition,
    )
