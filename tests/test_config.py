"""Tests of usher_pipeline.config: models, validation messages, loading, hashing, slices."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import usher_pipeline.config as config_pkg
from usher_pipeline.config import (
    APIConfig,
    ConfigError,
    DataSourceVersions,
    DemoConfig,
    FetchConfig,
    LayerConfig,
    LibraryConfig,
    LibraryConfigError,
    LibrarySettings,
    PipelineConfig,
    ScoringWeights,
    StoreConfig,
    TierThresholds,
    config_hash,
    jobs_config_hash,
    json_schema,
    load_config,
    load_config_with_overrides,
    slice_hash,
    validate_config_dict,
    validate_library_config,
)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EMBEDDED = REPO / "config" / "config.yaml"
SCHEMA_FILE = REPO / "config" / "config.schema.json"


def embedded_dict() -> dict[str, Any]:
    """A fresh copy of the embedded default config as a plain dict."""
    return yaml.safe_load(EMBEDDED.read_text(encoding="utf-8"))


def with_value(dotted: str, value: Any) -> dict[str, Any]:
    """The embedded config with `value` set at a dotted path."""
    data = embedded_dict()
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return data


def error_of(data: dict[str, Any], source: str = "config/x.yaml") -> str:
    """The ConfigError message of an invalid config dict."""
    with pytest.raises(ConfigError) as info:
        validate_config_dict(data, source)
    return str(info.value)


def minimal() -> PipelineConfig:
    return PipelineConfig(versions=DataSourceVersions(hpo="2025-01-16"))


#: The `versions` and `scoring` that configs written for earlier releases carry.
OLD_VERSIONS = {
    "ensembl_release": 113,
    "gnomad_version": "v4.1",
    "gtex_version": "v8",
    "hpa_version": "23.0",
}
OLD_SCORING = {
    "gnomad": 0.20,
    "expression": 0.20,
    "annotation": 0.15,
    "localization": 0.15,
    "animal_model": 0.15,
    "literature": 0.15,
}
IGNORED_NOTE = (
    "usher_pipeline: config key 'scoring' is read by no rule and is ignored (it is in no "
    "config hash): remove it from the config"
)


def old_config() -> dict[str, Any]:
    """The embedded config as an earlier release shipped it: the four external versions and
    the upstream scoring weights."""
    return embedded_dict() | {"versions": dict(OLD_VERSIONS), "scoring": dict(OLD_SCORING)}


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults -------------------------------------------------------------------------------


def test_defaults_match_the_documented_values():
    cfg = minimal()
    assert cfg.data_dir == Path("data")
    assert cfg.cache_dir == Path("data/cache")
    assert cfg.duckdb_path == Path("results/pipeline.duckdb")
    assert cfg.results_dir == Path("results")
    assert cfg.versions.model_dump() == {"hpo": "2025-01-16"}
    assert PipelineConfig().versions.model_dump() == {}
    assert cfg.api == APIConfig(
        rate_limit_per_second=5, max_retries=5, cache_ttl_seconds=86400, timeout_seconds=30
    )
    assert cfg.scoring is None
    assert cfg.store == StoreConfig(lock_timeout_seconds=120.0, database_mode="job")
    demo = cfg.demo
    assert demo.hpo_data_dir is None
    assert demo.gene_limit is None
    assert demo.min_valid_id_fraction == 0.99
    assert demo.usher_disease_pattern == "^Usher syndrome"
    assert demo.fetch == FetchConfig(batch_size=250, batch_latency_seconds=0.05)
    assert demo.layers == {
        "hearing": LayerConfig(terms=["HP:0000365"], weight=0.4),
        "retina": LayerConfig(terms=["HP:0000479"], weight=0.35),
        "vestibular": LayerConfig(terms=["HP:0001751"], weight=0.25),
    }
    assert demo.tiers == TierThresholds(high=0.5, medium=0.3)


def test_defaults_are_not_shared_between_instances():
    first, second = minimal(), minimal()
    first.demo.layers["hearing"].weight = 0.9
    first.api.max_retries = 9
    assert second.demo.layers["hearing"].weight == 0.4
    assert second.api.max_retries == 5
    assert minimal().demo.layers["hearing"].weight == 0.4


def test_versions_are_optional_and_take_any_data_source_name():
    assert validate_config_dict({}, "x").versions.model_dump() == {}
    assert validate_config_dict({"versions": {}}, "x").data_source_versions() == {}
    given = {"hpo": "2025-01-16", "x": 1, "gencode": 47.0, "patched": True}
    versions = validate_config_dict({"versions": given}, "x").data_source_versions()
    assert versions == given
    assert [type(v) for v in versions.values()] == [str, int, float, bool]  # kept exactly
    message = error_of({"versions": {"hpo": ["2025"]}})
    assert "versions.hpo: a version must be one string or number" in message


def test_a_config_of_an_earlier_release_still_loads_with_its_versions():
    cfg = validate_config_dict(old_config(), "old.yaml")
    assert cfg.versions.ensembl_release == 113
    assert cfg.data_source_versions() == OLD_VERSIONS
    only_ensembl = validate_config_dict({"versions": {"ensembl_release": 113}}, "x")
    assert only_ensembl.data_source_versions() == {"ensembl_release": 113}  # no defaults added


def test_scoring_of_an_earlier_config_loads_with_one_note_and_is_in_no_hash(caplog):
    plain = validate_config_dict(embedded_dict(), "new.yaml")
    assert not caplog.records
    old = validate_config_dict(embedded_dict() | {"scoring": dict(OLD_SCORING)}, "old.yaml")
    assert [r.getMessage() for r in caplog.records] == [IGNORED_NOTE]
    assert caplog.records[0].levelname == "WARNING"
    assert old.scoring == ScoringWeights(**OLD_SCORING)  # still there for code that reads it
    assert old.config_hash() == plain.config_hash()
    assert "scoring" not in old.model_dump()
    with pytest.raises(KeyError, match="has no key 'scoring'"):
        old.slice("scoring")
    other = validate_config_dict(
        embedded_dict() | {"scoring": {**OLD_SCORING, "gnomad": 0.25, "literature": 0.10}}, "x"
    )
    assert other.config_hash() == plain.config_hash()


def test_scoring_note_is_one_line_on_stderr_of_a_fresh_interpreter(tmp_path):
    path = write(tmp_path, yaml.safe_dump(embedded_dict() | {"scoring": OLD_SCORING}))
    probe = f"from usher_pipeline.config import load_config; load_config({str(path)!r})"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stderr == IGNORED_NOTE + "\n"
    quiet = subprocess.run(
        [sys.executable, "-c", probe.replace(str(path), str(EMBEDDED))],
        capture_output=True,
        text=True,
        check=True,
    )
    assert quiet.stderr == ""


def test_embedded_config_loads_and_equals_the_model_defaults():
    cfg = load_config(EMBEDDED)
    assert cfg.versions.model_dump() == {"hpo": "2025-01-16"}
    assert cfg == minimal()
    assert cfg.config_hash() == minimal().config_hash()


def test_embedded_config_writes_out_every_key_of_every_section():
    def keys(value: Any, prefix: str = "") -> set[str]:
        if not isinstance(value, dict):
            return {prefix}
        found = {prefix} if prefix else set()
        for key, child in value.items():
            found |= keys(child, f"{prefix}.{key}" if prefix else key)
        return found

    written = keys(embedded_dict())
    model = keys(minimal().model_dump(mode="json"))
    assert written == model


def test_embedded_config_validates_against_the_generated_json_schema():
    jsonschema.validate(embedded_dict(), json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


# --- validation rules -----------------------------------------------------------------------

BAD_VALUES = [
    ("versions.ensembl_release", 99, "greater than or equal to 100"),
    ("versions.ensembl_release", -1, "greater than or equal to 100"),
    ("versions.ensembl_release", "abc", "valid integer"),
    ("versions.ensembl_release", 113.5, "valid integer"),
    ("versions.gnomad_version", 4, "valid string"),
    ("versions.hpo", [2025], "a version must be one string or number"),
    ("api.rate_limit_per_second", 0, "greater than or equal to 1"),
    ("api.max_retries", 0, "greater than or equal to 1"),
    ("api.max_retries", 21, "less than or equal to 20"),
    ("api.max_retries", "many", "valid integer"),
    ("api.cache_ttl_seconds", -1, "greater than or equal to 0"),
    ("api.timeout_seconds", 0, "greater than or equal to 1"),
    ("api.timeout_seconds", -5, "greater than or equal to 1"),
    ("store.lock_timeout_seconds", 0, "greater than 0"),
    ("store.lock_timeout_seconds", -1.0, "greater than 0"),
    ("store.database_mode", "cluster", "'job' or 'head'"),
    ("demo.gene_limit", 0, "greater than or equal to 1"),
    ("demo.gene_limit", -3, "greater than or equal to 1"),
    ("demo.min_valid_id_fraction", -0.01, "greater than or equal to 0"),
    ("demo.min_valid_id_fraction", 1.01, "less than or equal to 1"),
    ("demo.usher_disease_pattern", "(Usher", "not a valid regular expression"),
    ("demo.fetch.batch_size", 0, "greater than or equal to 1"),
    ("demo.fetch.batch_latency_seconds", -0.05, "greater than or equal to 0"),
    ("demo.layers.hearing.weight", 1.2, "less than or equal to 1"),
    ("demo.layers.hearing.weight", -0.4, "greater than or equal to 0"),
    ("demo.layers.hearing.terms", [], "at least 1 item"),
    ("demo.layers.hearing.terms", "HP:0000365", "valid list"),
    ("demo.tiers.high", 1.5, "less than or equal to 1"),
    ("demo.tiers.medium", -0.2, "greater than or equal to 0"),
    ("api", 5, "valid dictionary"),
    ("versions", ["ensembl_release", 113], "valid dictionary"),
]
BAD_SCORING = [
    ("scoring.gnomad", -0.1, "greater than or equal to 0"),
    ("scoring.literature", 1.5, "less than or equal to 1"),
    ("scoring.expression", "high", "valid number"),
]


@pytest.mark.parametrize(("dotted", "value", "reason"), BAD_VALUES)
def test_bad_value_is_rejected_naming_its_dotted_path(dotted, value, reason):
    message = error_of(with_value(dotted, value))
    assert message.startswith("config/x.yaml is invalid: ")
    assert f"{dotted}: " in message
    assert reason in message


@pytest.mark.parametrize(("dotted", "value", "reason"), BAD_SCORING)
def test_bad_ignored_scoring_is_still_rejected_naming_its_dotted_path(dotted, value, reason):
    data = old_config()
    data["scoring"][dotted.split(".")[1]] = value
    message = error_of(data)
    assert f"{dotted}: " in message
    assert reason in message


GOOD_BOUNDS = [
    ("versions.ensembl_release", 100),
    ("api.rate_limit_per_second", 1),
    ("api.max_retries", 1),
    ("api.max_retries", 20),
    ("api.cache_ttl_seconds", 0),
    ("api.timeout_seconds", 1),
    ("store.lock_timeout_seconds", 0.001),
    ("store.database_mode", "head"),
    ("demo.gene_limit", 1),
    ("demo.min_valid_id_fraction", 0.0),
    ("demo.min_valid_id_fraction", 1.0),
    ("demo.fetch.batch_size", 1),
    ("demo.fetch.batch_latency_seconds", 0),
    ("demo.hpo_data_dir", "/data/hpo/2025-01-16"),
    ("demo.tiers.high", 1.0),
    ("demo.tiers.medium", 0.0),
]


@pytest.mark.parametrize(("dotted", "value"), GOOD_BOUNDS)
def test_values_on_the_bounds_are_accepted(dotted, value):
    cfg = validate_config_dict(with_value(dotted, value), "config/x.yaml")
    section: Any = cfg
    for part in dotted.split("."):
        section = getattr(section, part)
    assert section == (Path(value) if dotted == "demo.hpo_data_dir" else value)


def test_scoring_weights_must_sum_to_one_and_the_message_names_the_sum():
    data = old_config()
    data["scoring"]["gnomad"] = 0.15
    message = error_of(data)
    assert "scoring: weights sum to 0.95, they must sum to 1" in message
    with pytest.raises(ValueError, match="weights sum to 1.05, they must sum to 1"):
        ScoringWeights(literature=0.2)


def test_scoring_weights_within_tolerance_are_accepted():
    ScoringWeights(gnomad=0.2 + 5e-7)
    with pytest.raises(ValueError, match="weights sum to"):
        ScoringWeights(gnomad=0.2 + 5e-6)
    weights = ScoringWeights(
        gnomad=1.0, expression=0, annotation=0, localization=0, animal_model=0, literature=0
    )
    assert weights.gnomad == 1.0


def test_layer_weights_must_sum_to_one_and_the_message_names_the_sum():
    message = error_of(with_value("demo.layers.vestibular.weight", 0.05))
    assert "demo.layers: layer weights sum to 0.8, they must sum to 1" in message


def test_at_least_one_layer_is_required():
    message = error_of(with_value("demo.layers", {}))
    assert "demo.layers: " in message
    assert "at least 1 item" in message


@pytest.mark.parametrize(
    "name", ["Hearing", "1hearing", "hear-ing", "_hearing", "a" * 42, "", "hearing\n"]
)
def test_bad_layer_name_is_rejected(name):
    layers = {name: {"terms": ["HP:0000365"], "weight": 1.0}}
    message = error_of(with_value("demo.layers", layers))
    assert f"demo.layers.{name}: layer name {name!r} is not valid" in message
    assert "evidence_<layer>" in message


@pytest.mark.parametrize("name", ["a", "hearing_2", "a" * 41])
def test_good_layer_names_are_accepted(name):
    layers = {name: {"terms": ["HP:0000365"], "weight": 1.0}}
    cfg = validate_config_dict(with_value("demo.layers", layers), "x")
    assert list(cfg.demo.layers) == [name]


@pytest.mark.parametrize("term", ["HP:000365", "HP:00003650", "hp:0000365", "HP0000365", "0000365"])
def test_bad_hpo_term_is_rejected_naming_its_position(term):
    data = with_value("demo.layers.retina.terms", ["HP:0000479", term])
    message = error_of(data)
    assert "demo.layers.retina.terms[1]: String should match pattern" in message
    assert repr(term) in message


@pytest.mark.parametrize(("high", "medium"), [(0.5, 0.5), (0.3, 0.6), (0.0, 0.0)])
def test_medium_tier_must_be_below_high(high, medium):
    data = with_value("demo.tiers", {"high": high, "medium": medium})
    message = error_of(data)
    assert f"demo.tiers: medium ({medium:g}) must be below high ({high:g})" in message
    with pytest.raises(ValueError, match="must be below high"):
        TierThresholds(high=high, medium=medium)


@pytest.mark.parametrize(
    ("dotted", "shown"),
    [
        ("foo", "foo"),
        ("api.foo", "api.foo"),
        ("demo.fetch.batchsize", "demo.fetch.batchsize"),
        ("demo.layers.hearing.weights", "demo.layers.hearing.weights"),
        ("demo.tiers.low", "demo.tiers.low"),
    ],
)
def test_unknown_key_is_an_error_at_every_level(dotted, shown):
    message = error_of(with_value(dotted, 1))
    assert f"extra key {shown!r} is not allowed (check spelling)" in message


@pytest.mark.parametrize(
    ("dotted", "nearest"),
    [
        ("store.database_mod", "store.database_mode"),
        ("stor", "store"),
        ("result_dir", "results_dir"),
        ("api.max_retrys", "api.max_retries"),
        ("demo.fetch.batchsize", "demo.fetch.batch_size"),
        ("demo.layers.hearing.weights", "demo.layers.hearing.weight"),
        ("demo.tiers.low", None),
        ("foo", None),
    ],
)
def test_the_demos_unknown_key_names_the_nearest_known_one(dotted, nearest):
    message = error_of(with_value(dotted, 1))
    refused = f"extra key {dotted!r} is not allowed (check spelling)"
    if nearest is None:
        assert message == f"config/x.yaml is invalid: {refused}"
    else:
        assert message == f"config/x.yaml is invalid: {refused}: did you mean {nearest!r}?"


@pytest.mark.parametrize(
    "model",
    [
        APIConfig,
        ScoringWeights,
        StoreConfig,
        FetchConfig,
        LayerConfig,
        TierThresholds,
        DemoConfig,
        PipelineConfig,
    ],
)
def test_every_model_forbids_extra_keys(model):
    assert model.model_config.get("extra") == "forbid"


def test_versions_take_any_name_but_only_scalar_versions():
    assert DataSourceVersions.model_config.get("extra") == "allow"
    assert DataSourceVersions(hpo="2025-01-16", x=1).model_dump() == {"hpo": "2025-01-16", "x": 1}


def test_message_names_every_bad_field_in_one_paragraph():
    data = old_config()
    data["api"]["max_retries"] = 21
    data["scoring"]["gnomad"] = 0.15
    data["foo"] = 1
    data["versions"]["ensembl_release"] = 99
    data["demo"]["layers"]["hearing"]["terms"] = ["HP:1"]
    data["demo"]["tiers"] = {"high": 0.2, "medium": 0.4}
    data["store"]["database_mode"] = "shared"
    message = error_of(data)
    expected = [
        "config/x.yaml is invalid: ",
        "api.max_retries: Input should be less than or equal to 20",
        "scoring: weights sum to 0.95, they must sum to 1",
        "extra key 'foo' is not allowed (check spelling)",
        "versions.ensembl_release: Input should be greater than or equal to 100",
        "demo.layers.hearing.terms[0]: String should match pattern",
        "demo.tiers: medium (0.4) must be below high (0.2)",
        "store.database_mode: Input should be 'job' or 'head'",
    ]
    for fragment in expected:
        assert fragment in message
    assert message.count("; ") == len(expected) - 2
    assert "\n" not in message
    assert "errors.pydantic.dev" not in message
    assert "Traceback" not in message
    assert "Value error," not in message


def test_validate_config_dict_names_its_source_and_rejects_non_mappings():
    assert error_of({"versions": {"ensembl_release": 1}}, "snakemake config").startswith(
        "snakemake config is invalid: versions.ensembl_release"
    )
    with pytest.raises(ConfigError, match="must be a mapping .* not a list"):
        validate_config_dict([1, 2], "config/x.yaml")  # type: ignore[arg-type]


def test_validate_config_dict_does_not_change_its_input():
    data = embedded_dict()
    before = copy.deepcopy(data)
    validate_config_dict(data, "x")
    assert data == before


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# --- loading files --------------------------------------------------------------------------


def test_missing_file_message_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config("config/x.yaml")
    assert str(info.value) == (
        "config file config/x.yaml does not exist: pass an existing file or copy config/config.yaml"
    )


def test_directory_instead_of_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="is a directory, not a file"):
        load_config(tmp_path)


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = write(tmp_path, "versions:\n  ensembl_release: 113\napi: [1, 2\nstore: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"config file {path} is not valid YAML: line 4, column ")
    assert re.search(r"line \d+, column \d+: .*expected ',' or ']'", message)
    assert "\n" not in message


def test_yaml_indentation_error_names_the_line(tmp_path):
    path = write(tmp_path, "versions:\n  ensembl_release: 113\n gtex_version: v8\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML: line 3, column 2: "):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "a list"), ("just text\n", "a string"), ("42\n", "a number")]
)
def test_non_mapping_yaml_is_a_clear_error(tmp_path, text, kind):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"config file {path} must hold a mapping of keys to values at the top level, not {kind}"
    )


def test_empty_yaml_is_a_clear_error(tmp_path):
    path = write(tmp_path, "# nothing here\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_config(path)


def test_invalid_file_message_names_the_file(tmp_path):
    path = write(tmp_path, "versions:\n  ensembl_release: 113\napi:\n  max_retries: 50\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path} is invalid: api.max_retries: ")


def test_minimal_file_gets_defaults(tmp_path):
    path = write(tmp_path, "versions:\n  hpo: '2025-01-16'\n")
    assert load_config(path) == minimal()
    assert load_config(str(path)) == minimal()


def test_loading_creates_no_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = (
        "data_dir: d/data\ncache_dir: d/cache\nduckdb_path: out/db/p.duckdb\n"
        "results_dir: out/results\nversions:\n  ensembl_release: 113\n"
        "demo:\n  hpo_data_dir: hpo/files\n"
    )
    path = write(tmp_path, text)
    cfg = load_config(path)
    load_config_with_overrides(path, {"results_dir": "elsewhere", "cache_dir": "c/c"})
    cfg.config_hash()
    cfg.slice("data_dir", "demo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
    assert cfg.duckdb_path == Path("out/db/p.duckdb")


# --- overrides ------------------------------------------------------------------------------


def test_overrides_set_values_at_dotted_paths():
    cfg = load_config_with_overrides(
        EMBEDDED,
        {
            "api.max_retries": 3,
            "demo.gene_limit": 200,
            "store.database_mode": "head",
            "duckdb_path": "/scratch/p.duckdb",
            "demo.layers": {"hearing": {"terms": ["HP:0000365"], "weight": 1.0}},
        },
    )
    assert cfg.api.max_retries == 3
    assert cfg.demo.gene_limit == 200
    assert cfg.store.database_mode == "head"
    assert cfg.duckdb_path == Path("/scratch/p.duckdb")
    assert list(cfg.demo.layers) == ["hearing"]
    assert cfg.scoring is None


def test_no_overrides_equals_load_config():
    assert load_config_with_overrides(EMBEDDED, {}) == load_config(EMBEDDED)


def test_override_creates_a_missing_section(tmp_path):
    path = write(tmp_path, "versions:\n  ensembl_release: 113\n")
    cfg = load_config_with_overrides(path, {"demo.fetch.batch_size": 10})
    assert cfg.demo.fetch.batch_size == 10
    assert cfg.demo.fetch.batch_latency_seconds == 0.05


@pytest.mark.parametrize(
    ("dotted", "shown"),
    [
        ("api.max_retrys", "api.max_retrys"),
        ("foo.bar", "foo"),
        ("demo.fetch.size", "demo.fetch.size"),
    ],
)
def test_override_of_unknown_key_is_a_config_error_naming_it(dotted, shown):
    with pytest.raises(ConfigError) as info:
        load_config_with_overrides(EMBEDDED, {dotted: 3})
    message = str(info.value)
    assert dotted in message
    assert f"extra key {shown!r} is not allowed" in message


def test_override_below_a_value_is_a_config_error_naming_it():
    with pytest.raises(ConfigError) as info:
        load_config_with_overrides(EMBEDDED, {"versions.hpo.minor": 1})
    message = str(info.value)
    assert "override 'versions.hpo.minor'" in message
    assert "'versions.hpo' is a string, not a section" in message


@pytest.mark.parametrize("dotted", ["", "api.", ".api", "api..max_retries"])
def test_malformed_override_path_is_a_config_error(dotted):
    with pytest.raises(ConfigError, match="is not a dotted path"):
        load_config_with_overrides(EMBEDDED, {dotted: 1})


def test_invalid_override_value_names_the_path_and_the_overrides():
    with pytest.raises(ConfigError) as info:
        load_config_with_overrides(EMBEDDED, {"api.max_retries": 99})
    message = str(info.value)
    assert "with overrides api.max_retries=99 is invalid" in message
    assert "api.max_retries: Input should be less than or equal to 20" in message


def test_override_values_are_copied():
    layers = {"hearing": {"terms": ["HP:0000365"], "weight": 1.0}}
    cfg = load_config_with_overrides(EMBEDDED, {"demo.layers": layers})
    cfg.demo.layers["hearing"].terms.append("HP:0000479")
    assert layers == {"hearing": {"terms": ["HP:0000365"], "weight": 1.0}}


# --- config_hash ----------------------------------------------------------------------------


def test_config_hash_is_a_stable_sha256_hex():
    digest = minimal().config_hash()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert load_config(EMBEDDED).config_hash() == digest


UNHASHED = [
    ("data_dir", "/elsewhere/data"),
    ("cache_dir", "/elsewhere/cache"),
    ("duckdb_path", "/scratch/run/pipeline.duckdb"),
    ("results_dir", "/scratch/run/results"),
    ("store.lock_timeout_seconds", 5.0),
    ("store.database_mode", "head"),
    ("api.rate_limit_per_second", 1),
    ("api.max_retries", 20),
    ("api.cache_ttl_seconds", 0),
    ("api.timeout_seconds", 600),
    ("demo.fetch.batch_size", 7),
    ("demo.fetch.batch_latency_seconds", 0.0),
    ("demo.hpo_data_dir", "/data/hpo"),
]


@pytest.mark.parametrize(("dotted", "value"), UNHASHED)
def test_settings_that_do_not_change_results_keep_the_hash(dotted, value):
    base = load_config(EMBEDDED)
    changed = load_config_with_overrides(EMBEDDED, {dotted: value})
    assert changed != base
    assert changed.config_hash() == base.config_hash()


HASHED = [
    ("versions.ensembl_release", 112),
    ("versions.gnomad_version", "v4.0"),
    ("versions.gtex_version", "v10"),
    ("versions.hpa_version", "24.0"),
    ("versions.hpo", "2025-03-03"),
    ("versions.x", 1),
    ("demo.gene_limit", 100),
    ("demo.min_valid_id_fraction", 0.9),
    ("demo.usher_disease_pattern", "^Usher"),
    ("demo.tiers.high", 0.6),
    ("demo.tiers.medium", 0.1),
    ("demo.layers.hearing.terms", ["HP:0000365", "HP:0000407"]),
    (
        "demo.layers",
        {
            "hearing": {"terms": ["HP:0000365"], "weight": 0.5},
            "retina": {"terms": ["HP:0000479"], "weight": 0.5},
        },
    ),
]


@pytest.mark.parametrize(("dotted", "value"), HASHED)
def test_settings_that_change_results_change_the_hash(dotted, value):
    base = load_config(EMBEDDED)
    changed = load_config_with_overrides(EMBEDDED, {dotted: value})
    assert changed.config_hash() != base.config_hash()


def test_swapping_two_layer_weights_changes_the_hash():
    base = load_config(EMBEDDED)
    changed = load_config_with_overrides(
        EMBEDDED, {"demo.layers.retina.weight": 0.25, "demo.layers.vestibular.weight": 0.35}
    )
    assert changed.config_hash() != base.config_hash()


def test_config_hash_does_not_depend_on_key_order_in_the_file(tmp_path):
    data = embedded_dict()
    reordered = {key: data[key] for key in reversed(list(data))}
    reordered["demo"] = dict(reversed(list(data["demo"].items())))
    path = write(tmp_path, yaml.safe_dump(reordered, sort_keys=False))
    assert load_config(path).config_hash() == load_config(EMBEDDED).config_hash()


def test_config_hash_docstring_says_what_is_in_and_out():
    doc = PipelineConfig.config_hash.__doc__ or ""
    assert "In:" in doc and "Out:" in doc
    for name in ("versions", "scoring", "demo.fetch", "demo.hpo_data_dir", "store", "api"):
        assert name in doc


# --- one config hash for the demo's model and any workflow's raw config -----------------------

MOVED = {
    "data_dir": "/scratch/run/data",
    "cache_dir": "/scratch/run/cache",
    "results_dir": "/scratch/run/results",
    "duckdb_path": "/scratch/run/pipeline.duckdb",
    "logs_dir": "/scratch/run/logs",
    "store": {"database_mode": "head", "lock_timeout_seconds": 5.0},
    "api": {"max_retries": 1},
    "_usher_registry": {"tables": {"numbers": "numbers"}, "files": {}},
}


def test_library_hash_of_the_raw_config_is_the_models_hash():
    raw = embedded_dict()
    assert config_hash(raw) == load_config(EMBEDDED).config_hash()
    reordered = dict(reversed(list(raw.items())))
    assert config_hash(reordered) == config_hash(raw)
    # a config that leaves settings to their defaults hashes as its validated form does
    cfg = validate_config_dict({"versions": {"ensembl_release": 113}}, "x")
    assert config_hash(cfg.model_dump(mode="json")) == cfg.config_hash()


def test_a_moved_run_keeps_the_library_hash():
    raw = embedded_dict()
    moved = copy.deepcopy(raw) | copy.deepcopy(MOVED)
    moved["demo"]["fetch"] = {"batch_size": 7, "batch_latency_seconds": 0.0}
    moved["demo"]["hpo_data_dir"] = "/data/hpo"
    assert config_hash(moved) == config_hash(raw)
    own = {"count": 40, "batch_size": 8}
    assert config_hash(own | MOVED) == config_hash(own)
    assert config_hash({**own, "count": 41}) != config_hash(own)


def test_library_hash_leaves_out_further_paths_and_keeps_its_input():
    own = {"count": 40, "fetch": {"batch_size": 8, "source": "a"}}
    before = copy.deepcopy(own)
    base = config_hash(own, exclude=["fetch.batch_size"])
    assert (
        config_hash({**own, "fetch": {"batch_size": 99, "source": "a"}}, ["fetch.batch_size"])
        == base
    )
    assert (
        config_hash({**own, "fetch": {"batch_size": 8, "source": "b"}}, ["fetch.batch_size"])
        != base
    )
    assert config_hash(own) != base
    # a path that is not there, or goes below a value, leaves nothing out
    assert config_hash(own, exclude=["nope.x", "count.x"]) == config_hash(own)
    assert own == before


def write_library_workflow(folder: Path, head: str, tail: str = "") -> None:
    """A one-rule workflow in `folder` that includes the library between `head` and `tail`."""
    (folder / "Snakefile").write_text(
        f'{head}include: "{REPO / "rules" / "library.smk"}"\n{tail}'
        'rule all:\n    output:\n        "done.txt",\n    shell:\n        "touch {output}"\n',
        encoding="utf-8",
    )


def snakemake_in(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`snakemake ARGS` run in `folder` (outside the repository)."""
    return subprocess.run(
        [str(BIN / "snakemake"), *args], cwd=folder, capture_output=True, text=True, timeout=300
    )


# --- the library's keys in any workflow's config ---------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"store": {"database_mod": "head"}},
            "config key store.database_mod is not a library setting: did you mean "
            "store.database_mode?",
        ),
        (
            {"api": {"max_retrys": 3}},
            "config key api.max_retrys is not a library setting: did you mean api.max_retries?",
        ),
        (
            {"api": {"proxy": {}}},
            "config key api.proxy is not a library setting: api takes cache_ttl_seconds, "
            "max_retries, rate_limit_per_second, sources, timeout_seconds",
        ),
        *(
            (
                {typo: "x"},
                f"config key {typo} is not a library setting: did you mean {key}? (rename it "
                "if it is your workflow's own key)",
            )
            for typo, key in [
                ("result_dir", "results_dir"),
                ("duckdb_pth", "duckdb_path"),
                ("stor", "store"),
                ("Store", "store"),
                ("version", "versions"),
                ("log_dir", "logs_dir"),
                ("workflow_nam", "workflow_name"),
            ]
        ),
        (
            {"store": {"lock_timeout_seconds": -1}},
            "config key store.lock_timeout_seconds is invalid: Input should be greater than 0 "
            "(got -1)",
        ),
        (
            {"store": {"database_mode": "heads"}},
            "config key store.database_mode is invalid: Input should be 'job' or 'head' "
            "(got 'heads')",
        ),
        (
            {"store": 5},
            "config key store must be a section (a mapping of keys to values), not a number",
        ),
        (
            {"results_dir": None},
            "config key results_dir is null: set a value, or leave the key out",
        ),
        (
            {"results_dir": ["a"]},
            "config key results_dir must be a path (a string), not a list",
        ),
        (
            {"versions": {"hpo": ["2025"]}},
            "config key versions.hpo is invalid: a version must be one string or number, such "
            "as '2025-01-16', not a list",
        ),
        (
            {"workflow_name": ""},
            "config key workflow_name is invalid: String should have at least 1 character (got '')",
        ),
    ],
)
def test_a_library_key_that_is_misspelt_or_wrong_is_named_with_its_fix(config, message):
    with pytest.raises(LibraryConfigError) as info:
        validate_library_config({"count": 40, **config})
    assert str(info.value) == message
    assert isinstance(info.value, ConfigError)


def test_the_workflows_own_keys_stay_free_and_library_values_are_kept():
    own = {
        "count": 40,
        "results": "mine",  # not near enough to results_dir to be its misspelling
        "data": [1, 2],
        "logs": {"level": "debug"},
        "workflow": "x",
        "fetch": {"batch_size": 8},
        "_usher_registry": {"tables": {}},
    }
    library = {
        "results_dir": "out",
        "logs_dir": "out/logs",
        "workflow_name": "chrom-stats",
        "store": {"database_mode": "head", "lock_timeout_seconds": 5},
        "api": {"max_retries": 2},
        "versions": {"hpo": "2025-01-16", "ensembl": 113, "gencode": 47.0, "patched": True},
    }
    checked = validate_library_config({**own, **library})
    assert checked.results_dir == Path("out") and checked.logs_dir == Path("out/logs")
    assert checked.workflow_name == "chrom-stats"
    assert checked.store == StoreConfig(database_mode="head", lock_timeout_seconds=5.0)
    assert checked.api.max_retries == 2
    versions = checked.versions
    assert versions == library["versions"]
    assert [type(v) for v in versions.values()] == [str, int, float, bool]  # kept exactly
    assert checked.model_extra == {k: v for k, v in own.items() if not k.startswith("_")}
    # empty sections (`store:` with nothing below) and no config at all use the defaults
    empty = validate_library_config({"store": None, "api": None, "versions": None})
    assert empty == validate_library_config({})
    assert empty.duckdb_path == Path("results/pipeline.duckdb") and empty.versions == {}


def test_the_error_names_the_config_file_that_sets_the_key(tmp_path):
    first = write(tmp_path, "store:\n  database_mod: job\ncount: 1\n", "first.yaml")
    last = write(tmp_path, "store:\n  database_mod: head\n", "last.yaml")
    other = write(tmp_path, "count: 2\n", "other.yaml")
    config = {"count": 2, "store": {"database_mod": "head"}}
    with pytest.raises(LibraryConfigError) as info:
        validate_library_config(config, [first, last, other])
    assert str(info.value).startswith(f"config key store.database_mod (in {last}) is not")
    with pytest.raises(LibraryConfigError) as info:
        validate_library_config(config, [other])  # set by --config: no file to name
    assert str(info.value).startswith("config key store.database_mod is not")


def test_the_demos_model_reuses_the_library_models():
    for key in ("data_dir", "cache_dir", "duckdb_path", "results_dir", "logs_dir"):
        assert repr(PipelineConfig.model_fields[key]) == repr(LibraryConfig.model_fields[key])
    assert PipelineConfig.model_fields["store"].annotation is StoreConfig
    assert LibraryConfig.model_fields["store"].annotation is StoreConfig
    assert PipelineConfig.model_fields["api"].annotation is APIConfig
    assert LibraryConfig.model_fields["api"].annotation is APIConfig
    assert issubclass(PipelineConfig, LibrarySettings)
    assert issubclass(LibraryConfig, LibrarySettings)
    # the demo keeps its stricter checks: the old types of the four older versions, no free keys
    assert "versions.ensembl_release: Input should be greater than or equal to 100" in error_of(
        {"versions": {"ensembl_release": 99}}
    )
    assert "extra key 'count' is not allowed" in error_of({**embedded_dict(), "count": 1})


def test_existing_configs_pass_the_library_check():
    scenarios = sorted((REPO / "tests" / "configs").glob("*.yaml"))
    assert scenarios
    for path in [EMBEDDED, *scenarios]:
        validate_library_config(yaml.safe_load(path.read_text(encoding="utf-8")), [path])
    demo = load_config(EMBEDDED).model_dump(mode="json")  # as rules/common.smk hands it on
    checked = validate_library_config(demo)
    assert checked.versions == demo["versions"]
    assert checked.store == load_config(EMBEDDED).store


def test_any_workflow_refuses_a_config_file_that_names_a_key_twice(tmp_path):
    (tmp_path / "config.yaml").write_text("count: 40\nstore: {}\ncount: 41\n", encoding="utf-8")
    write_library_workflow(tmp_path, 'configfile: "config.yaml"\n')
    done = snakemake_in(tmp_path, "-n")
    assert done.returncode != 0
    assert "names the key 'count' twice (lines 1 and 3): keep one of them" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "done.txt").exists()


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            "count: 40\nstore:\n  database_mod: head\n",
            "usher_pipeline: config key store.database_mod (in config.yaml) is not a library "
            "setting: did you mean store.database_mode?",
        ),
        (
            "count: 40\nresult_dir: out\n",
            "usher_pipeline: config key result_dir (in config.yaml) is not a library setting: "
            "did you mean results_dir? (rename it if it is your workflow's own key)",
        ),
        (
            "count: 40\nstore:\n  lock_timeout_seconds: 0\n",
            "usher_pipeline: config key store.lock_timeout_seconds (in config.yaml) is invalid: "
            "Input should be greater than 0 (got 0)",
        ),
    ],
    ids=["section_key", "top_level_near_miss", "bound"],
)
def test_any_workflow_refuses_a_bad_library_key_before_any_job(tmp_path, text, line):
    (tmp_path / "config.yaml").write_text(text, encoding="utf-8")
    write_library_workflow(tmp_path, 'configfile: "config.yaml"\n')
    for args in (("-n",), ("--cores", "1")):
        done = snakemake_in(tmp_path, *args)
        assert done.returncode != 0
        assert [line] == [row for row in done.stderr.splitlines() if "usher_pipeline" in row]
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "done.txt").exists()
    assert not (tmp_path / "results").exists()


# --- config slices: each job's hash, each sidecar's, the run's ----------------------------------

SLICED_SNAKEFILE = """\
configfile: "config/config.yaml"


include: "{library}/library.smk"


USHER.register("numbers")
USHER.register("scaled")


rule all:
    default_target: True
    input:
        USHER.run_record,
        USHER.sidecars(),
        USHER.products(),
        USHER.steplogs(),


rule numbers:
    output:
        table=USHER.sentinel("numbers"),
        steplog=USHER.steplog("numbers"),
    params:
        how_many=config["count"],
    script:
        "scripts/numbers.py"


rule scaled:
    input:
        numbers=USHER.sentinel("numbers"),
    output:
        table=USHER.sentinel("scaled"),
        steplog=USHER.steplog("scaled"),
    params:
        factor=config["factor"],
    script:
        "scripts/scaled.py"


"""

#: The library's provenance rules, included or loaded as a Snakemake module.
SLICED_TAILS = {
    "include": 'include: "{library}/provenance.smk"\n',
    "module": (
        'module usher:\n    snakefile:\n        "{library}/module.smk"\n    config:\n'
        "        config\n\n\nuse rule * from usher as usher_*\n"
    ),
}

SLICED_SCRIPTS = {
    "numbers.py": (
        "import polars as pl\n\nfrom usher_pipeline.workflow import Job\n\n"
        "with Job(snakemake) as job:\n"
        "    job.save(pl.DataFrame({'n': list(range(int(snakemake.params.how_many)))}))\n"
    ),
    "scaled.py": (
        "import polars as pl\n\nfrom usher_pipeline.workflow import Job\n\n"
        "with Job(snakemake) as job:\n"
        "    numbers = job.read('numbers')\n"
        "    job.save(numbers.with_columns(pl.col('n') * int(snakemake.params.factor)))\n"
    ),
}


def write_sliced_workflow(folder: Path, config: dict[str, Any], form: str = "include") -> Path:
    """A two-rule workflow of its own in `folder`, each rule given one key of `config`, with
    the library's provenance rules in `form` (a key of SLICED_TAILS)."""
    (folder / "scripts").mkdir(parents=True)
    (folder / "config").mkdir()
    text = SLICED_SNAKEFILE + SLICED_TAILS[form]
    (folder / "Snakefile").write_text(text.format(library=REPO / "rules"), encoding="utf-8")
    for name, text in SLICED_SCRIPTS.items():
        (folder / "scripts" / name).write_text(text, encoding="utf-8")
    config_file = folder / "config" / "config.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    return config_file


def checkpoint_hashes(db_path: Path) -> dict[str, str]:
    import duckdb

    with duckdb.connect(str(db_path), read_only=True) as conn:
        rows = conn.sql("SELECT table_name, config_hash FROM _checkpoints").fetchall()
    return {str(name): str(digest) for name, digest in rows}


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("form", list(SLICED_TAILS))
def test_each_job_sidecar_and_run_records_the_hash_of_the_slices_it_used(tmp_path, form):
    folder = tmp_path / "my workflow"
    config = {"count": 5, "factor": 3, "versions": {"x": 1}}
    config_file = write_sliced_workflow(folder, config, form)
    done = snakemake_in(folder, "--cores", "1")
    assert done.returncode == 0, done.stderr
    results = folder / "results"
    steplogs = {n: read_json(results / "steplogs" / f"{n}.json") for n in ("numbers", "scaled")}
    assert steplogs["numbers"]["params"] == {"how_many": 5}
    for name, record in steplogs.items():
        assert record["config_slice_hash"] == slice_hash(record["params"]), name
        assert "config_hash" not in record  # no hash of a whole config that no job used
    assert checkpoint_hashes(results / "pipeline.duckdb") == {
        name: record["config_slice_hash"] for name, record in steplogs.items()
    }
    numbers = read_json(results / "tables" / "numbers.provenance.json")
    scaled = read_json(results / "tables" / "scaled.provenance.json")
    run = read_json(results / "provenance.json")
    assert numbers["config_hash"] == jobs_config_hash([steplogs["numbers"]])
    assert scaled["config_hash"] == jobs_config_hash(steplogs.values())
    assert run["config_hash"] == jobs_config_hash(reversed(list(steplogs.values())))
    assert numbers["config_hash"] != scaled["config_hash"]
    assert [s["details"] for s in scaled["processing_steps"]] == list(steplogs.values())

    # a key that no rule reads, and one of the library's: nothing to do
    unread = {**config, "note": "not read by any rule", "api": {"max_retries": 2}}
    config_file.write_text(yaml.safe_dump(unread), encoding="utf-8")
    done = snakemake_in(folder, "-n")
    assert done.returncode == 0, done.stderr
    assert "Nothing to be done" in done.stdout + done.stderr, done.stdout
    # a key that one rule reads reruns that rule, what reads its table, and the provenance
    config_file.write_text(yaml.safe_dump({**unread, "factor": 4}), encoding="utf-8")
    done = snakemake_in(folder, "--cores", "1")
    assert done.returncode == 0, done.stderr
    text = done.stdout + done.stderr
    assert "rule scaled:" in text and "rule numbers:" not in text
    rerun = read_json(results / "steplogs" / "scaled.json")
    assert rerun["config_slice_hash"] == slice_hash({"factor": 4})
    assert (
        read_json(results / "tables" / "numbers.provenance.json")["config_hash"]
        == (numbers["config_hash"])
    )
    assert read_json(results / "provenance.json")["config_hash"] == jobs_config_hash(
        [steplogs["numbers"], rerun]
    )


# --- slice and data_source_versions ---------------------------------------------------------


def test_slice_returns_json_values_keyed_by_dotted_path():
    cfg = load_config(EMBEDDED)
    assert cfg.slice("demo.tiers", "versions.hpo") == {
        "demo.tiers": {"high": 0.5, "medium": 0.3},
        "versions.hpo": "2025-01-16",
    }
    assert cfg.slice("demo.layers.hearing") == {
        "demo.layers.hearing": {"terms": ["HP:0000365"], "weight": 0.4}
    }
    assert cfg.slice("duckdb_path", "demo.hpo_data_dir") == {
        "duckdb_path": "results/pipeline.duckdb",
        "demo.hpo_data_dir": None,
    }
    assert cfg.slice() == {}
    json.dumps(cfg.slice("versions", "api", "store", "demo", "results_dir"))


def test_slice_is_a_copy():
    cfg = load_config(EMBEDDED)
    part = cfg.slice("demo.tiers")
    part["demo.tiers"]["high"] = 0.9
    assert cfg.demo.tiers.high == 0.5


@pytest.mark.parametrize(
    ("dotted", "fragment"),
    [
        ("demo.tier", "demo has no key 'tier'"),
        ("nope", "the top level has no key 'nope'"),
        ("", "the top level has no key ''"),
        ("demo.layers.cochlea", "demo.layers has no key 'cochlea'"),
        ("versions.hpo.minor", "which is a value, not a section"),
    ],
)
def test_slice_of_unknown_path_is_a_key_error_naming_it(dotted, fragment):
    with pytest.raises(KeyError) as info:
        load_config(EMBEDDED).slice("versions", dotted)
    message = info.value.args[0]
    assert f"config path {dotted!r}" in message
    assert fragment in message


def test_slice_changes_only_when_its_settings_change():
    base = load_config(EMBEDDED)
    changed = load_config_with_overrides(EMBEDDED, {"demo.tiers.high": 0.7})
    assert base.slice("demo.layers") == changed.slice("demo.layers")
    assert base.slice("demo.tiers") != changed.slice("demo.tiers")


def test_data_source_versions_is_the_versions_section():
    assert load_config(EMBEDDED).data_source_versions() == {"hpo": "2025-01-16"}
    assert validate_config_dict(old_config(), "x").data_source_versions() == OLD_VERSIONS


# --- schema and package surface -------------------------------------------------------------


def test_committed_schema_file_equals_the_model_output():
    expected = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
    assert SCHEMA_FILE.read_text(encoding="utf-8") == expected, (
        "config/config.schema.json is stale: run "
        "python -m usher_pipeline.config > config/config.schema.json"
    )


def test_schema_module_prints_the_schema_cleanly():
    result = subprocess.run(
        [sys.executable, "-m", "usher_pipeline.config"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == SCHEMA_FILE.read_text(encoding="utf-8")
    assert result.stderr == ""


@pytest.mark.parametrize(
    "name", ["hearing", "hearing_2", "a" * 41, "a" * 42, "Hearing", "1x", "hear-ing", "", "x y"]
)
def test_json_schema_and_model_agree_on_layer_names(name):
    validator = jsonschema.Draft202012Validator(json_schema())
    data = with_value("demo.layers", {name: {"terms": ["HP:0000365"], "weight": 1.0}})
    try:
        validate_config_dict(data, "x")
    except ConfigError:
        accepted = False
    else:
        accepted = True
    assert validator.is_valid(data) == accepted


def test_json_schema_forbids_unknown_keys():
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert "required" not in schema
    assert schema["properties"]["scoring"]["deprecated"] is True
    for name in ("APIConfig", "DemoConfig", "LayerConfig", "TierThresholds", "StoreConfig"):
        assert schema["$defs"][name]["additionalProperties"] is False
    validator = jsonschema.Draft202012Validator(schema)
    assert not validator.is_valid({"versions": {"ensembl_release": 113}, "foo": 1})
    bad_layer = {"versions": {"ensembl_release": 113}, "demo": {"layers": {"Bad": {}}}}
    assert not validator.is_valid(bad_layer)
    assert validator.is_valid({"versions": {"ensembl_release": 113}})


def test_package_exports_resolve_and_parsing_stays_light():
    for name in config_pkg.__all__:
        assert getattr(config_pkg, name).__module__.startswith("usher_pipeline.config.")
    with pytest.raises(AttributeError):
        config_pkg.NotAThing  # noqa: B018
    # the workflow imports the package when Snakemake parses it: no data library may load
    probe = (
        "import sys, usher_pipeline.config; "
        "print(sorted({'polars', 'duckdb', 'numpy', 'pyarrow'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --- duplicate keys and values that would crash every job ---------------------------------


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        (
            "duckdb_path: a.duckdb\nversions:\n  ensembl_release: 113\nduckdb_path: b.duckdb\n",
            "duckdb_path",
            (1, 4),
        ),
        (
            "versions:\n  ensembl_release: 113\nscoring:\n  gnomad: 0.2\n"
            "api: {}\nscoring:\n  gnomad: 0.3\n",
            "scoring",
            (3, 6),
        ),
        (
            "versions:\n  ensembl_release: 113\nstore:\n  lock_timeout_seconds: 5\n"
            "  lock_timeout_seconds: 50\n",
            "lock_timeout_seconds",
            (4, 5),
        ),
    ],
    ids=["top_level_value", "section", "nested_value"],
)
def test_a_key_given_twice_is_an_error_naming_it_and_both_lines(tmp_path, text, key, lines):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"config file {path} names the key {key!r} twice (lines {lines[0]} and {lines[1]}): "
        "keep one of them"
    )
    with pytest.raises(ConfigError, match="twice"):
        load_config_with_overrides(path, {"api.max_retries": 3})


def test_a_merge_key_may_bring_a_key_that_the_mapping_sets_again(tmp_path):
    path = write(
        tmp_path,
        "versions:\n  ensembl_release: 113\ndemo:\n  layers:\n"
        "    hearing: &layer\n      terms: [HP:0000365]\n      weight: 0.5\n"
        "    retina:\n      <<: *layer\n      weight: 0.5\n",
    )
    layers = load_config(path).demo.layers
    assert layers["retina"].terms == ["HP:0000365"] and layers["retina"].weight == 0.5


@pytest.mark.parametrize(
    ("dotted", "text", "reason"),
    [
        ("store.lock_timeout_seconds", ".inf", "finite number"),
        ("store.lock_timeout_seconds", ".nan", "finite number"),
        ("store.lock_timeout_seconds", "1e10", "less than or equal to 604800"),
        ("store.lock_timeout_seconds", "604801", "less than or equal to 604800"),
        ("demo.fetch.batch_latency_seconds", ".inf", "finite number"),
        ("demo.fetch.batch_latency_seconds", "3601", "less than or equal to 3600"),
        ("store.load_memory_mb", "100000000000000000000", "less than or equal to 1048576"),
        ("store.load_memory_mb", "1048577", "less than or equal to 1048576"),
    ],
)
def test_values_that_would_crash_every_job_are_refused(tmp_path, dotted, text, reason):
    section, *middle, leaf = dotted.split(".")
    indent = "  "
    body = f"{section}:\n" + "".join(
        f"{indent * (n + 1)}{part}:\n" for n, part in enumerate(middle)
    )
    body += f"{indent * (len(middle) + 1)}{leaf}: {text}\n"
    path = write(tmp_path, "versions:\n  ensembl_release: 113\n" + body)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path} is invalid: {dotted}: ")
    assert reason in message and "\n" not in message


def test_the_largest_accepted_values_work_in_a_store(tmp_path):
    import polars as pl

    from usher_pipeline.config.schema import MAX_LOAD_MEMORY_MB, MAX_LOCK_TIMEOUT_S
    from usher_pipeline.persistence import PipelineStore

    path = write(
        tmp_path,
        "versions:\n  ensembl_release: 113\n"
        f"store:\n  lock_timeout_seconds: {MAX_LOCK_TIMEOUT_S}\n"
        f"  load_memory_mb: {MAX_LOAD_MEMORY_MB}\n"
        "demo:\n  fetch:\n    batch_latency_seconds: 3600\n",
    )
    cfg = load_config(path)
    store = PipelineStore(
        tmp_path / "pipeline.duckdb",
        cfg.store.lock_timeout_seconds,
        load_memory_mb=cfg.store.load_memory_mb,
    )
    with store.transaction():  # a lock wait of a week is a valid deadline
        store.save_dataframe(pl.DataFrame({"x": [1, 2]}), "numbers")
    assert store.row_count("numbers") == 2
