"""The pipeline config: pydantic models, YAML loading, the config hash and the JSON schema.

`python -m usher_pipeline.config` prints the JSON schema (`config/config.schema.json`).
"""

from __future__ import annotations

from usher_pipeline.config.hashing import config_hash
from usher_pipeline.config.loader import (
    ConfigError,
    check_config_file,
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
    "check_config_file",
    "config_hash",
    "json_schema",
    "load_config",
    "load_config_with_overrides",
    "validate_config_dict",
]
