"""The pipeline config: pydantic models, YAML loading and the generated JSON schema.

Names are imported on first use, so `python -m usher_pipeline.config.schema` runs the schema
module without it having been imported already by this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
