"""Path conventions of a run and the registry of what it produces.

A workflow registers each stored table (and each extra file such as a TSV report) with the
job whose step log describes it; the provenance rule then knows every step log to merge and
every sidecar to write, and the head-node ingest knows every table to load.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from usher_pipeline.persistence.duckdb_store import validate_table_name
from usher_pipeline.persistence.provenance import sidecar_path
from usher_pipeline.settings import DEFAULT_LOGS_DIR, DEFAULT_RESULTS_DIR, RUN_RECORD_NAME


@dataclass
class Layout:
    """Where a run's files go, below `results_dir` (and `logs_dir` for job logs)."""

    results_dir: str = DEFAULT_RESULTS_DIR
    logs_dir: str = DEFAULT_LOGS_DIR
    tables: dict[str, str] = field(default_factory=dict)  # table -> step log name
    files: dict[str, str] = field(default_factory=dict)  # file path -> step log name

    def __post_init__(self) -> None:
        self.results_dir = str(Path(self.results_dir))

    # -- paths -----------------------------------------------------------------------------

    def sentinel(self, table: str) -> str:
        """The sentinel Parquet of a table."""
        return f"{self.results_dir}/tables/{table}.parquet"

    def steplog(self, name: str) -> str:
        """The step log of the job named `name` (by convention its main table)."""
        return f"{self.results_dir}/steplogs/{name}.json"

    def final(self, name: str) -> str:
        """A final output (report) of the run."""
        return f"{self.results_dir}/final/{name}"

    def log(self, rule: str, name: str) -> str:
        """The text log of one job."""
        return f"{self.logs_dir}/{rule}/{name}.log"

    @property
    def ingest_record(self) -> str:
        """What the head-node ingest loaded into the database (head database mode only)."""
        return f"{self.results_dir}/ingested.json"

    @property
    def run_record(self) -> str:
        """The run-level provenance record."""
        return f"{self.results_dir}/{RUN_RECORD_NAME}"

    # -- registry --------------------------------------------------------------------------

    def register(
        self, *tables: str, steplog: str | None = None, files: Iterable[str | Path] = ()
    ) -> None:
        """Record tables (and extra files) made by one job, whose step log is `steplog`
        (by default named after the first table)."""
        if not tables and steplog is None:
            raise ValueError("register() needs at least one table or a steplog name")
        name = steplog or tables[0]
        for table in tables:
            self.tables[validate_table_name(table)] = name
        for path in files:
            self.files[str(path)] = name

    def steplogs(self) -> list[str]:
        """Every registered step log, without repeats."""
        names = dict.fromkeys([*self.tables.values(), *self.files.values()])
        return [self.steplog(name) for name in names]

    def products(self) -> list[str]:
        """Every registered sentinel and extra file."""
        return [self.sentinel(t) for t in self.tables] + list(self.files)

    def sidecars(self) -> list[str]:
        """The sidecar of every product."""
        return [str(sidecar_path(p)) for p in self.products()]

    def table_steplogs(self) -> list[str]:
        """The step log of every job that saves a registered table, without repeats."""
        return [self.steplog(name) for name in dict.fromkeys(self.tables.values())]
