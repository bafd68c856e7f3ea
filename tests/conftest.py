"""Shared fixtures: a store in a temporary folder, a way to run Python in a real subprocess,
and a real process holding the store's lock file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from usher_pipeline.persistence import PipelineStore, StoreLockTimeout
from usher_pipeline.persistence.locking import StoreLock


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fault-seed",
        type=int,
        default=None,
        help="seed of the random kills of tests/test_faults.py, to replay a failure "
        "(default: $USHER_FAULT_SEED, else a fresh random seed)",
    )


@contextmanager
def mounted_read_only(folder: Path) -> Iterator[Path]:
    """`folder` bind-mounted read-only over itself for the block (root only: root ignores
    file modes, so a read-only mount is the way to make a folder unwritable for it)."""
    steps = [
        ["mount", "--bind", str(folder), str(folder)],
        ["mount", "-o", "remount,bind,ro", str(folder)],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"cannot make {folder} read-only ({done.stderr.strip()}): run as root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@contextmanager
def mounted_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "3m") mounted at `folder` for the block (root only)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {folder} ({done.stderr.strip()}): run as root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


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


# Holds the store's lock file until a line arrives on stdin: through a store transaction, as a
# bare StoreLock does (naming itself), or as a process does in the moment between taking the
# flock and naming itself.
HOLD_LOCK_FILE = """
import fcntl, os, sys
from pathlib import Path
from usher_pipeline.persistence import PipelineStore
from usher_pipeline.persistence.locking import StoreLock
db, how = Path(sys.argv[1]), sys.argv[2]
held = None
if how == "unnamed":
    fd = os.open(f"{db}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
elif how == "transaction":
    held = PipelineStore(db, lock_timeout=60).transaction()
else:
    held = StoreLock(db, timeout=60).hold()
if held is not None:
    held.__enter__()
print("ready", flush=True)
sys.stdin.readline()
if held is not None:
    held.__exit__(None, None, None)
"""


@pytest.fixture
def lock_wait_error() -> Callable[..., tuple[str, int]]:
    """The error of a waiter that gives up while another process holds the lock file, held
    "transaction", "named" or "unnamed"; and that process's PID. The waiter is `wait`, or a
    bare lock wait of 0.05 s."""

    def run(db_path: Path, how: str, wait: Callable[[], object] | None = None) -> tuple[str, int]:
        holder = subprocess.Popen(
            python_command(HOLD_LOCK_FILE, db_path, how),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
            with pytest.raises(StoreLockTimeout) as info:
                if wait is None:
                    with StoreLock(db_path, timeout=0.05).hold():
                        pass
                else:
                    wait()
        finally:
            holder.communicate("go\n", timeout=30)
        assert holder.returncode == 0
        return str(info.value), holder.pid

    return run
