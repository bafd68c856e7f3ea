"""What the exports say about the workflow that ran: its name, its own version and its files.

A workflow that includes `rules/library.smk` writes a run manifest at the start of each run
(`usher_pipeline.workflow.manifest`): the workflow's name (config key `workflow_name`, else the
Snakefile's folder), its version (`git describe` when the Snakefile is in git) and its
Snakefile, rule files, scripts and config files with their SHA-256 as they were when the run
started. The exports describe the workflow from it. A run older than the manifest is described
as before: the Snakefile, the `rules/*.smk` beside it and the config file, named as the demo
workflow with the library's version.
"""

from __future__ import annotations

import getpass
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from usher_pipeline import __version__
from usher_pipeline.hashing import sha256_file

if TYPE_CHECKING:
    from usher_pipeline.workflow.manifest import Manifest

Role = Literal["snakefile", "rules", "script", "config"]
#: The name a run without a manifest is given (the demo workflow's).
FALLBACK_NAME = "usher_pipeline demo workflow"


@dataclass(frozen=True)
class SourceFile:
    """One file of the workflow: where it is now, its role, and its SHA-256 when the run
    started (`current` is its SHA-256 now, None when it is gone)."""

    path: Path  # absolute
    shown: str  # as the manifest names it: relative to the workdir when inside it
    role: Role
    sha256: str
    current: str | None

    @property
    def unchanged(self) -> bool:
        """Whether the file is still the one that ran."""
        return self.current == self.sha256


@dataclass(frozen=True)
class WorkflowDescription:
    """The workflow of a run, as the exports describe it."""

    name: str
    version: str | None
    workdir: Path
    files: tuple[SourceFile, ...]
    pipeline_version: str
    library_rules: Path | None
    from_manifest: bool

    @property
    def snakefile(self) -> SourceFile | None:
        """The main Snakefile (None for a run without a manifest and without a Snakefile)."""
        return next((f for f in self.files if f.role == "snakefile"), None)

    def of_role(self, *roles: Role) -> list[SourceFile]:
        """The files of the given roles, in the manifest's order."""
        return [f for f in self.files if f.role in roles]


def file_owner(path: Path) -> str:
    """The account owning a file (who ran the job that wrote it), else the current user."""
    try:
        return pwd.getpwuid(path.stat().st_uid).pw_name
    except (KeyError, OSError):
        return getpass.getuser()


def _current(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def from_manifest(manifest: Manifest) -> WorkflowDescription:
    """The workflow as its run manifest records it."""
    workdir = Path(manifest.workdir)
    files = []
    for entry in manifest.workflow.files:
        path = manifest.resolve(entry.path)
        files.append(SourceFile(path, entry.path, entry.role, entry.sha256, _current(path)))
    return WorkflowDescription(
        name=manifest.workflow.name,
        version=manifest.workflow.version,
        workdir=workdir,
        files=tuple(files),
        pipeline_version=manifest.pipeline_version,
        library_rules=Path(manifest.library_rules) if manifest.library_rules else None,
        from_manifest=True,
    )


def without_manifest(
    workdir: Path, snakefile: Path | None, config_path: Path | None
) -> WorkflowDescription:
    """The workflow of a run that wrote no manifest: the Snakefile (when there is one), the
    `rules/*.smk` beside it and the config file as they are now, under the demo's name and the
    library's version."""
    found: list[tuple[Path, Role]] = []
    if snakefile is not None and snakefile.is_file():
        rules = sorted((snakefile.resolve().parent / "rules").glob("*.smk"))
        found += [(snakefile, "snakefile"), *((p, "rules") for p in rules)]
    if config_path is not None and Path(config_path).is_file():
        found.append((Path(config_path), "config"))
    files = []
    for path, role in found:
        full = (path if path.is_absolute() else workdir / path).absolute()
        digest = sha256_file(full)
        shown = str(full.relative_to(workdir)) if full.is_relative_to(workdir) else str(full)
        files.append(SourceFile(full, shown, role, digest, digest))
    return WorkflowDescription(
        name=FALLBACK_NAME,
        version=__version__,
        workdir=workdir,
        files=tuple(files),
        pipeline_version=__version__,
        library_rules=None,
        from_manifest=False,
    )


def describe_workflow(
    manifest: Manifest | None,
    workdir: Path,
    snakefile: Path | None = None,
    config_path: Path | None = None,
) -> WorkflowDescription:
    """The workflow of a run: from its manifest, else from `snakefile` (default ./Snakefile)
    and `config_path` as they are now."""
    if manifest is not None:
        return from_manifest(manifest)
    return without_manifest(workdir, snakefile or workdir / "Snakefile", config_path)


def fallback_note(workdir: Path) -> str:
    """The one line an export prints when the run wrote no manifest."""
    from usher_pipeline.workflow.manifest import MANIFEST_PATH

    return (
        f"no run manifest {MANIFEST_PATH} in {workdir} (a run made before usher_pipeline "
        "wrote one): the workflow is described from ./Snakefile and rules/ as the demo; rerun "
        "snakemake to describe your own workflow"
    )
