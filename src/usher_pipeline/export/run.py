"""The step logs of one run, read from `<results>/steplogs/`, in the order the jobs ran.

Every export (PROV, RO-Crate, the report's provenance summary) and the `verify`/`repair`
commands start from this: the step logs are the run's complete, self-describing record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from usher_pipeline._io import read_json
from usher_pipeline.config.hashing import jobs_config_hash
from usher_pipeline.errors import UsherError
from usher_pipeline.lineage import Lineage, step_label
from usher_pipeline.settings import RUN_RECORD_NAME
from usher_pipeline.steplog import load_steplog


class RunRecordError(UsherError):
    """A results directory without step logs, or with step logs that cannot be read."""


@dataclass
class TableOutput:
    """One table a job saved: the step log entry and where it came from."""

    table: str
    sentinel: Path
    entry: dict[str, Any]
    record: dict[str, Any]
    steplog: Path


@dataclass
class RunRecords:
    """Every step log below a results directory, upstream jobs first."""

    results_dir: Path
    records: list[dict[str, Any]]
    steplogs: list[Path]
    lineage: Lineage = field(init=False)

    def __post_init__(self) -> None:
        found = Lineage(self.records)
        self.lineage = found.upstream_first()
        self.records = self.lineage.records
        self.steplogs = [self.steplogs[i] for i in found.order]

    @property
    def run_record(self) -> dict[str, Any] | None:
        """The merged run-level record `<results>/provenance.json`, when the run wrote it."""
        path = self.results_dir / RUN_RECORD_NAME
        return read_json(path) if path.is_file() else None

    def tables(self) -> dict[str, TableOutput]:
        """Every table saved by a job of the run, by name."""
        found: dict[str, TableOutput] = {}
        for record, path in zip(self.records, self.steplogs, strict=True):
            for entry in record["outputs"]:
                if entry.get("table"):
                    found[entry["table"]] = TableOutput(
                        entry["table"], Path(entry["path"]), entry, record, path
                    )
        return found

    def config_hash(self) -> str | None:
        """The run's config hash: the run record's, else that of the config slices the jobs
        recorded (the same definition, `config.hashing.jobs_config_hash`)."""
        run = self.run_record
        if run and run.get("config_hash"):
            return str(run["config_hash"])
        return jobs_config_hash(self.records) if self.records else None

    def software(self) -> dict[str, str]:
        """Versions of the software the jobs ran with (the last job's win on a conflict)."""
        return software_versions(self.records)

    def labels(self) -> list[str]:
        """'rule[wildcards]' of every job, in order."""
        return [step_label(r) for r in self.records]


def software_versions(records: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The union of the step logs' software versions, as text; a later job's wins on a conflict."""
    versions: dict[str, str] = {}
    for record in records:
        versions.update({k: str(v) for k, v in (record.get("software") or {}).items()})
    return versions


def load_run(results_dir: str | Path) -> RunRecords:
    """Read every step log of a results directory; fail with a hint when there are none."""
    root = Path(results_dir)
    folder = root / "steplogs"
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not paths:
        raise RunRecordError(
            f"no step logs in {folder}: run the workflow first (snakemake --cores 2) or pass "
            "--results DIR of a finished run"
        )
    return RunRecords(root, [load_steplog(p) for p in paths], paths)


def parse_time(value: str | None) -> datetime | None:
    """A step log timestamp ('2026-11-29T20:01:02.123456Z') as an aware UTC datetime."""
    if not value:
        return None
    stamp = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
