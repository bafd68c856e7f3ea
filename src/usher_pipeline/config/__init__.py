"""The config: the library's keys in any workflow, the demo's model, YAML loading, the config
hashes and the JSON schema.

`python -m usher_pipeline.config` prints the JSON schema (`config/config.schema.json`).

Names load on first use: a job imports `usher_pipeline.config.hashing` for its slice hash, and
the pydantic models (about 0.1 s to import) stay out of it. Type checkers see the imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usher_pipeline._lazy import lazy_attributes

if TYPE_CHECKING:
    from usher_pipeline.config.hashing import config_hash, jobs_config_hash, slice_hash
    from usher_pipeline.config.library import (
        LibraryConfig,
        LibraryConfigError,
        LibrarySettings,
        validate_library_config,
    )
    from usher_pipeline.config.loader import (
        ConfigError,
        check_config_file,
        load_config,
        load_config_with_overrides,
        read_config_file,
        validate_config_dict,
    )
    from usher_pipeline.config.schema import (
        APIConfig,
        DataSourceVersions,
        DemoConfig,
        FetchConfig,
        LayerConfig,
        PipelineConfig,
        ScoringWeights,
        StoreConfig,
        TierThresholds,
        json_schema,
    )

_MODULE_OF = {
    "config_hash": "hashing",
    "jobs_config_hash": "hashing",
    "slice_hash": "hashing",
    "LibraryConfig": "library",
    "LibraryConfigError": "library",
    "LibrarySettings": "library",
    "validate_library_config": "library",
    "ConfigError": "loader",
    "check_config_file": "loader",
    "load_config": "loader",
    "load_config_with_overrides": "loader",
    "read_config_file": "loader",
    "validate_config_dict": "loader",
    "APIConfig": "library",
    "StoreConfig": "library",
    "DataSourceVersions": "schema",
    "DemoConfig": "schema",
    "FetchConfig": "schema",
    "LayerConfig": "schema",
    "PipelineConfig": "schema",
    "ScoringWeights": "schema",
    "TierThresholds": "schema",
    "json_schema": "schema",
}

__all__ = [
    "APIConfig",
    "ConfigError",
    "DataSourceVersions",
    "DemoConfig",
    "FetchConfig",
    "LayerConfig",
    "LibraryConfig",
    "LibraryConfigError",
    "LibrarySettings",
    "PipelineConfig",
    "ScoringWeights",
    "StoreConfig",
    "TierThresholds",
    "check_config_file",
    "config_hash",
    "jobs_config_hash",
    "json_schema",
    "load_config",
    "load_config_with_overrides",
    "read_config_file",
    "slice_hash",
    "validate_config_dict",
    "validate_library_config",
]

__getattr__, __dir__ = lazy_attributes(__name__, _MODULE_OF, globals())
