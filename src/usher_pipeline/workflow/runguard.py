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
"""

from __future__ import annotations

import fcntl
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

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
