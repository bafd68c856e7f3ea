"""Persistence: the shared DuckDB store, its lock and fingerprints, and provenance records."""

from usher_pipeline.persistence.duckdb_store import PipelineStore, validate_table_name
from usher_pipeline.persistence.errors import (
    DatabaseNotFound,
    InvalidFrame,
    InvalidTableName,
    QueryFailed,
    ReadOnlyQuery,
    SidecarError,
    SidecarNotFound,
    StoreError,
    StoreFileError,
    StoreLockTimeout,
    TableNotFound,
    UnreadableResult,
    UnsupportedFrameType,
)
from usher_pipeline.persistence.provenance import ProvenanceTracker, sidecar_path

__all__ = [
    "DatabaseNotFound",
    "InvalidFrame",
    "InvalidTableName",
    "PipelineStore",
    "ProvenanceTracker",
    "QueryFailed",
    "ReadOnlyQuery",
    "SidecarError",
    "SidecarNotFound",
    "StoreError",
    "StoreFileError",
    "StoreLockTimeout",
    "TableNotFound",
    "UnreadableResult",
    "UnsupportedFrameType",
    "sidecar_path",
    "validate_table_name",
]
