"""Where the library's rules are, and a new workflow that uses them (`usher-pipeline init`).

    from usher_pipeline import library_path

    include: library_path("library.smk")        # in a Snakefile, before any USHER.register
    include: library_path("provenance.smk")     # last

`init_workflow(folder)` writes a small complete workflow into an empty folder: a Snakefile,
rules with a batched fetch and a derived table with a TSV report, their scripts, a config
with the library's section, a test of the scripts and a README. It runs, lints and tests
clean as written.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from usher_pipeline.errors import UsherError

ROOT_VARIABLE = "USHER_PIPELINE_ROOT"
TEMPLATE = "templates/workflow"
# Files whose name in the package differs from their name in the new workflow (a file
# starting with a dot would not be shipped as package data).
RENAMED = {"gitignore": ".gitignore"}
NAME_TOKEN = "__WORKFLOW_NAME__"
YAML_NAME_TOKEN = "__WORKFLOW_NAME_YAML__"
# Entries an otherwise empty folder may already hold.
ALLOWED_ENTRIES = frozenset({".git"})


class LibraryNotFound(UsherError):
    """The package is installed without the rules/ folder of its checkout."""


class ScaffoldError(UsherError):
    """A workflow that cannot be written where it was asked for."""


def library_path(name: str = "") -> Path:
    """The library's rules/ folder, or the file `name` in it (e.g. "library.smk").

    The rules live beside the package in its checkout (an editable install, as the README
    describes); where the package was installed without them, the checkout named by
    $USHER_PIPELINE_ROOT is used.
    """
    checkout = Path(__file__).resolve().parents[2]
    candidates = [checkout / "rules"]
    root = os.environ.get(ROOT_VARIABLE)
    if root:
        candidates.append(Path(root) / "rules")
    for rules in candidates:
        if (rules / "library.smk").is_file():
            target = rules / name if name else rules
            if not target.exists():
                known = ", ".join(sorted(p.name for p in rules.glob("*.smk")))
                raise LibraryNotFound(
                    f"the usher_pipeline library has no rule file '{name}' in {rules}: use "
                    f"one of {known}"
                )
            return target
    raise LibraryNotFound(
        f"the usher_pipeline package in {Path(__file__).resolve().parent} was installed without "
        "the rules/ folder of its checkout: install it with `pip install -e CHECKOUT`, or set "
        f"{ROOT_VARIABLE} to the checkout"
    )


def _template_files(folder: Traversable, prefix: str = "") -> list[tuple[str, Traversable]]:
    """Every file below `folder` as (relative path, file), in a stable order."""
    found: list[tuple[str, Traversable]] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name == "__pycache__":
            continue
        relative = f"{prefix}{RENAMED.get(entry.name, entry.name)}"
        if entry.is_dir():
            found.extend(_template_files(entry, f"{relative}/"))
        else:
            found.append((relative, entry))
    return found


def init_workflow(folder: str | Path, name: str | None = None) -> list[Path]:
    """Write a new workflow into `folder` (created if missing, else empty but for .git);
    returns the files written. `name` (default: the folder's name) names the workflow in its
    config, so in its exports."""
    target = Path(folder)
    if target.exists() and not target.is_dir():
        raise ScaffoldError(f"{target} is a file: give a new or empty folder to init")
    if target.is_dir():
        present = sorted(p.name for p in target.iterdir() if p.name not in ALLOWED_ENTRIES)
        if present:
            shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
            raise ScaffoldError(
                f"{target} is not empty ({shown}): give a new or empty folder to init, so "
                "that no file of yours is overwritten"
            )
    workflow_name = name or target.resolve().name
    if not workflow_name.strip() or not workflow_name.isprintable():
        raise ScaffoldError(
            f"the workflow name {workflow_name!r} is empty or not one printable line: pass "
            "--name NAME"
        )
    template = resources.files("usher_pipeline").joinpath(TEMPLATE)
    written = []
    for relative, source in _template_files(template):
        text = source.read_text(encoding="utf-8")
        text = text.replace(YAML_NAME_TOKEN, json.dumps(workflow_name))
        text = text.replace(NAME_TOKEN, workflow_name)
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
