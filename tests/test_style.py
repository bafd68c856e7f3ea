"""Static checks the README promises: ruff, ruff's formatter and a strict type check of src/.

snakefmt and `snakemake --lint` run in tests/test_workflow.py beside the workflow tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    """Run a tool of this environment in the repository."""
    return subprocess.run(
        [sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize(
    "command",
    [("ruff", "check", "."), ("ruff", "format", "--check", ".")],
    ids=["ruff-check", "ruff-format"],
)
def test_ruff_is_clean(command: tuple[str, ...]) -> None:
    done = run(*command)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


def test_package_passes_a_strict_type_check() -> None:
    # strictness and the third-party packages without type information are set in pyproject.toml
    done = run("mypy", "src/usher_pipeline")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Success: no issues found" in done.stdout
