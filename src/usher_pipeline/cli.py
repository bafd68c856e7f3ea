"""The `usher-pipeline` command: inspect, verify, repair and publish a run's results.

    usher-pipeline checkpoints                 the stored tables and their checkpoints
    usher-pipeline verify                      do database, sentinels and step logs agree?
    usher-pipeline repair                      restore the database from the sentinels
    usher-pipeline lineage OUTPUT              the steps that produced an output
    usher-pipeline query "SELECT ..."          read-only SQL against the store
    usher-pipeline export-prov FILE            W3C PROV-JSON of the run
    usher-pipeline export-rocrate DIR          Workflow Run RO-Crate (Provenance Run Crate)
    usher-pipeline runs | diff | history | show | gc    the run history (cli_history.py)

Expected failures print one sentence and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usher_pipeline import __version__
from usher_pipeline.cli_history import add_history_commands
from usher_pipeline.cli_render import (
    Hints,
    Progress,
    clip,
    format_table,
    lineage_lines,
    print_frame,
    terminal_width,
)
from usher_pipeline.errors import UsherError
from usher_pipeline.settings import DEFAULT_LOCK_TIMEOUT_S

if TYPE_CHECKING:
    from usher_pipeline.export.run import RunRecords
    from usher_pipeline.persistence import PipelineStore
    from usher_pipeline.workflow.manifest import Manifest

DEFAULT_CONFIG = "config/config.yaml"
QUERY_ROWS = 50


class CommandError(UsherError):
    """A command that cannot do what was asked; the message says why and what to do."""


# -- settings ------------------------------------------------------------------------------


@dataclass
class Settings:
    """Where the run's files are: the database, the results directory, the config file; the
    run manifest when the workflow wrote one; how hints spell the commands they name."""

    db: Path
    results: Path
    config: Path | None
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S
    manifest: Manifest | None = None
    hints: Hints = field(default_factory=Hints)

    def store(self) -> PipelineStore:
        """The store (constructing it creates a missing database file: check first)."""
        from usher_pipeline.persistence import PipelineStore

        return PipelineStore(self.db, lock_timeout=self.lock_timeout)

    def run(self) -> RunRecords:
        """The step logs of the run."""
        from usher_pipeline.export.run import load_run

        return load_run(self.results)


def library_settings(path: Path) -> tuple[Path, Path, float]:
    """(duckdb_path, results_dir, store.lock_timeout_seconds) of a workflow's config file:
    only the library's keys are read and checked, the workflow's own keys are free."""
    from usher_pipeline.config.library import validate_library_config
    from usher_pipeline.config.loader import read_config_file

    library = validate_library_config(read_config_file(path), [path])
    return library.duckdb_path, library.results_dir, library.store.lock_timeout_seconds


def given_options(args: argparse.Namespace) -> tuple[str, ...]:
    """The --config/--db/--results options the user gave, as a hint repeats them."""
    options: list[str] = []
    for name in ("config", "db", "results"):
        value = getattr(args, name, None)
        if value:
            options += [f"--{name}", str(value)]
    return tuple(options)


def resolve_settings(args: argparse.Namespace) -> Settings:
    """Where the run is, from the working directory (after -C): --config/--db/--results
    when given, else the run manifest the workflow wrote, else the demo's config file."""
    from usher_pipeline.workflow.manifest import (
        MANIFEST_PATH,
        ManifestError,
        find_manifest,
        load_manifest,
    )

    found = find_manifest(Path.cwd())
    try:
        manifest = load_manifest(found) if found is not None else None
    except ManifestError:
        if not (args.db or args.config):
            raise
        manifest = None  # the flags say where the run is; the hints are the plain ones
    config_path: Path | None = Path(args.config) if args.config else None
    db = Path(args.db) if args.db else None
    results = Path(args.results) if args.results else None
    lock_timeout = DEFAULT_LOCK_TIMEOUT_S
    if config_path is not None:
        config_db, config_results, lock_timeout = library_settings(config_path)
        db, results = db or config_db, results or config_results
    elif manifest is not None:
        config_path = _config_of(manifest)
        db = db or Path(manifest.duckdb_path)
        results = results or Path(manifest.results_dir)
        lock_timeout = manifest.lock_timeout_seconds
    elif Path(DEFAULT_CONFIG).is_file():
        config_path = Path(DEFAULT_CONFIG)
        config_db, config_results, lock_timeout = library_settings(config_path)
        db, results = db or config_db, results or config_results
    elif db is None:
        raise CommandError(
            f"no usher_pipeline workflow in {Path.cwd()} (no {MANIFEST_PATH}): run snakemake "
            "in that directory first, or pass -C DIR or --db FILE"
        )
    assert db is not None
    hints = Hints(
        directory=args.directory,
        usher_options=given_options(args),
        snakemake_args=manifest.snakemake_args if manifest is not None else (),
    )
    return Settings(
        db=db,
        results=results or db.parent,
        config=config_path,
        lock_timeout=lock_timeout,
        manifest=manifest,
        hints=hints,
    )


def _config_of(manifest: Manifest) -> Path | None:
    """The first config file of a manifest, relative to the workdir when inside it."""
    if not manifest.configfiles:
        return None
    first = Path(manifest.configfiles[0])
    workdir = Path(manifest.workdir)
    return first.relative_to(workdir) if first.is_relative_to(workdir) else first


# -- commands ------------------------------------------------------------------------------


def cmd_checkpoints(args: argparse.Namespace, settings: Settings) -> int:
    """Print the `_checkpoints` table."""
    from usher_pipeline.persistence.fingerprint import short_fingerprint

    if not settings.db.exists():
        raise CommandError(
            f"database {settings.db} does not exist: run the workflow "
            f"(`{settings.hints.snakemake()}`), or rebuild it from the sentinels with "
            f"`{settings.hints.usher('repair')}`"
        )
    rows = settings.store().list_checkpoints()
    headers = ["table", "rows", "created (UTC)", "fprint", "rule"]
    table = [
        [
            r["table_name"],
            r["row_count"],
            r["created_at"].strftime("%Y-%m-%d %H:%M") if r["created_at"] else "",
            short_fingerprint(r["fingerprint"]),
            r["rule"],
        ]
        for r in rows
    ]
    descriptions = [" ".join(str(r["description"] or "").split()) for r in rows]
    wide = format_table(
        [*headers, "description"],
        [[*t, d] for t, d in zip(table, descriptions, strict=True)],
        width=10_000,
        right=[1],
    )
    width = terminal_width()
    if max(len(line) for line in wide.splitlines()) <= width:
        print(wide)
    else:
        lines = format_table(headers, table, right=[1]).splitlines()
        print(lines[0])
        for line, description in zip(lines[1:], descriptions, strict=True):
            print(line)
            if description:
                print(clip(f"    {description}", width))
    print(f"{len(rows)} tables in {settings.db}")
    return 0


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    """Compare database, sentinels and step logs; exit 1 on any disagreement."""
    from usher_pipeline.audit import verify

    run = settings.run()
    with Progress() as progress:
        report = verify(
            run, settings.db, settings.lock_timeout, progress=progress, hints=settings.hints
        )
    print(
        f"checked {settings.db}: {report.tables} tables, {report.sentinels} sentinels, "
        f"{report.steplogs} step logs ({report.outputs} outputs)"
    )
    for problem in report.problems:
        print(f"{problem.kind:<8} {problem.message}")
    if report.ok:
        print("verify: database, sentinels and step logs agree")
        return 0
    fixable = sum(1 for p in report.problems if p.repairable)
    noun = "problem" if len(report.problems) == 1 else "problems"
    print(
        f"verify: {len(report.problems)} {noun}, {fixable} repairable with "
        f"`{settings.hints.usher('repair')}`"
    )
    return 1


def cmd_repair(args: argparse.Namespace, settings: Settings) -> int:
    """Restore missing or differing tables from their sentinels."""
    from usher_pipeline.audit import repair

    run = settings.run()
    with Progress() as progress:
        result = repair(
            run, settings.db, settings.lock_timeout, progress=progress, hints=settings.hints
        )
    if result.moved_aside:
        print(f"moved the unreadable database aside to {result.moved_aside}")
    if result.created:
        print(f"created a new database {settings.db}")
    for line in result.restored:
        print(line)
    if result.provenance_rows:
        print(f"recorded {result.provenance_rows} _provenance rows from the sidecars")
    for line in result.unrepairable:
        print(f"cannot repair {line}")
    print(
        f"repair: {len(result.restored)} restored, {len(result.unrepairable)} left to "
        "recompute with Snakemake"
    )
    return 1 if result.unrepairable else 0


def lineage_hints(args: argparse.Namespace) -> Hints:
    """Hints for `lineage`, which needs no settings: the manifest's when there is a readable
    one, the plain commands otherwise."""
    from usher_pipeline.workflow.manifest import ManifestError, find_manifest, load_manifest

    found = find_manifest(Path.cwd())
    try:
        arguments = load_manifest(found).snakemake_args if found is not None else ()
    except ManifestError:
        arguments = ()
    return Hints(directory=args.directory, snakemake_args=arguments)


def cmd_lineage(args: argparse.Namespace, settings: Settings | None) -> int:
    """Print the tree of steps that produced OUTPUT, from its provenance sidecar."""
    from usher_pipeline.lineage import path_key
    from usher_pipeline.persistence.errors import SidecarError
    from usher_pipeline.persistence.provenance import ProvenanceTracker, sidecar_path

    output = Path(args.output)
    sidecar = sidecar_path(output)
    if not sidecar.is_file():
        raise CommandError(
            f"{output} has no provenance sidecar {sidecar}: give a sentinel or final output of "
            "a finished run (the provenance rule writes the sidecars)"
        )
    try:
        data = ProvenanceTracker.load_sidecar(sidecar)
        records = [s["details"] for s in data["processing_steps"]]
        target = path_key(data["output"]["path"])
    except (SidecarError, KeyError, TypeError):
        raise CommandError(
            f"sidecar {sidecar} is not a provenance sidecar: rerun the provenance rule "
            f"(`{lineage_hints(args).forcerun(sidecar)}`)"
        ) from None
    producer = [
        i for i, r in enumerate(records) if any(path_key(e["path"]) == target for e in r["outputs"])
    ]
    if not producer:
        raise CommandError(f"sidecar {sidecar} names no step that wrote {target}")
    out = data["output"]
    head = f"{target}"
    if out.get("rows") is not None:
        head += f"  {out['rows']} rows"
    if out.get("sha256"):
        head += f"  sha256 {out['sha256'][:12]}"
    print(head)
    print(
        f"config {str(data.get('config_hash') or '')[:16]}  pipeline {data.get('pipeline_version')}"
    )
    for line in lineage_lines(records, producer[-1]):
        print(clip(line, terminal_width()))
    return 0


def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    """Run read-only SQL and print the result as a table, CSV or JSON."""
    if not settings.db.exists():  # a store would create it
        raise CommandError(
            f"database {settings.db} does not exist: run the workflow "
            f"(`{settings.hints.snakemake()}`) or pass --db FILE"
        )
    history = settings.results / "history"
    frame = settings.store().query(args.sql, readable=[history] if history.is_dir() else [])
    print_frame(frame, args.format, args.limit)
    return 0


def cmd_export_prov(args: argparse.Namespace, settings: Settings) -> int:
    """Write the run as a PROV-JSON document."""
    from usher_pipeline.export.prov import write_prov
    from usher_pipeline.export.workflow import fallback_note

    run = settings.run()
    if settings.manifest is None:
        print(f"usher-pipeline: {fallback_note(Path.cwd())}", file=sys.stderr)
    with Progress() as progress:
        summary = write_prov(
            run,
            args.file,
            config_path=settings.config,
            progress=progress,
            manifest=settings.manifest,
        )
    print(
        f"wrote {args.file}: {summary['entities']} entities, {summary['activities']} "
        f"activities, {summary['agents']} agents, {summary['relations']} relations"
    )
    return 0


# -- init: a new workflow that uses the library -------------------------------------------


def cmd_init(args: argparse.Namespace, settings: Settings | None) -> int:
    """Write a new workflow into an empty folder (usher_pipeline.scaffold)."""
    import shlex

    from usher_pipeline.scaffold import init_workflow

    written = init_workflow(args.folder, name=args.name)
    print(f"wrote {len(written)} files into {args.folder}; run it with:")
    print(f"  cd {shlex.quote(str(args.folder))} && snakemake --cores 2")
    return 0


# -- end of init ---------------------------------------------------------------------------


def cmd_export_rocrate(args: argparse.Namespace, settings: Settings) -> int:
    """Write the run as a Workflow Run RO-Crate (Provenance Run Crate profile)."""
    from usher_pipeline.export.rocrate import write_rocrate
    from usher_pipeline.export.workflow import fallback_note

    run = settings.run()
    if settings.manifest is None:
        print(f"usher-pipeline: {fallback_note(Path.cwd())}", file=sys.stderr)
    with Progress() as progress:
        summary = write_rocrate(
            run,
            args.dir,
            config_path=settings.config,
            snakefile=Path(args.snakefile) if args.snakefile else None,
            progress=progress,
            manifest=settings.manifest,
        )
    print(
        f"wrote {args.dir}: run of {summary['workflow']}, {summary['actions']} actions, "
        f"{summary['files']} files, conforms to {', '.join(summary['profiles'])}"
    )
    return 0


# -- parser --------------------------------------------------------------------------------


def _add_global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """--directory, --config, --db and --results, valid before or after the command."""
    parser.add_argument(
        "-C",
        "--directory",
        metavar="DIR",
        default=default,
        help="run as if started in DIR (the workflow's working directory)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=default,
        help=f"pipeline config (default {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--db", metavar="FILE", default=default, help="DuckDB store (default: duckdb_path)"
    )
    parser.add_argument(
        "--results",
        metavar="DIR",
        default=default,
        help="results directory (default: results_dir)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="usher-pipeline",
        description="Inspect, verify, repair and publish the results of an usher_pipeline run.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, default=None)
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, default=argparse.SUPPRESS)  # also accepted after COMMAND
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable[..., int], help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        command.set_defaults(func=func, needs_settings=True)
        return command

    add("checkpoints", cmd_checkpoints, "list the stored tables and their checkpoints")
    add("verify", cmd_verify, "check that database, sentinels and step logs agree")
    add("repair", cmd_repair, "restore missing or differing tables from their sentinels")
    lineage = add("lineage", cmd_lineage, "show the steps that produced an output")
    lineage.set_defaults(needs_settings=False)  # reads only the sidecar it is given
    lineage.add_argument("output", metavar="OUTPUT", help="a sentinel or final output")
    query = add("query", cmd_query, "run read-only SQL against the store")
    query.add_argument("sql", metavar="SQL")
    query.add_argument("--format", choices=["table", "csv", "json"], default="table")
    query.add_argument(
        "--limit",
        type=int,
        default=QUERY_ROWS,
        help=f"rows shown as a table (default {QUERY_ROWS}; 0 = all)",
    )
    prov = add("export-prov", cmd_export_prov, "write the run as W3C PROV-JSON")
    prov.add_argument("file", metavar="FILE")
    crate = add("export-rocrate", cmd_export_rocrate, "write the run as a Workflow Run RO-Crate")
    crate.add_argument("dir", metavar="DIR")
    crate.add_argument(
        "--snakefile",
        metavar="FILE",
        help="the Snakefile that ran, for a run without a manifest (default: ./Snakefile)",
    )
    add_history_commands(add)
    init_help = "write a new workflow that uses the library into DIR"
    init = sub.add_parser("init", help=init_help, description=init_help)
    init.set_defaults(func=cmd_init, needs_settings=False)  # writes a new folder, reads no run
    init.add_argument("folder", metavar="DIR", help="a new or empty folder")
    init.add_argument("--name", help="the workflow's name (default: the folder's name)")
    return parser


# The package each export command needs (in the `export` extra) and the module it imports.
EXPORT_PACKAGES = {
    "export-prov": ("prov", "prov.model"),
    "export-rocrate": ("rocrate", "rocrate.rocrate"),
}


def require_export_package(command: str) -> None:
    """Refuse an export command in one line, naming the extra, when its package is missing."""
    if command not in EXPORT_PACKAGES:
        return
    package, module = EXPORT_PACKAGES[command]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CommandError(
            f"{command} needs the package {package}, which cannot be imported ({reason}): "
            "pip install 'usher_pipeline[export]'"
        ) from None


def with_hints(message: str, settings: Settings | None) -> str:
    """An error message whose `usher-pipeline repair` (named by the store, which knows no
    workflow directory) is spelt to work in the user's shell."""
    if settings is None:
        return message
    return message.replace("`usher-pipeline repair`", f"`{settings.hints.usher('repair')}`")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `usher-pipeline` and `python -m usher_pipeline`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    settings: Settings | None = None
    try:
        if args.directory:
            try:
                os.chdir(args.directory)
            except OSError as exc:
                raise CommandError(
                    f"cannot change to directory {args.directory} ({exc.strerror}): pass an "
                    "existing directory to -C"
                ) from None
        require_export_package(args.command)
        settings = resolve_settings(args) if args.needs_settings else None
        return int(args.func(args, settings))
    except UsherError as error:
        sys.stdout.flush()
        print(f"usher-pipeline: error: {with_hints(str(error), settings)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print("usher-pipeline: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
