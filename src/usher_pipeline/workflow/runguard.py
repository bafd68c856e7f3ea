"""Resume after a hard kill with the same command: clear Snakemake locks no live run holds.

Snakemake marks a working directory as busy with files in `.snakemake/locks/` and removes
them when it exits. A run killed with SIGKILL (or a power loss) leaves them behind, and the
next `snakemake` refuses to start until someone runs `snakemake --unlock`. The main Snakemake
process of a workflow that includes `rules/library.smk` holds an exclusive `flock` on
`.snakemake/usher_run.lock` for its whole life; the kernel releases it the instant the
process dies, however it dies. So when a new run obtains that lock, no other run of the
workflow is alive in the directory and any Snakemake lock files are stale: they are removed,
exactly as `--unlock` would. When the lock is held, nothing is touched and Snakemake reports
the live run as usual.

A job killed after it wrote its outputs but before Snakemake recorded it as finished leaves
outputs that Snakemake marks incomplete; by default the next run then stops with
`IncompleteFilesException`. The library's outputs are renamed into place whole, so rerunning
such a job is always right: `rerun_incomplete` has the main process do what
`--rerun-incomplete` does (the job reruns, and its batched fetch finds every batch kept).
"""

from __future__ import annotations

import fcntl
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GUARD_NAME = "usher_run.lock"


@dataclass
class RunGuard:
    """The held lock of the live run in one working directory (released when the process ends)."""

    path: Path
    fd: int
    cleared: list[Path] = field(default_factory=list)

    def release(self) -> None:
        """Release the lock now (normally the process exit does it)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def claim_workdir(workdir: str | Path, *, clear_stale_locks: bool = True) -> RunGuard | None:
    """Take the run lock of `workdir`; on success remove Snakemake's stale lock files.

    Returns None, touching nothing, when another live process holds the lock.
    """
    state = Path(workdir) / ".snakemake"
    state.mkdir(parents=True, exist_ok=True)
    path = state / GUARD_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    guard = RunGuard(path=path, fd=fd)
    if clear_stale_locks:
        locks = state / "locks"
        if locks.is_dir():
            for stale in sorted(locks.glob("*.lock")):
                stale.unlink(missing_ok=True)
                guard.cleared.append(stale)
    return guard


def rerun_incomplete(workflow: Any) -> bool:
    """Have Snakemake rerun jobs whose outputs it marks incomplete, as `--rerun-incomplete`.

    Sets the public DAG setting `force_incomplete` of `workflow` when it exists; returns
    whether it did. Snakemake assigns its DAG settings after the Snakefile is parsed, so the
    library calls this again from its input functions, and `rerun_incomplete_when_ready`
    calls it on the first Snakemake log line once the settings are there (at the latest
    "Building DAG of jobs...", just before Snakemake looks for incomplete outputs).
    """
    settings = getattr(workflow, "dag_settings", None)
    if settings is None:
        return False
    settings.force_incomplete = True
    return True


def rerun_incomplete_when_ready(workflow: Any) -> None:
    """Set `force_incomplete` of `workflow` now, or as soon as Snakemake has its DAG settings."""
    if rerun_incomplete(workflow):
        return
    from usher_pipeline.workflow.startup import when_set_up

    when_set_up(
        workflow,
        "rerun-incomplete",
        ready=lambda: getattr(workflow, "dag_settings", None) is not None,
        run=lambda: rerun_incomplete(workflow),
    )
