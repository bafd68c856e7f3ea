"""ProvenanceTracker: what produced an output — versions, config hash and processing steps.

Metadata is written as a JSON sidecar beside each output (`x.parquet` ->
`x.provenance.json`) and as rows of the store's `_provenance` table.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usher_pipeline._io import read_json, write_json_atomic
from usher_pipeline.persistence.errors import SidecarError, SidecarNotFound

if TYPE_CHECKING:
    from usher_pipeline.config.schema import PipelineConfig
    from usher_pipeline.persistence.duckdb_store import PipelineStore

SIDECAR_SUFFIX = ".provenance.json"


def utc_now() -> str:
    """The current time as ISO 8601 UTC with a trailing Z."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def sidecar_path(output_path: str | Path) -> Path:
    """The sidecar of an output: `x.parquet` -> `x.provenance.json`; a sidecar path stays as is."""
    path = Path(output_path)
    if path.name.endswith(SIDECAR_SUFFIX):
        return path
    return (
        path.with_suffix(SIDECAR_SUFFIX)
        if path.suffix
        else path.with_name(path.name + SIDECAR_SUFFIX)
    )


class ProvenanceTracker:
    """Collects processing steps of one run and writes them with the run's versions and config."""

    def __init__(
        self,
        pipeline_version: str,
        config: PipelineConfig | None = None,
        *,
        run_id: str | None = None,
    ) -> None:
        self.pipeline_version = pipeline_version
        self.config = config
        self.run_id = run_id or uuid.uuid4().hex
        self.created_at = utc_now()
        self.processing_steps: list[dict[str, Any]] = []
        self.extra_data_sources: dict[str, Any] = {}

    @classmethod
    def from_config(cls, config: PipelineConfig, version: str | None = None) -> ProvenanceTracker:
        """A tracker for `config`, versioned as the installed package unless `version` is given."""
        if version is None:
            from usher_pipeline import __version__ as version
        return cls(version, config)

    def record_step(self, step_name: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
        """Append a step with a UTC timestamp; returns it."""
        step = {"step_name": step_name, "timestamp": utc_now(), "details": dict(details or {})}
        self.processing_steps.append(step)
        return step

    def add_data_source(self, name: str, version: Any) -> None:
        """Record the version of a data source found at run time (e.g. the HPO release)."""
        self.extra_data_sources[name] = version

    def config_hash(self) -> str | None:
        """The config hash, or None without a config."""
        return self.config.config_hash() if self.config is not None else None

    def data_source_versions(self) -> dict[str, Any]:
        """Versions from the config plus those recorded at run time."""
        versions = self.config.data_source_versions() if self.config is not None else {}
        return {**versions, **self.extra_data_sources}

    def create_metadata(self) -> dict[str, Any]:
        """The provenance record: versions, config hash, creation time and steps."""
        return {
            "pipeline_version": self.pipeline_version,
            "data_source_versions": self.data_source_versions(),
            "config_hash": self.config_hash(),
            "created_at": self.created_at,
            "run_id": self.run_id,
            "processing_steps": [dict(step) for step in self.processing_steps],
        }

    def save_sidecar(self, output_path: str | Path) -> Path:
        """Write the metadata beside `output_path` atomically; returns the sidecar path."""
        target = sidecar_path(output_path)
        write_json_atomic(target, self.create_metadata())
        return target

    @staticmethod
    def load_sidecar(path: str | Path) -> dict[str, Any]:
        """Read the sidecar of an output (or a sidecar path itself)."""
        target = sidecar_path(path)
        if not target.exists():
            raise SidecarNotFound(
                f"provenance sidecar {target} does not exist: run the workflow's provenance rule"
            )
        try:
            data = read_json(target)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise SidecarError(
                f"provenance sidecar {target} cannot be read ({type(exc).__name__}): "
                "delete it and rerun the workflow's provenance rule"
            ) from None
        if not isinstance(data, dict):
            raise SidecarError(
                f"provenance sidecar {target} is not a JSON object: delete it and rerun the "
                "workflow's provenance rule"
            )
        return data

    def save_to_store(self, store: PipelineStore, output_path: str | Path | None = None) -> None:
        """Write the metadata as a `_provenance` row; saving the same run again updates it."""
        store.record_provenance(
            self.run_id, str(output_path) if output_path else "", self.create_metadata()
        )
