"""Defaults and fixed names of the library, written once and imported by every layer.

A leaf module: it imports nothing of the package, so the config model, the store, the job
helpers and the command line can all take their defaults from here without importing each
other.
"""

from __future__ import annotations

import re
from typing import Final, Literal

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
# the run (config hash, library version).
RUNTIME_KEY: Final = "_usher"
