"""Shared fixtures: a store in a temporary folder and a way to run Python in a real subprocess."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from usher_pipeline.persistence import PipelineStore


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where a test's database lives (the folder does not exist yet)."""
    return tmp_path / "store" / "pipeline.duckdb"


@pytest.fixture
def store(db_path: Path) -> PipelineStore:
    """A fresh store on `db_path`."""
    return PipelineStore(db_path, lock_timeout=60)


def python_command(code: str, *args: object) -> list[str]:
    """The command that runs `code` (dedented) in a fresh interpreter of this environment."""
    return [sys.executable, "-c", textwrap.dedent(code), *(str(a) for a in args)]


@pytest.fixture
def run_python(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run Python code in a fresh process and return it; fails the test if the process does."""

    def run(
        code: str, *args: object, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            python_command(code, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=tmp_path,
        )
        if check and done.returncode != 0:
            pytest.fail(f"subprocess failed ({done.returncode}):\n{done.stderr}")
        return done

    return run
