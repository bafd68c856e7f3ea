"""The store's seed import path: `PipelineStore` and the helpers other modules import from here.

The code lives in `store` (PipelineStore), `frames` (frame conversion and Parquet writing),
`sql` (identifiers and table names) and `catalog` (the store's own tables).
"""

from __future__ import annotations

from usher_pipeline.persistence.catalog import CHECKPOINT_COLUMNS, CHECKPOINTS, PROVENANCE
from usher_pipeline.persistence.errors import StoreError, StoreLockTimeout  # noqa: F401 - old path
from usher_pipeline.persistence.frames import (
    DUCKDB_ROW_GROUP_ROWS,
    relation_frame,
    to_polars,
    write_parquet,
)
from usher_pipeline.persistence.sql import (
    MAX_NAME_LENGTH,
    quote_identifier,
    retype_null_columns,
    validate_table_name,
)
from usher_pipeline.persistence.store import PipelineStore
from usher_pipeline.settings import LOAD_MEMORY_MB

__all__ = [
    "CHECKPOINTS",
    "CHECKPOINT_COLUMNS",
    "DUCKDB_ROW_GROUP_ROWS",
    "LOAD_MEMORY_MB",
    "MAX_NAME_LENGTH",
    "PROVENANCE",
    "PipelineStore",
    "quote_identifier",
    "relation_frame",
    "retype_null_columns",
    "to_polars",
    "validate_table_name",
    "write_parquet",
]
