"""Path conventions of a run and the registry of what it produces.

A workflow registers each stored table (and each extra file such as a TSV report) with the
job whose step log describes it; the provenance rule then knows every step log to merge and
every sidecar to write, and the head-node ingest knows every table to load.

Table patterns
--------------
A rule with wildcards saves one table per wildcard value. It is registered once, by pattern:

    USHER.register("chrom_stats_{chrom}", chrom=CHROMS)     # values given here, or
    USHER.register("chrom_stats_{chrom}")                   # values found in the rules

A pattern is expanded into concrete tables (`chrom_stats_chr1`, ...), each with its step log
named after the pattern formatted with the same values (`chrom_stats_chr1`); every consumer of
the registry (`sentinel`, `products`, `sidecars`, `steplogs`, `table_steplogs`, `tables`, the
head-node ingest, the provenance rule) sees only the concrete tables.

The values come from two places, and their union is used:

- the keyword arguments of `register` (a list per wildcard; their product, as `expand` makes);
- the concrete paths that the workflow's rules name in their `input:` and `output:` (for
  example an aggregate's `expand(USHER.sentinel("chrom_stats_{chrom}"), chrom=CHROMS)`), read
  from the public `workflow.rules` when rules/provenance.smk is included (`expand_patterns`).

Why then and not when the DAG is built: the provenance rule's outputs (a sidecar per product)
are a fixed list that Snakemake takes when the rule is defined, and an output cannot be a
function. Values that only an input function knows therefore come too late; a pattern with no
value at that point stops the workflow with an error that asks for the values at registration.
For the same reason a `rule all` that lists `USHER.products()` before provenance.smk is
included needs the values at registration (the call says so), and a table registered after
provenance.smk is refused.

Wildcard values that are not table names
----------------------------------------
Tables are lowercase letters, digits and underscores (`settings.TABLE_NAME_PATTERN`, and
DuckDB folds the case of identifiers, so `chrX` and `chrx` would be one table). A value that
makes an invalid name (`chrX`) is refused when the pattern is expanded, before any job runs,
in one line that names the value, the pattern and the fix: pass values that are valid (for
example `chrom=[c.lower() for c in CHROMS]`) and keep the display name in a column.

No automatic mapping is offered, on purpose: a mapping that leaves valid names as they are
(`chr1` -> `chr1`) cannot also be one-to-one on the rest (`chrX` -> `chr_x` would meet the
valid `chr_x`), and one that is one-to-one (escaping every underscore as well) renames tables
that are valid today. The workflow is the one place that knows its values, so it maps them.
"""

from __future__ import annotations

import itertools
import os
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from usher_pipeline.persistence.duckdb_store import validate_table_name
from usher_pipeline.persistence.provenance import sidecar_path
from usher_pipeline.settings import (
    DEFAULT_LOGS_DIR,
    DEFAULT_RESULTS_DIR,
    MAX_NAME_LENGTH,
    RUN_RECORD_NAME,
    is_table_name,
)
from usher_pipeline.workflow.tablemeta import KeySpec, LayoutError, put_table_meta, table_meta

Values = str | int | Iterable[str | int]


def new_registry() -> dict[str, Any]:
    """An empty registry: plain JSON values, so it can live in Snakemake's `config`."""
    return {"tables": {}, "files": {}, "patterns": {}, "meta": {}, "expanded": False}


def wildcard_names(pattern: str) -> list[str]:
    """The wildcards of `pattern` in order of first use (`{chrom}`; no constraints or specs)."""
    names: list[str] = []
    try:
        fields = list(string.Formatter().parse(pattern))
    except ValueError as error:
        raise LayoutError(
            f"pattern {pattern!r} has unbalanced braces ({error}): write wildcards as {{name}}"
        ) from None
    for _literal, name, spec, conversion in fields:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            shown = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise LayoutError(
                f"pattern {pattern!r} has the field {{{shown}}}: write wildcards as plain "
                "{name} and put constraints in wildcard_constraints:"
            )
        if name not in names:
            names.append(name)
    return names


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A regex that matches the paths `pattern` makes; a wildcard matches within one folder."""
    parts: list[str] = []
    seen: set[str] = set()
    for literal, name, _spec, _conversion in string.Formatter().parse(pattern):
        parts.append(re.escape(literal))
        if name is not None:
            parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>[^/]+)")
            seen.add(name)
    return re.compile("".join(parts))


def rule_paths(rules: Iterable[Any]) -> list[tuple[str, str]]:
    """(path, "rule NAME") for every concrete path in the `input:` and `output:` of `rules`
    (Snakemake's `workflow.rules`): input functions are left out, as they run later."""
    from snakemake.io import is_callable

    found: list[tuple[str, str]] = []
    for rule in rules:
        for item in (*rule.input, *rule.output):
            if isinstance(item, str) and not is_callable(item):
                found.append((str(item), f"rule {rule.name}"))
    return found


@dataclass
class Layout:
    """Where a run's files go, below `results_dir` (and `logs_dir` for job logs).

    `registry` holds what was registered (see `new_registry`); the library keeps it in the
    workflow's config so that a module given `config: config` shares it. With
    `exit_on_error`, a registration error stops the workflow with its one line instead of a
    traceback (as the library's rules do).
    """

    results_dir: str = DEFAULT_RESULTS_DIR
    logs_dir: str = DEFAULT_LOGS_DIR
    registry: dict[str, Any] = field(default_factory=new_registry)
    exit_on_error: bool = False

    def __post_init__(self) -> None:
        self.results_dir = str(Path(self.results_dir))
        for key, empty in new_registry().items():
            self.registry.setdefault(key, empty)

    @property
    def tables(self) -> dict[str, str]:
        """Every registered concrete table -> the name of its job's step log."""
        tables: dict[str, str] = self.registry["tables"]
        return tables

    @property
    def files(self) -> dict[str, str]:
        """Every registered extra file -> the name of its job's step log."""
        files: dict[str, str] = self.registry["files"]
        return files

    @property
    def patterns(self) -> dict[str, dict[str, Any]]:
        """Step log pattern -> its job's table and file patterns, wildcards and values."""
        patterns: dict[str, dict[str, Any]] = self.registry["patterns"]
        return patterns

    # -- paths -----------------------------------------------------------------------------

    def sentinel(self, table: str) -> str:
        """The sentinel Parquet of a table."""
        return f"{self.results_dir}/tables/{table}.parquet"

    def steplog(self, name: str) -> str:
        """The step log of the job named `name` (by convention its main table)."""
        return f"{self.results_dir}/steplogs/{name}.json"

    def final(self, name: str) -> str:
        """A final output (report) of the run."""
        return f"{self.results_dir}/final/{name}"

    def log(self, rule: str, name: str) -> str:
        """The text log of one job."""
        return f"{self.logs_dir}/{rule}/{name}.log"

    @property
    def ingest_record(self) -> str:
        """What the head-node ingest loaded into the database (head database mode only)."""
        return f"{self.results_dir}/ingested.json"

    @property
    def run_record(self) -> str:
        """The run-level provenance record."""
        return f"{self.results_dir}/{RUN_RECORD_NAME}"

    @property
    def history_report(self) -> list[str]:
        """The report's run-history pages (rules/report.smk): what changed since the previous
        run, and this run's lineage picture; add them to `rule all` to have them made."""
        return [self.final("changes.html"), self.final("lineage.png")]

    # -- registry --------------------------------------------------------------------------

    def register(
        self,
        *tables: str,
        steplog: str | None = None,
        files: Iterable[str | Path] = (),
        key: KeySpec = None,
        noun: str | None = None,
        label: str | None = None,
        **values: Values,
    ) -> None:
        """Record tables (and extra files) made by one job, whose step log is `steplog`
        (by default named after the first table).

        Tables, files and the step log name may be patterns with the same wildcards
        (`"chrom_stats_{chrom}"`); keyword arguments give values per wildcard
        (`chrom=["chr1", "chr2"]`), and rules/provenance.smk adds those its rules name.

        For `usher-pipeline diff`: `key` names the column(s) that identify a row (one list for
        every table of the call, or a mapping table -> columns), `noun` what a row is, in the
        plural ("genes"), and `label` a column shown beside the key ("gene_symbol").
        """
        try:
            put_table_meta(self.registry, tables, key, noun, label)
            if self.registry["expanded"]:
                raise LayoutError(
                    f"{', '.join(tables or (str(steplog),))} registered after "
                    "rules/provenance.smk was included: register every table before including "
                    "it (the provenance rule's outputs are fixed there)"
                )
            if not tables and steplog is None:
                raise LayoutError("register() needs at least one table or a steplog name")
            name = steplog or tables[0]
            paths = [str(path) for path in files]
            wildcards = wildcard_names(name)
            if not wildcards and not any(map(wildcard_names, (*tables, *paths))):
                if values:
                    raise LayoutError(
                        f"register({', '.join(map(repr, tables))}) got values for "
                        f"{', '.join(values)} but names no wildcard: write the tables as "
                        "patterns such as 'stats_{chrom}' or drop the values"
                    )
                for table in tables:
                    self._put(self.tables, validate_table_name(table), name)
                for path in paths:
                    self._put(self.files, path, name)
                return
            self._register_pattern(name, list(tables), paths, wildcards, values)
        except LayoutError as error:
            self._stop(error)

    def table_meta(self, table: str) -> dict[str, Any]:
        """The key, noun and label registered for a concrete table (or its pattern)."""
        return table_meta(self.registry, table)

    def history_meta(self) -> dict[str, dict[str, Any]]:
        """`table_meta` of every registered concrete table that has any (the provenance rule's
        param, recorded in the run history)."""
        self._concrete()
        found = {table: self.table_meta(table) for table in self.tables}
        return {t: m for t, m in found.items() if any(v is not None for v in m.values())}

    def _register_pattern(
        self,
        name: str,
        tables: list[str],
        paths: list[str],
        wildcards: list[str],
        values: Mapping[str, Values],
    ) -> None:
        for item in (*tables, *paths):
            if set(wildcard_names(item)) != set(wildcards):
                raise LayoutError(
                    f"pattern {item!r} has the wildcards {wildcard_names(item)} and its step log "
                    f"{name!r} has {wildcards}: every table, file and step log of one job needs "
                    "the same wildcards"
                )
        for table in tables:
            self._check_literal(table, wildcards)
        if values and set(values) != set(wildcards):
            raise LayoutError(
                f"pattern {name!r} has the wildcards {wildcards} but values were given for "
                f"{sorted(values)}: give values for every wildcard, or for none"
            )
        entry = {"tables": tables, "files": paths, "wildcards": wildcards, "values": []}
        known = self.patterns.setdefault(name, entry)
        if {k: v for k, v in known.items() if k != "values"} != {
            k: v for k, v in entry.items() if k != "values"
        }:
            raise LayoutError(
                f"the step log pattern {name!r} is registered twice with different tables or "
                "files: register each job's pattern once"
            )
        lists = [_value_list(w, values[w]) for w in wildcards] if values else []
        for combo in itertools.product(*lists) if values else ():
            self._add(name, dict(zip(wildcards, combo, strict=True)), "register()")

    def expand_patterns(self, paths: Iterable[tuple[str, str]]) -> None:
        """Add the values that `paths` show (pairs of path and where it was named, see
        `rule_paths`), then require every pattern to have values; later registrations are
        refused. rules/provenance.smk calls this before it defines the provenance rule."""
        try:
            matchers = [
                (name, pattern_regex(os.path.normpath(path)), _fixed_length(path))
                for name, entry in self.patterns.items()
                for path in (*map(self.sentinel, entry["tables"]), *entry["files"])
            ]
            registered = {
                os.path.normpath(p) for p in (*map(self.sentinel, self.tables), *self.files)
            }
            for path, source in paths:
                path = os.path.normpath(path)
                if path in registered or "{" in path or "}" in path:
                    continue
                found = [
                    (m, name, fixed) for name, r, fixed in matchers if (m := r.fullmatch(path))
                ]
                # a path that two patterns match ("stats_{c}", "stats_{c}_depth") belongs to
                # the one that fixes more of it, as the more specific rule output would
                most = max((fixed for _m, _name, fixed in found), default=0)
                for match, name, fixed in found:
                    if fixed == most:
                        self._add(name, match.groupdict(), source)
            for first, call in self._unvalued():
                raise LayoutError(
                    f"table pattern {first!r} has no values: no rule before rules/provenance.smk "
                    "names one of its paths, and the provenance rule's outputs are fixed there "
                    f"(an input function's values come too late): pass them, {call}"
                )
            self.registry["expanded"] = True
        except LayoutError as error:
            self._stop(error)

    def _add(self, name: str, combo: dict[str, str], source: str) -> None:
        """Register the concrete tables and files of one job of pattern `name`."""
        entry = self.patterns[name]
        if combo in entry["values"]:
            return
        steplog = name.format(**combo)
        for pattern in entry["tables"]:
            table = pattern.format(**combo)
            if len(table) > MAX_NAME_LENGTH or not is_table_name(table):
                bad = {k: v for k, v in combo.items() if not _fragment(v)} or combo
                shown = ", ".join(f"{k}={v!r}" for k, v in bad.items())
                raise LayoutError(
                    f"table pattern {pattern!r} with {shown} (from {source}) makes {table!r}, "
                    "which is not a table name (lowercase letters, digits and underscores, "
                    f"starting with a letter, at most {MAX_NAME_LENGTH}): use valid values, e.g. "
                    f"{next(iter(bad))}=[v.lower() for v in ...], and keep the display name in "
                    "a column"
                )
            self._put(self.tables, table, steplog)
        for pattern in entry["files"]:
            self._put(self.files, pattern.format(**combo), steplog)
        entry["values"].append(combo)

    def _unvalued(self) -> list[tuple[str, str]]:
        """(first pattern, `register` call that gives values) of each pattern with no value."""
        found = []
        for entry in self.patterns.values():
            if not entry["values"]:
                first = (entry["tables"] or entry["files"])[0]
                example = ", ".join(f"{w}=[...]" for w in entry["wildcards"])
                found.append((first, f"USHER.register({first!r}, {example})"))
        return found

    @staticmethod
    def _put(registry: dict[str, str], key: str, steplog: str) -> None:
        known = registry.setdefault(key, steplog)
        if known != steplog:
            raise LayoutError(
                f"{key!r} is registered for two step logs, {known!r} and {steplog!r}: register "
                "it with the one job that writes it"
            )

    @staticmethod
    def _check_literal(pattern: str, wildcards: list[str]) -> None:
        """The fixed part of a table pattern must fit a table name whatever the values."""
        sample = pattern.format(**dict.fromkeys(wildcards, "a"))
        if not is_table_name(sample):
            raise LayoutError(
                f"table pattern {pattern!r} cannot make a table name (lowercase letters, digits "
                "and underscores, starting with a letter): change its fixed part"
            )

    def _stop(self, error: LayoutError) -> NoReturn:
        if self.exit_on_error:
            raise SystemExit(f"usher_pipeline: {error}") from None
        raise error

    def _concrete(self) -> None:
        """Every pattern must have values before a list of concrete paths is made."""
        try:
            for first, call in self._unvalued():
                raise LayoutError(
                    f"table pattern {first!r} has no values yet, so the registry cannot list its "
                    f"paths: pass them at registration, {call}, or ask for the list after "
                    "including rules/provenance.smk (or in an input function)"
                )
        except LayoutError as error:
            self._stop(error)

    # -- what the run makes ----------------------------------------------------------------

    def steplogs(self) -> list[str]:
        """Every registered step log, without repeats."""
        self._concrete()
        names = dict.fromkeys([*self.tables.values(), *self.files.values()])
        return [self.steplog(name) for name in names]

    def products(self) -> list[str]:
        """Every registered sentinel and extra file."""
        self._concrete()
        return [self.sentinel(t) for t in self.tables] + list(self.files)

    def sidecars(self) -> list[str]:
        """The sidecar of every product."""
        return [str(sidecar_path(p)) for p in self.products()]

    def table_steplogs(self) -> list[str]:
        """The step log of every job that saves a registered table, without repeats."""
        self._concrete()
        return [self.steplog(name) for name in dict.fromkeys(self.tables.values())]


def _fixed_length(pattern: str) -> int:
    """How many characters of `pattern` are not wildcards."""
    return sum(len(literal) for literal, *_rest in string.Formatter().parse(pattern))


def _fragment(value: str) -> bool:
    """Whether `value` may stand inside a table name."""
    return re.fullmatch(r"[a-z0-9_]+", value) is not None


def _value_list(wildcard: str, values: Values) -> list[str]:
    """The values given for one wildcard as strings (one string or number is one value)."""
    items = [values] if isinstance(values, str | int) else list(values)
    if not items:
        raise LayoutError(
            f"the values of {{{wildcard}}} are empty: give at least one, or leave the wildcard's "
            "values to the rules"
        )
    for item in items:
        if not isinstance(item, str | int) or isinstance(item, bool):
            raise LayoutError(
                f"the value {item!r} of {{{wildcard}}} is a {type(item).__name__}: give strings"
            )
    return [str(item) for item in items]
