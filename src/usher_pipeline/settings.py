"""Defaults and fixed names of the library, written once and imported by every layer.

A leaf module: it imports nothing of the package, so the config model, the store, the job
helpers and the command line can all take their defaults from here without importing each
other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from usher_pipeline.persistence.duckdb_store import PipelineStore

# -- the store ---------------------------------------------------------------------------

DEFAULT_DB_PATH: Final = "results/pipeline.duckdb"
DEFAULT_LOCK_TIMEOUT_S: Final = 120.0  # how long a writer waits for the database lock
LOAD_MEMORY_MB: Final = 128  # DuckDB's memory limit (MB) from a table load to the close

DatabaseMode = Literal["job", "head"]
DATABASE_MODES: Final[tuple[DatabaseMode, ...]] = ("job", "head")
DEFAULT_DATABASE_MODE: Final[DatabaseMode] = "job"

# -- names -------------------------------------------------------------------------------

# A user table (and so a registered table, a layer of the demo, a `{table}` wildcard):
# lowercase letters, digits and underscores, starting with a letter.
TABLE_NAME_PATTERN: Final = r"[a-z][a-z0-9_]*"
TABLE_NAME: Final = re.compile(TABLE_NAME_PATTERN)
MAX_NAME_LENGTH: Final = 63


def is_table_name(text: str) -> bool:
    """Whether `text` is a whole valid table name (fullmatch: no trailing newline slips by)."""
    return TABLE_NAME.fullmatch(text) is not None


# -- the files of a run ------------------------------------------------------------------

DEFAULT_RESULTS_DIR: Final = "results"
DEFAULT_LOGS_DIR: Final = "logs"
RUN_RECORD_NAME: Final = "provenance.json"  # results_dir/<this>: the run-level record

# The key of Snakemake's `config` under which the workflow hands its jobs what identifies
# the run (the library's version).
RUNTIME_KEY: Final = "_usher"


# -- the store settings of a job ---------------------------------------------------------


@dataclass(frozen=True)
class StoreSettings:
    """Where and how jobs write the database, read from Snakemake's `config`.

    These settings change where results go, not what they are, so they travel in the config
    rather than in `params:` (a params change would rerun every job).
    """

    db_path: Path
    lock_timeout: float
    mode: DatabaseMode
    load_memory_mb: int
    pipeline_version: str | None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StoreSettings:
        """The settings in a Snakemake `config` (the library's defaults where it is silent)."""
        store = config.get("store") or {}
        runtime = config.get(RUNTIME_KEY) or {}
        mode = str(store.get("database_mode", DEFAULT_DATABASE_MODE))
        if mode not in DATABASE_MODES:
            from usher_pipeline.errors import UsherError

            raise UsherError(
                f"store.database_mode is '{mode}': use 'job' (jobs write the database) or "
                "'head' (a local rule ingests sentinels, for shared filesystems)"
            )
        return cls(
            db_path=Path(config.get("duckdb_path", DEFAULT_DB_PATH)),
            lock_timeout=float(store.get("lock_timeout_seconds", DEFAULT_LOCK_TIMEOUT_S)),
            mode=mode,
            load_memory_mb=int(store.get("load_memory_mb", LOAD_MEMORY_MB)),
            pipeline_version=runtime.get("pipeline_version"),
        )

    def store(self) -> PipelineStore:
        """A store on the configured database (imported here: this module stays a leaf). It
        has no config hash of its own: each checkpoint records the slice hash of the job
        whose table it describes."""
        from usher_pipeline.persistence.duckdb_store import PipelineStore

        return PipelineStore(self.db_path, self.lock_timeout, load_memory_mb=self.load_memory_mb)
