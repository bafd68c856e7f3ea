"""ProvenanceTracker: what produced an output — versions, config hash and processing steps.

`data_source_versions` are the versions of the data sources that were read, as jobs recorded
them (`job.record_data_source`, step logs' `data_sources`) or as `add_data_source` was told;
never the config's. The config's `versions`, what the workflow expects to read, are recorded
apart as `expected_data_source_versions`, where a tracker has any (the run record's).

In a workflow the config hash is that of the config slices of the jobs behind the output
(`config.hashing.jobs_config_hash`); a tracker built from a `PipelineConfig` records that
config's own hash (`PipelineConfig.config_hash`).

Metadata is written as a JSON sidecar beside each output (`x.parquet` ->
`x.provenance.json`), as the run-level record and as rows of the store's `_provenance` table.
The workflow's provenance merge writes all of these through trackers built from step logs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usher_pipeline._io import read_json, write_json_atomic
from usher_pipeline.lineage import step_label
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
    """Collects processing steps of one run and writes them with the run's versions and config.

    Without a `config`, `config_hash` gives the hash to record (the workflow's merge passes
    the hash of the config slices of the output's lineage, or of the whole run's for the run
    record) and `expected_versions` the data source versions the config expects (with a
    `config`, its `versions`); `created_at` fixes the creation time, so that every record of
    one merge carries the same one.
    """

    def __init__(
        self,
        pipeline_version: str,
        config: PipelineConfig | None = None,
        *,
        run_id: str | None = None,
        config_hash: str | None = None,
        created_at: str | None = None,
        expected_versions: Mapping[str, Any] | None = None,
    ) -> None:
        if config is not None and config_hash is not None:
            raise ValueError(
                "ProvenanceTracker takes a config or a config_hash, not both: drop config_hash "
                "to record the config's own hash"
            )
        if config is not None and expected_versions is not None:
            raise ValueError(
                "ProvenanceTracker takes a config or expected_versions, not both: drop "
                "expected_versions to record the config's own versions"
            )
        self.pipeline_version = pipeline_version
        self.config = config
        self.run_id = run_id or uuid.uuid4().hex
        self.created_at = created_at or utc_now()
        self.processing_steps: list[dict[str, Any]] = []
        self.extra_data_sources: dict[str, Any] = {}
        self.expected_data_sources: dict[str, Any] = (
            config.data_source_versions() if config is not None else dict(expected_versions or {})
        )
        self._config_hash = config_hash
        self._written: list[tuple[str, dict[str, Any]]] = []

    @classmethod
    def from_config(cls, config: PipelineConfig, version: str | None = None) -> ProvenanceTracker:
        """A tracker for `config`, versioned as the installed package unless `version` is given."""
        if version is None:
            from usher_pipeline import __version__

            version = __version__
        return cls(version, config)

    def record_step(self, step_name: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
        """Append a step with a UTC timestamp; returns it."""
        step = {"step_name": step_name, "timestamp": utc_now(), "details": dict(details or {})}
        self.processing_steps.append(step)
        return step

    def record_steplog(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Append a job's step log as a step named 'rule[wildcards]', stamped with the time the
        job ended; the step log itself is its details, kept as given (not copied)."""
        step = {"step_name": step_label(record), "timestamp": record["ended_at"], "details": record}
        self.processing_steps.append(step)
        return step

    def add_data_source(self, name: str, version: Any) -> None:
        """Record the version of a data source that was read (e.g. the HPO release)."""
        self.extra_data_sources[name] = version

    def add_data_sources(self, versions: Mapping[str, Any]) -> None:
        """Record several data source versions; a name recorded before takes the new version."""
        self.extra_data_sources.update(versions)

    def config_hash(self) -> str | None:
        """The config's hash; without a config, the `config_hash` given (None if none was)."""
        return self.config.config_hash() if self.config is not None else self._config_hash

    def data_source_versions(self) -> dict[str, Any]:
        """The versions of the data sources that were read, as recorded; none from the config."""
        return dict(self.extra_data_sources)

    def create_metadata(
        self,
        *,
        output: Mapping[str, Any] | None = None,
        outputs: Sequence[Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The provenance record: versions, config hash, creation time and steps, plus the
        `output` it describes (a sidecar's) or the `outputs` of a whole run, when given, and
        the expected versions when the tracker has any."""
        metadata: dict[str, Any] = {
            "pipeline_version": self.pipeline_version,
            "data_source_versions": self.data_source_versions(),
            "config_hash": self.config_hash(),
            "created_at": self.created_at,
            "run_id": self.run_id,
            "processing_steps": [dict(step) for step in self.processing_steps],
        }
        if self.expected_data_sources:
            metadata["expected_data_source_versions"] = dict(self.expected_data_sources)
        if output is not None:
            metadata["output"] = dict(output)
        if outputs is not None:
            metadata["outputs"] = [dict(entry) for entry in outputs]
        return metadata

    def save_sidecar(
        self, output_path: str | Path, *, output: Mapping[str, Any] | None = None
    ) -> Path:
        """Write the metadata (describing `output`, when given) beside `output_path`
        atomically; returns the sidecar path."""
        target = sidecar_path(output_path)
        metadata = self.create_metadata(output=output)
        write_json_atomic(target, metadata)
        self._written.append((str(output_path), metadata))
        return target

    def save_run_record(self, path: str | Path, outputs: Sequence[Mapping[str, Any]]) -> Path:
        """Write the run-level record, the metadata with every output of the run, to `path`
        itself (not to a sidecar of it) atomically; returns `path`."""
        target = Path(path)
        metadata = self.create_metadata(outputs=outputs)
        write_json_atomic(target, metadata)
        self._written.append((str(path), metadata))
        return target

    def rows(self) -> list[tuple[str, dict[str, Any]]]:
        """(output path, metadata) of every sidecar and run record this tracker wrote, in the
        order written: the `_provenance` rows that describe them."""
        return list(self._written)

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

    @staticmethod
    def save_many_to_store(store: PipelineStore, trackers: Iterable[ProvenanceTracker]) -> int:
        """Write the `rows()` of every tracker as `_provenance` rows, one statement per run
        (a merge writes thousands); returns the rows written."""
        rows = ((t.run_id, path, meta) for t in trackers for path, meta in t._written)
        return ProvenanceTracker.record_rows(store, rows)

    @staticmethod
    def record_rows(
        store: PipelineStore, rows: Iterable[tuple[str, str, Mapping[str, Any]]]
    ) -> int:
        """Write (run id, output path, metadata) rows as `_provenance` rows, one statement per
        run: what the merge wrote, or what `repair` reads back from sidecars on disk."""
        runs: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for run_id, output_path, metadata in rows:
            runs.setdefault(run_id, []).append((output_path, dict(metadata)))
        with store.transaction():  # all runs' rows or none
            return sum(
                store.record_provenance_many(run_id, found) for run_id, found in runs.items()
            )
