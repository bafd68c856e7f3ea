#!/usr/bin/env python3
"""Set up and run usher_pipeline with nothing but Python 3.11+.

    python3 tasks.py demo    create .venv, install the package, run the demo workflow
    python3 tasks.py test    create .venv, install the test extras (and SLURM when root), run pytest

Extra arguments go to Snakemake (demo) or pytest (test), e.g. `python3 tasks.py test -k store`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
SLURM_PACKAGES = ["slurm-wlm", "munge"]


def run(*command: str | os.PathLike[str], **kwargs: Any) -> None:
    """Run a command in the repository, echoing it; stop on failure."""
    print("+", shlex.join(str(c) for c in command), flush=True)  # a path may hold spaces
    result = subprocess.run([str(c) for c in command], cwd=ROOT, **kwargs)  # noqa: S603
    if result.returncode != 0:
        sys.exit(result.returncode)


def ensure_venv(extras: str) -> None:
    """Create .venv (once) and install the package with `extras` in editable mode."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this script may be started by an older Python
        sys.exit(f"usher_pipeline needs Python 3.11 or newer, this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
        run(BIN / "python", "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(BIN / "python", "-m", "pip", "install", "--quiet", "-e", f".[{extras}]")


def ensure_slurm() -> None:
    """Install Debian's SLURM and munge for the cluster tests when running as root with apt."""
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(
            "note: slurm-wlm and munge are not installed and this is not a root Debian shell; "
            "the cluster tests will fail with the reason (apt-get install slurm-wlm munge)",
            flush=True,
        )
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run("apt-get", "update", "-qq", env=env)
    run("apt-get", "install", "-y", "-qq", *SLURM_PACKAGES, env=env)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in {"demo", "test"}:
        sys.exit(__doc__)
    task, rest = argv[0], argv[1:]
    if task == "demo":
        ensure_venv("demo")
        run(BIN / "snakemake", "--cores", "2", *rest)
    else:
        ensure_venv("test")
        ensure_slurm()
        run(BIN / "python", "-m", "pytest", *rest)


if __name__ == "__main__":
    main(sys.argv[1:])
