"""The library's own config keys, checked in every workflow that includes `rules/library.smk`.

A workflow's config holds the library's keys beside the workflow's own. The library's are the
paths (`data_dir`, `cache_dir`, `duckdb_path`, `results_dir`, `logs_dir`), `workflow_name`,
`store`, `api` and `versions` (`LibraryConfig`); every other top-level key belongs to the
workflow and is left as it is, unless its name is a near miss of a library key (`result_dir`,
`stor`), which is refused as the misspelling it almost surely is. Inside `store` and `api`
every key is the library's, so an unknown one is an error.

The demo's model (`PipelineConfig`) is built on the same `LibrarySettings`, with a stricter
`versions` of its own and no free keys.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
)

from usher_pipeline.config.loader import ConfigError, read_config_file
from usher_pipeline.settings import (
    DEFAULT_DATABASE_MODE,
    DEFAULT_DB_PATH,
    DEFAULT_LOCK_TIMEOUT_S,
    DEFAULT_LOGS_DIR,
    DEFAULT_RESULTS_DIR,
    LOAD_MEMORY_MB,
    DatabaseMode,
)

#: Upper bounds of the store settings: finite values that every job can use (an infinite or
#: huge lock wait overflows the timers, a huge memory limit fails DuckDB's parser).
MAX_LOCK_TIMEOUT_S: Final = 7 * 24 * 3600.0
MAX_LOAD_MEMORY_MB: Final = 1024 * 1024

#: How alike a top-level key must be to a library key (difflib's ratio, compared in lower
#: case) to be refused as its misspelling: `result_dir`, `duckdb_pth`, `stor` and `version`
#: are; `results`, `data`, `logs` and `workflow` are a workflow's own keys.
NEAR_MISS_CUTOFF: Final = 0.8
#: Inside a section every key is the library's: the nearest one is suggested when this close.
SUGGEST_CUTOFF: Final = 0.6


class LibraryConfigError(ConfigError):
    """A library key of a workflow's config is misspelt, of the wrong type or out of bounds."""


#: A source's name: it names its cache, its rate-limit bucket and its Snakemake resource.
SourceName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
#: An environment variable's name, which holds a secret (the secret itself is never in a config).
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class SourceAPIConfig(BaseModel):
    """One API's own settings under `api.sources.<name>`; an unset key takes the `api` value."""

    model_config = ConfigDict(extra="forbid")

    rate_limit_per_second: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="Requests per second to this API."
    )
    max_retries: int | None = Field(default=None, ge=1, le=20, description="Attempts per request.")
    cache_ttl_seconds: int | None = Field(
        default=None, ge=0, description="Lifetime of its cached responses; 0 = never expires."
    )
    timeout_seconds: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="Timeout of one request."
    )
    secrets: dict[str, EnvName] = Field(
        default_factory=dict,
        description="Query parameter -> the environment variable holding its value (api_key).",
    )
    secret_headers: dict[str, EnvName] = Field(
        default_factory=dict,
        description="Request header -> the environment variable holding its value.",
    )
    release_header: str | None = Field(
        default=None, min_length=1, description="A response header naming the data release."
    )


class ResolvedSourceConfig(BaseModel):
    """The settings one source's client uses: its own, with the `api` section's for the rest."""

    model_config = ConfigDict(frozen=True)

    name: str
    rate_limit_per_second: float
    max_retries: int
    cache_ttl_seconds: int
    timeout_seconds: float
    secrets: dict[str, str]
    secret_headers: dict[str, str]
    release_header: str | None


class APIConfig(BaseModel):
    """How external APIs are called; changes how data are fetched, not what."""

    model_config = ConfigDict(extra="forbid")

    rate_limit_per_second: int = Field(default=5, ge=1, description="Requests per second.")
    max_retries: int = Field(default=5, ge=1, le=20, description="Attempts per request.")
    cache_ttl_seconds: int = Field(
        default=86400, ge=0, description="Lifetime of cached responses; 0 = never expires."
    )
    timeout_seconds: int = Field(default=30, ge=1, description="Timeout of one request.")
    sources: dict[SourceName, SourceAPIConfig] = Field(
        default_factory=dict,
        description="Settings of one API by its name (e.g. ncbi); unset keys take the above.",
    )

    def for_source(self, name: str) -> ResolvedSourceConfig:
        """The settings of source `name`: its own where it sets them, else this section's."""
        own = self.sources.get(name, SourceAPIConfig())
        return ResolvedSourceConfig(
            name=name,
            rate_limit_per_second=own.rate_limit_per_second or self.rate_limit_per_second,
            max_retries=own.max_retries or self.max_retries,
            cache_ttl_seconds=(
                self.cache_ttl_seconds if own.cache_ttl_seconds is None else own.cache_ttl_seconds
            ),
            timeout_seconds=own.timeout_seconds or self.timeout_seconds,
            secrets=dict(own.secrets),
            secret_headers=dict(own.secret_headers),
            release_header=own.release_header,
        )


class StoreConfig(BaseModel):
    """How jobs write into the shared DuckDB store; changes where results go, not what."""

    model_config = ConfigDict(extra="forbid")

    lock_timeout_seconds: float = Field(
        default=DEFAULT_LOCK_TIMEOUT_S,
        gt=0,
        le=MAX_LOCK_TIMEOUT_S,
        allow_inf_nan=False,
        description="How long a job waits for the database lock (at most a week).",
    )
    database_mode: DatabaseMode = Field(
        default=DEFAULT_DATABASE_MODE,
        description=(
            "'job': each job writes its table into the database; 'head': jobs write only "
            "sentinels and step logs and a local rule on the submit host ingests them (for "
            "shared filesystems where DuckDB locking is unreliable)."
        ),
    )
    load_memory_mb: int = Field(
        default=LOAD_MEMORY_MB,
        ge=16,
        le=MAX_LOAD_MEMORY_MB,
        description=(
            "The least memory limit (MB) of DuckDB while a job loads a table into the database "
            "(until its connection closes); a wide table's load is given what its columns need "
            "when that is more. A save needs about its frame's size plus 500 MB, whatever the "
            "node's RAM (larger loads faster); raise it if a load reports it ran out of memory."
        ),
    )


class HistoryConfig(BaseModel):
    """Which earlier runs and table versions the run history keeps (`usher-pipeline gc`)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=True,
        description="Record each run and keep earlier table versions under <results_dir>/history.",
    )
    keep_runs: int | None = Field(
        default=20,
        ge=1,
        description="Keep the last N runs (null = no limit by count); the latest is always kept.",
    )
    keep_days: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Keep runs younger than D days (null = no limit by age); with keep_runs, a run is "
            "kept when either keeps it."
        ),
    )


class LibrarySettings(BaseModel):
    """The library's keys that every config shares: paths, the workflow's name, api, store."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Field(default=Path("data"), description="Downloaded input data.")
    cache_dir: Path = Field(default=Path("data/cache"), description="Cached API responses.")
    duckdb_path: Path = Field(default=Path(DEFAULT_DB_PATH), description="The shared DuckDB store.")
    results_dir: Path = Field(
        default=Path(DEFAULT_RESULTS_DIR),
        description="Sentinels, step logs, sidecars, final reports and the run record.",
    )
    logs_dir: Path = Field(
        default=Path(DEFAULT_LOGS_DIR),
        description="Each job's text log, as <logs_dir>/<rule>/<name>.log.",
    )
    workflow_name: str | None = Field(
        default=None,
        min_length=1,
        description="The workflow's name in the exports; null = its Snakefile's folder name.",
    )
    api: APIConfig = APIConfig()
    store: StoreConfig = StoreConfig()
    history: HistoryConfig = HistoryConfig()


def _check_version(value: object) -> object:
    """A data source's version is one string, number or boolean (a JSON scalar)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"a version must be a finite number or a string, not {value}")
    if not isinstance(value, str | int | float | bool):
        raise ValueError(
            f"a version must be one string or number, such as '2025-01-16', not {_kind(value)}"
        )
    return value


Version = Annotated[
    Any,
    AfterValidator(_check_version),
    WithJsonSchema({"type": ["string", "number", "boolean"]}),
]


class LibraryConfig(LibrarySettings):
    """The library's keys in any workflow's config; the workflow's own top-level keys are free
    (kept as given, as extra fields)."""

    model_config = ConfigDict(extra="allow")

    versions: dict[str, Version] = Field(
        default_factory=dict,
        description=(
            "Data source name -> its version (a string or number), copied into every "
            "provenance sidecar as data_source_versions."
        ),
    )


#: The top-level keys of the library.
LIBRARY_KEYS: Final = tuple(LibraryConfig.model_fields)
#: The sections whose every key is the library's, with their models.
LIBRARY_SECTIONS: Final[Mapping[str, type[BaseModel]]] = {
    "api": APIConfig,
    "store": StoreConfig,
    "history": HistoryConfig,
}


def validate_library_config(
    config: Mapping[str, Any], configfiles: Sequence[str | Path] = ()
) -> LibraryConfig:
    """Check the library's keys of a workflow's config (Snakemake's `config`).

    `configfiles` are the files the config was read from, in Snakemake's order (the last one
    wins): the error names the one that sets the bad key. The workflow's own top-level keys
    pass as they are, except near misses of a library key; keys starting with `_` are the
    workflow's state and are not checked. An empty section (`store:` with nothing below)
    counts as absent. Raises `LibraryConfigError` naming the first problem, on one line.
    """
    data = {
        str(key): value
        for key, value in config.items()
        if not str(key).startswith("_")
        and not (key in (*LIBRARY_SECTIONS, "versions") and value is None)
    }
    for key in data:
        if key in LIBRARY_KEYS:
            continue
        nearest = _nearest(key, LIBRARY_KEYS, NEAR_MISS_CUTOFF)
        if nearest is not None:
            raise LibraryConfigError(
                f"config key {_where(key, (key,), configfiles)} is not a library setting: did "
                f"you mean {nearest}? (rename it if it is your workflow's own key)"
            )
    try:
        return LibraryConfig.model_validate(data)
    except ValidationError as exc:
        raise LibraryConfigError(_problem(exc.errors(include_url=False)[0], configfiles)) from None


def _nearest(key: str, known: Sequence[str], cutoff: float) -> str | None:
    """The known key `key` is a near miss of (compared in lower case), or None."""
    lowered = {name.lower(): name for name in known}
    found = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=cutoff)
    return lowered[found[0]] if found else None


def _problem(error: Mapping[str, Any], configfiles: Sequence[str | Path]) -> str:
    """One pydantic error of the library's keys as one sentence naming the key and the fix."""
    loc = tuple(str(part) for part in error["loc"])
    dotted = ".".join(loc)
    where = _where(dotted, loc, configfiles)
    if error["type"] == "extra_forbidden" and len(loc) == 2 and loc[0] in LIBRARY_SECTIONS:
        section, key = loc
        fields = tuple(LIBRARY_SECTIONS[section].model_fields)
        nearest = _nearest(key, fields, SUGGEST_CUTOFF)
        fix = (
            f"did you mean {section}.{nearest}?"
            if nearest is not None
            else f"{section} takes {', '.join(sorted(fields))}"
        )
        return f"config key {where} is not a library setting: {fix}"
    if error["type"] in {"model_type", "dict_type"}:
        return (
            f"config key {where} must be a section (a mapping of keys to values), not "
            f"{_kind(error.get('input'))}"
        )
    given = error.get("input")
    if given is None and error["type"] != "missing":
        return f"config key {where} is null: set a value, or leave the key out"
    if error["type"] == "path_type":
        return f"config key {where} must be a path (a string), not {_kind(given)}"
    message = " ".join(str(error["msg"]).removeprefix("Value error, ").split())
    shown = repr(given)
    repeated = isinstance(given, str) and shown in message  # a literal's message quotes it
    if isinstance(given, str | int | float | bool) and len(shown) <= 60 and not repeated:
        message = f"{message} (got {shown})"
    return f"config key {where} is invalid: {message}"


def _where(dotted: str, loc: Sequence[str], configfiles: Sequence[str | Path]) -> str:
    """`dotted`, followed by the config file that sets it when one does."""
    for path in reversed(configfiles):
        try:
            node: Any = read_config_file(path)
        except ConfigError:
            continue
        for part in loc:
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            return f"{dotted} (in {path})"
    return dotted


def _kind(value: object) -> str:
    """A YAML value's kind, for a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else f"a {type(value).__name__}"
