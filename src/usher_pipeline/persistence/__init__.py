"""Persistence: the shared DuckDB store, its lock and fingerprints, and provenance records.

The public surface is listed here: the store, its checkpoint rows, the table-name rule and
the errors it raises. `duckdb_store` keeps the seed import path of `PipelineStore`.
"""

from usher_pipeline.persistence.catalog import Checkpoint
from usher_pipeline.persistence.errors import (
    DatabaseNotFound,
    InvalidFrame,
    InvalidTableName,
    QueryFailed,
    ReadOnlyQuery,
    SidecarError,
    SidecarNotFound,
    StoreDiskFull,
    StoreError,
    StoreFileError,
    StoreLockTimeout,
    TableNotFound,
    UnreadableResult,
    UnsupportedFrameType,
)
from usher_pipeline.persistence.provenance import ProvenanceTracker, sidecar_path
from usher_pipeline.persistence.sql import validate_table_name
from usher_pipeline.persistence.store import PipelineStore

__all__ = [
    "Checkpoint",
    "DatabaseNotFound",
    "InvalidFrame",
    "InvalidTableName",
    "PipelineStore",
    "ProvenanceTracker",
    "QueryFailed",
    "ReadOnlyQuery",
    "SidecarError",
    "SidecarNotFound",
    "StoreDiskFull",
    "StoreError",
    "StoreFileError",
    "StoreLockTimeout",
    "TableNotFound",
    "UnreadableResult",
    "UnsupportedFrameType",
    "sidecar_path",
    "validate_table_name",
]
