"""The pipeline config: pydantic models, YAML loading and the generated JSON schema.

Names are imported on first use, so `python -m usher_pipeline.config.schema` runs the schema
module without it having been imported already by this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usher_pipeline._lazy import lazy_attributes

if TYPE_CHECKING:
    from usher_pipeline.config.loader import (
        ConfigError,
        load_config,
        load_config_with_overrides,
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
    "ConfigError": "loader",
    "load_config": "loader",
    "load_config_with_overrides": "loader",
    "validate_config_dict": "loader",
    "APIConfig": "schema",
    "DataSourceVersions": "schema",
    "DemoConfig": "schema",
    "FetchConfig": "schema",
    "LayerConfig": "schema",
    "PipelineConfig": "schema",
    "ScoringWeights": "schema",
    "StoreConfig": "schema",
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
    "PipelineConfig",
    "ScoringWeights",
    "StoreConfig",
    "TierThresholds",
    "json_schema",
    "load_config",
    "load_config_with_overrides",
    "validate_config_dict",
]


__getattr__, __dir__ = lazy_attributes(__name__, _MODULE_OF, globals())
