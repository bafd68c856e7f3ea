"""The demo workflow from a checkout, and with an interpreter, whose path holds a space.

Snakemake starts each `script:` job as `<interpreter> <script>` without quoting the
interpreter; the rule library reaches such an interpreter by a path without spaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
RUN_TIMEOUT = 600


def copy_checkout(dest: Path) -> Path:
    """The files git tracks in this checkout, copied into `dest`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def test_demo_runs_from_a_checkout_and_venv_whose_paths_hold_a_space(tmp_path):
    checkout = copy_checkout(tmp_path / "usher pipeline" / "checkout")
    config = yaml.safe_load((checkout / "config" / "config.yaml").read_text())
    small = yaml.safe_load((checkout / "tests" / "configs" / "small.yaml").read_text())
    config["demo"].update(small["demo"])  # its keys are leaves or whole sections
    (checkout / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    venv = checkout / ".venv"  # this environment, reached through the checkout's own path
    venv.symlink_to(VENV, target_is_directory=True)
    python = venv / "bin" / Path(sys.executable).name
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    try:
        done = subprocess.run(
            [str(python), "-m", "snakemake", "--cores", "2"],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
    finally:  # the space-free links the run made to this test's venv path
        for link in Path(tempfile.gettempdir()).glob("usher_pipeline-python-*"):
            if link.is_symlink() and os.readlink(link).startswith(str(tmp_path)):
                link.unlink()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (checkout / "results" / "final" / "candidate_tiers.tsv").is_file()
    assert "exit status 127" not in done.stderr
