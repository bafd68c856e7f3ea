"""Load and validate the pipeline config, turning every failure into one readable ConfigError.

Loading has no side effects: it reads the file and validates it, and never creates the
directories the config names (the rules that write there create them).
"""

from __future__ import annotations

import copy
import difflib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError

from usher_pipeline.errors import UsherError

if TYPE_CHECKING:  # imported where used: the schema's models import this module's error
    from usher_pipeline.config.schema import PipelineConfig

_PREFIXES = ("Value error, ", "Assertion failed, ")
_MAX_INPUT_REPR = 60
_SUGGEST_CUTOFF = 0.6  # how alike (difflib's ratio) an unknown key must be to be suggested


class ConfigError(UsherError, ValueError):
    """The config file is missing, not YAML, or does not validate; the message says which."""


class _DuplicateKey(yaml.YAMLError):
    """A mapping of the YAML file names one key twice (YAML would keep the last silently)."""

    def __init__(self, key: object, first: int, second: int) -> None:
        super().__init__(f"key {key!r} appears twice, on lines {first} and {second}")
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that names one key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may repeat keys
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the safe loader reports it below
                continue
            if first is not None:
                raise _DuplicateKey(key, first, line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a YAML config file."""
    return validate_config_dict(_read_yaml_mapping(path), str(path))


def check_config_file(path: str | Path) -> None:
    """Refuse a config file that is not a YAML mapping or names a key twice (YAML would
    silently keep the last value): the check a workflow runs on each of its config files."""
    _read_yaml_mapping(path)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config file holds, unvalidated; refused as `check_config_file`
    refuses it."""
    return _read_yaml_mapping(path)


def load_config_with_overrides(path: str | Path, overrides: Mapping[str, Any]) -> PipelineConfig:
    """Read a YAML config, set `overrides` (dotted path -> value) into it, then validate.

    Overrides are applied before validation, so an override naming a key the model does not
    know fails like a misspelt key in the file would.
    """
    data = _read_yaml_mapping(path)
    for dotted, value in overrides.items():
        _set_dotted(data, dotted, value, str(path))
    if overrides:
        shown = ", ".join(f"{key}={value!r}" for key, value in overrides.items())
        source = f"{path} with overrides {shown}"
    else:
        source = str(path)
    return validate_config_dict(data, source)


def validate_config_dict(data: Mapping[str, Any], source: str) -> PipelineConfig:
    """Validate an already-loaded config mapping (e.g. Snakemake's `config`).

    `source` names where the data came from, for the error message.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"config from {source} must be a mapping of keys to values at the top level, "
            f"not {_kind(data)}"
        )
    from usher_pipeline.config.schema import PipelineConfig

    try:
        return PipelineConfig.model_validate(dict(data))
    except ValidationError as exc:
        problems = "; ".join(
            _describe(error, PipelineConfig) for error in exc.errors(include_url=False)
        )
        raise ConfigError(f"{source} is invalid: {problems}") from None


def _read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Parse a YAML file whose top level must be a mapping."""
    file = Path(path)
    if not file.is_file():
        what = "is a directory, not a file" if file.is_dir() else "does not exist"
        raise ConfigError(
            f"config file {path} {what}: pass an existing file or copy config/config.yaml"
        )
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except _DuplicateKey as exc:
        raise ConfigError(
            f"config file {path} names the key {exc.key!r} twice (lines {exc.first} and "
            f"{exc.second}): keep one of them"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        raise ConfigError(
            f"config file {path} is empty: it must hold a mapping of keys to values "
            "(copy config/config.yaml)"
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of keys to values at the top level, "
            f"not {_kind(data)}"
        )
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Line, column and problem of a YAML error, on one line."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    text = f"{context}, {problem}" if context else problem
    text = " ".join(text.split())
    if mark is None:
        return text
    return f"line {mark.line + 1}, column {mark.column + 1}: {text}"


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    """Set `value` at a dotted path in nested dicts, creating missing sections."""
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(
            f"override {dotted!r} for {source} is not a dotted path such as 'api.max_retries'"
        )
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            parent = ".".join(parts[: depth + 1])
            raise ConfigError(
                f"override {dotted!r} for {source} cannot be set: {parent!r} is "
                f"{_kind(child)}, not a section"
            )
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def _describe(error: Mapping[str, Any], model: type[BaseModel] | None = None) -> str:
    """One pydantic error as 'dotted.path: reason'; an unknown key of `model` (at any depth)
    with the nearest key it knows there, when one is close."""
    path = _dotted(error["loc"])
    if error["type"] == "extra_forbidden":
        text = f"extra key {path!r} is not allowed (check spelling)"
        known = _keys_beside(model, error["loc"]) if model is not None else ()
        *parents, key = (str(part) for part in error["loc"])
        found = difflib.get_close_matches(key, known, n=1, cutoff=_SUGGEST_CUTOFF)
        if found:
            text += f": did you mean {'.'.join([*parents, found[0]])!r}?"
        return text
    message = str(error["msg"])
    for prefix in _PREFIXES:
        if message.startswith(prefix):
            message = message[len(prefix) :]
    message = " ".join(message.split())
    given = error.get("input")
    if error["type"] != "missing" and isinstance(given, str | int | float | bool):
        shown = repr(given)
        if len(shown) <= _MAX_INPUT_REPR and not (isinstance(given, str) and shown in message):
            message = f"{message} (got {shown})"
    return f"{path}: {message}" if path else message


def _keys_beside(model: type[BaseModel], loc: Sequence[int | str]) -> tuple[str, ...]:
    """The keys the model knows in the section that holds the key at `loc` (the sections of a
    mapping of models, such as the demo's layers, included); () where it is not a model."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            current = field.annotation if field is not None else None
        elif typing.get_origin(current) is dict:  # a mapping's key: its values' model
            current = typing.get_args(current)[1]
        else:
            return ()
    if isinstance(current, type) and issubclass(current, BaseModel):
        return tuple(current.model_fields)
    return ()


def _dotted(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic location as 'demo.layers.hearing.terms[0]'."""
    text = ""
    for part in loc:
        if part == "[key]":  # a dict key failed: the path up to the key names it
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text = f"{text}.{part}" if text else str(part)
    return text


def _kind(value: object) -> str:
    """Human name of a YAML value's type."""
    names = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    for kind, name in names.items():
        if type(value) is kind:
            return name
    return "null" if value is None else f"a {type(value).__name__}"
