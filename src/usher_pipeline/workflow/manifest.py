"""The run manifest: what a workflow that includes `rules/library.smk` records about itself, so
that the `usher-pipeline` command finds its store, results, step logs and config without flags.

The main Snakemake process writes `<workdir>/.snakemake/usher_pipeline/manifest.json` once the
whole Snakefile is parsed, when Snakemake starts executing (the first log record after the
executor is chosen, before the DAG is built): a real run writes it when anything but its time
changed, a dry run (or `--touch`) only when none exists, so that `-n` with another config never
redirects the command. Commands that execute nothing (`--lint`, `--list`, `--dag`,
`--report`) leave it alone.

`snakemake_args` are the arguments a pasted `snakemake ...` hint needs, run from the working
directory, to address the same workflow. They are read from the public attributes of
Snakemake's `workflow` and, for profiles, from the command line of the main process:

- `--snakefile FILE` when the main Snakefile is not the one Snakemake finds by default in the
  working directory (`Snakefile`, `snakefile`, `workflow/Snakefile`, `workflow/snakefile`);
- `--configfile FILE ...` for the config files given on the command line;
- `--config KEY=VALUE ...` for the values given on the command line (as Snakemake passes them
  on to its own jobs);
- `--profile P` and `--workflow-profile P` as given on the `snakemake` command line (a profile
  given by a path that exists relative to the shell's directory `$PWD` but not to the working
  directory is written as an absolute path; `$SNAKEMAKE_PROFILE` needs nothing: the same shell
  has it).

Paths are relative to the working directory when they lie inside it, absolute otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import TypeAdapter, ValidationError

from usher_pipeline import __version__
from usher_pipeline._io import read_json, write_text_atomic
from usher_pipeline.errors import UsherError
from usher_pipeline.hashing import sha256_file
from usher_pipeline.settings import (
    DEFAULT_DATABASE_MODE,
    DEFAULT_DB_PATH,
    DEFAULT_LOCK_TIMEOUT_S,
    DEFAULT_LOGS_DIR,
    DEFAULT_RESULTS_DIR,
    DatabaseMode,
)

MANIFEST_VERSION: Final = 1
#: Where the manifest lives, relative to the working directory.
MANIFEST_PATH: Final = Path(".snakemake") / "usher_pipeline" / "manifest.json"
#: The rule files of the library itself (in its rules/ folder): not the workflow's own files,
#: and neither are the scripts of the rules they define.
LIBRARY_RULE_FILES: Final = (
    "library.smk",
    "ingest.smk",
    "provenance.smk",
    "module.smk",
    "report.smk",
    "download.smk",
)
#: Where Snakemake looks for a Snakefile when none is given, in this order.
DEFAULT_SNAKEFILES: Final = ("Snakefile", "snakefile", "workflow/Snakefile", "workflow/snakefile")

FileRole = Literal["snakefile", "rules", "script", "config"]


class ManifestError(UsherError):
    """A manifest file that cannot be read as a run manifest."""


@dataclass(frozen=True)
class WorkflowFile:
    """One file of the workflow, with its SHA-256."""

    path: str  # relative to the working directory when inside it
    role: FileRole
    sha256: str


@dataclass(frozen=True)
class WorkflowIdentity:
    """What the workflow is: its name, its own version, and its files."""

    name: str
    version: str | None
    files: tuple[WorkflowFile, ...]


@dataclass(frozen=True)
class Manifest:
    """Where a workflow keeps its store, results, step logs and config (the manifest file)."""

    manifest_version: int
    written_at: str
    workdir: str
    snakefile: str
    configfiles: tuple[str, ...]
    results_dir: str
    logs_dir: str
    duckdb_path: str
    database_mode: DatabaseMode
    lock_timeout_seconds: float
    pipeline_version: str
    library_rules: str
    snakemake_args: tuple[str, ...]
    workflow: WorkflowIdentity

    def resolve(self, path: str) -> Path:
        """A path of the manifest as an absolute path (relative ones are in the workdir)."""
        return Path(self.workdir) / path

    def as_json(self) -> dict[str, Any]:
        """The manifest as the JSON object of its file."""
        return asdict(self)


_ADAPTER: Final = TypeAdapter(Manifest)


def manifest_path(workdir: str | Path) -> Path:
    """The manifest file of the working directory `workdir`."""
    return Path(workdir) / MANIFEST_PATH


def find_manifest(start: Path) -> Path | None:
    """The manifest of the working directory `start`, or None (like Snakemake, the folder
    itself is searched, not its parents)."""
    path = manifest_path(start)
    return path if path.is_file() else None


def load_manifest(path: str | Path) -> Manifest:
    """Read a manifest file; ManifestError, in one sentence, when it is not one."""
    fix = "rerun snakemake in its working directory to write it again"
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
        raise ManifestError(f"run manifest {path} cannot be read ({why}): {fix}") from None
    version = data.get("manifest_version") if isinstance(data, dict) else None
    if isinstance(version, int) and version > MANIFEST_VERSION:
        raise ManifestError(
            f"run manifest {path} has version {version}, newer than this usher_pipeline "
            f"({__version__}) reads: upgrade usher_pipeline"
        )
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "its top level"
        raise ManifestError(
            f"run manifest {path} is not a usher_pipeline run manifest ({where}: "
            f"{error['msg']}): {fix}"
        ) from None


# -- what the workflow is -------------------------------------------------------------------


def _shown(path: Path, workdir: Path) -> str:
    """`path` relative to `workdir` when inside it, else absolute."""
    full = path if path.is_absolute() else workdir / path
    resolved = full.resolve()
    if resolved.is_relative_to(workdir):
        return str(resolved.relative_to(workdir))
    return str(full.absolute())


def _local_path(source: Any) -> Path | None:
    """The local path of a Snakemake source file (None for a remote one)."""
    if not getattr(source, "is_local", True):
        return None
    if hasattr(source, "get_path_or_uri"):
        return Path(source.get_path_or_uri(secret_free=True))
    return Path(str(source))


def workflow_name(snakefile: Path, config: Mapping[str, Any]) -> str:
    """The workflow's name: config key `workflow_name`, else the Snakefile's folder name (its
    parent's name when that folder is Snakemake's conventional `workflow/`)."""
    given = config.get("workflow_name")
    if given:
        return str(given)
    folder = snakefile.resolve().parent
    if folder.name == "workflow" and folder.parent.name:
        folder = folder.parent
    return folder.name or "workflow"


def workflow_version(folder: Path) -> str | None:
    """`git describe --always --dirty --tags` in `folder`, or None when it is not in git."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    version = done.stdout.strip()
    return version if done.returncode == 0 and version else None


def workflow_files(
    workflow: Any, workdir: Path, library_rules: Path | None
) -> tuple[WorkflowFile, ...]:
    """The main Snakefile, the included rule files and the rules' scripts that are not the
    library's, and the config files, each once, with their SHA-256."""
    library = (
        {(library_rules / name).resolve() for name in LIBRARY_RULE_FILES}
        if library_rules is not None
        else set()
    )
    found: list[tuple[Path, FileRole]] = []
    main = Path(workflow.main_snakefile)
    found.append((main, "snakefile"))
    for source in workflow.included:
        path = _local_path(source)
        if path is not None and path.resolve() not in library:
            found.append((path, "rules"))
    for rule in workflow.rules:
        script = getattr(rule, "script", None)
        if not isinstance(script, str) or "{" in script:
            continue  # a script named by wildcards is known only per job
        if Path(str(rule.snakefile)).resolve() in library:
            continue
        base = _local_path(rule.basedir) if rule.basedir is not None else None
        path = Path(script) if Path(script).is_absolute() or base is None else base / script
        found.append((path, "script"))
    for configfile in workflow.configfiles:
        found.append((Path(configfile), "config"))
    files: list[WorkflowFile] = []
    seen: set[Path] = set()
    for path, role in found:
        full = (path if path.is_absolute() else workdir / path).resolve()
        if full in seen or not full.is_file():
            continue
        seen.add(full)
        files.append(WorkflowFile(_shown(full, workdir), role, sha256_file(full)))
    return tuple(files)


# -- how to address it from the shell -------------------------------------------------------


def _profiles(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """The --profile values and the --workflow-profile given on a `snakemake` command line
    (nothing when the process is not the `snakemake` command)."""
    program = Path(argv[0]).name if argv else ""
    if program != "snakemake" and not (program == "__main__.py" and "snakemake" in argv[0]):
        return [], None
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--profile", action="append", default=[])
    parser.add_argument("--workflow-profile")
    known, _ = parser.parse_known_args(list(argv[1:]))
    return list(known.profile), known.workflow_profile


def _profile_argument(value: str, workdir: Path) -> str:
    """A profile as a pasted command in the workdir finds it: as given when it is a name or a
    path valid there, else the absolute path it had in the shell's directory."""
    if value == "none" or Path(value).is_absolute() or (workdir / value).exists():
        return value
    shell_dir = os.environ.get("PWD")
    if shell_dir and (Path(shell_dir) / value).exists():
        return str((Path(shell_dir) / value).absolute())
    return value


def snakemake_arguments(workflow: Any, workdir: Path, argv: Sequence[str]) -> list[str]:
    """The arguments a `snakemake` command run in `workdir` needs to address this workflow."""
    arguments: list[str] = []
    snakefile = Path(workflow.main_snakefile).resolve()
    default = next(
        (workdir / name for name in DEFAULT_SNAKEFILES if (workdir / name).is_file()), None
    )
    if default is None or default.resolve() != snakefile:
        arguments += ["--snakefile", _shown(snakefile, workdir)]
    settings = getattr(workflow, "config_settings", None)
    configfiles = list(getattr(settings, "configfiles", None) or [])
    if configfiles:
        arguments += ["--configfile", *(_shown(Path(f), workdir) for f in configfiles)]
    overrides = list(getattr(settings, "config_args", None) or [])
    if overrides:
        arguments += ["--config", *(str(item) for item in overrides)]
    if getattr(settings, "replace_workflow_config", False):
        arguments.append("--replace-workflow-config")
    profiles, workflow_profile = _profiles(argv)
    for profile in profiles:
        arguments += ["--profile", _profile_argument(profile, workdir)]
    if workflow_profile:
        arguments += ["--workflow-profile", _profile_argument(workflow_profile, workdir)]
    return arguments


# -- writing --------------------------------------------------------------------------------


def build_manifest(
    workflow: Any,
    config: Mapping[str, Any],
    *,
    library_rules: Path | None,
    workdir: Path | None = None,
    argv: Sequence[str] | None = None,
) -> Manifest:
    """The manifest of a parsed workflow (Snakemake's `workflow` and `config`)."""
    here = (workdir or Path.cwd()).resolve()
    store = config.get("store") or {}
    snakefile = Path(workflow.main_snakefile)
    return Manifest(
        manifest_version=MANIFEST_VERSION,
        written_at=datetime.now(UTC).isoformat(),
        workdir=str(here),
        snakefile=str(snakefile.absolute()),
        configfiles=tuple(
            str(f if Path(f).is_absolute() else here / f) for f in workflow.configfiles
        ),
        results_dir=str(config.get("results_dir", DEFAULT_RESULTS_DIR)),
        logs_dir=str(config.get("logs_dir", DEFAULT_LOGS_DIR)),
        duckdb_path=str(config.get("duckdb_path", DEFAULT_DB_PATH)),
        database_mode=store.get("database_mode", DEFAULT_DATABASE_MODE),
        lock_timeout_seconds=float(store.get("lock_timeout_seconds", DEFAULT_LOCK_TIMEOUT_S)),
        pipeline_version=__version__,
        library_rules=str(library_rules.absolute()) if library_rules is not None else "",
        snakemake_args=tuple(
            snakemake_arguments(workflow, here, sys.argv if argv is None else argv)
        ),
        workflow=WorkflowIdentity(
            name=workflow_name(snakefile, config),
            version=workflow_version(snakefile.absolute().parent),
            files=workflow_files(workflow, here, library_rules),
        ),
    )


def _comparable(data: Any) -> Any:
    """A manifest's JSON without its time, to tell whether anything else changed."""
    return {k: v for k, v in data.items() if k != "written_at"} if isinstance(data, dict) else data


def save_manifest(manifest: Manifest, *, dry_run: bool = False) -> Path | None:
    """Write `manifest` into its workdir atomically; None when nothing was written (the same
    content but its time, or a dry run and a manifest already there)."""
    path = manifest_path(manifest.workdir)
    data = manifest.as_json()
    if path.is_file():
        if dry_run:
            return None
        try:
            if _comparable(read_json(path)) == _comparable(json.loads(json.dumps(data))):
                return None
        except (OSError, ValueError):
            pass  # unreadable: written again
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_manifest(
    workflow: Any,
    config: Mapping[str, Any],
    *,
    library_rules: Path | None,
    dry_run: bool = False,
    argv: Sequence[str] | None = None,
) -> Path | None:
    """Build the manifest of the workflow that is starting and save it (`save_manifest`)."""
    manifest = build_manifest(workflow, config, library_rules=library_rules, argv=argv)
    return save_manifest(manifest, dry_run=dry_run)


def write_manifest_at_start(
    workflow: Any, config: Mapping[str, Any], *, library_rules: Path | None
) -> None:
    """Have the manifest written when Snakemake starts executing this workflow, after the
    whole Snakefile is parsed (once, however often the library is included): on the first
    Snakemake log record after the executor is chosen (workflow/startup.py)."""
    from usher_pipeline.workflow.startup import when_set_up

    def write() -> None:
        dry_run = bool(workflow.dryrun or workflow.touch)
        try:
            write_manifest(workflow, config, library_rules=library_rules, dry_run=dry_run)
        except (UsherError, OSError) as exc:
            print(f"usher_pipeline: the run manifest was not written: {exc}", file=sys.stderr)

    when_set_up(
        workflow,
        "manifest",
        ready=lambda: getattr(workflow, "executor_plugin", None) is not None,
        run=write,
    )


def workflow_paths(manifest: Manifest, roles: Iterable[FileRole]) -> list[Path]:
    """The absolute paths of the workflow's files of the given roles."""
    wanted = set(roles)
    return [manifest.resolve(f.path) for f in manifest.workflow.files if f.role in wanted]
