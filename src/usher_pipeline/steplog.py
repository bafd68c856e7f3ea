"""The step log of one job: what ran, on what, with which software, producing what."""

from __future__ import annotations

import importlib.util
import os
import platform
import socket
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from usher_pipeline._io import read_json
from usher_pipeline.errors import UsherError
from usher_pipeline.hashing import sha256_file

FORMAT = "usher_pipeline.steplog/1"
SOFTWARE = ("usher_pipeline", "snakemake", "duckdb", "polars")
_SCHEDULER_VARIABLES = (
    ("slurm", "SLURM_JOB_ID"),
    ("pbs", "PBS_JOBID"),
    ("lsf", "LSB_JOBID"),
    ("sge", "JOB_ID"),
)


class StepLogError(UsherError, ValueError):
    """A step log that is missing, unreadable or not in the expected format."""


@lru_cache(maxsize=1)
def software_versions() -> dict[str, str]:
    """Versions of Python and of the packages that shape results.

    A package this process has imported reports the version it runs (`__version__`); the
    others are read from their installed metadata without importing them.
    """
    versions = {"python": platform.python_version()}
    for name in SOFTWARE:
        loaded = getattr(sys.modules.get(name), "__version__", None)
        if isinstance(loaded, str):
            versions[name] = loaded
            continue
        try:
            versions[name] = _installed_version(name) or metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _installed_version(name: str) -> str | None:
    """The version in the metadata installed beside package `name`, read without importing it
    or scanning every installed distribution (which `metadata.version` does, a few ms per
    job); None when there is no such metadata there."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        return None
    origin = Path(spec.origin)
    site = origin.parent.parent if spec.submodule_search_locations is not None else origin.parent
    for info in site.glob(f"{name}-*.dist-info"):
        try:
            with open(info / "METADATA", encoding="utf-8") as handle:
                for line in handle:
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
                    if not line.strip():  # the headers end at the first blank line
                        break
        except OSError:
            continue
    return None


def scheduler_info() -> dict[str, str] | None:
    """The batch scheduler and job id this process runs under, or None on a workstation."""
    for name, variable in _SCHEDULER_VARIABLES:
        value = os.environ.get(variable)
        if value:
            info = {"name": name, "job_id": value}
            if name == "slurm" and os.environ.get("SLURM_JOB_PARTITION"):
                info["partition"] = os.environ["SLURM_JOB_PARTITION"]
            return info
    return None


def host_name() -> str:
    """This machine's host name."""
    return socket.gethostname()


def parquet_rows(path: Path) -> int | None:
    """Row count from a Parquet footer (no data read), or None for other files."""
    if path.suffix != ".parquet":
        return None
    import polars as pl

    return int(pl.scan_parquet(path).select(pl.len()).collect().item())


def describe_file(
    name: str, path: str | Path, rows: int | None = None, **extra: Any
) -> dict[str, Any]:
    """One entry of `inputs` or `outputs`: name, path, SHA-256, size, rows and extras."""
    target = Path(path)
    stat = target.stat()
    if target.is_dir():
        return {"name": name, "path": str(path), "sha256": None, "size": None, "rows": None}
    entry: dict[str, Any] = {
        "name": name,
        "path": str(path),
        "sha256": sha256_file(target),
        "size": stat.st_size,
        "rows": rows if rows is not None else parquet_rows(target),
    }
    entry.update(extra)
    return entry


def load_steplog(path: str | Path) -> dict[str, Any]:
    """Read and check a step log; errors name the file."""
    target = Path(path)
    try:
        data = read_json(target)
    except FileNotFoundError:
        raise StepLogError(
            f"step log {target} does not exist: rerun the rule that writes it"
        ) from None
    except (OSError, ValueError) as exc:
        raise StepLogError(
            f"step log {target} is not valid JSON ({str(exc).splitlines()[0][:120]}): delete it "
            "and rerun the rule that writes it"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StepLogError(
            f"step log {target} is not a {FORMAT} record: delete it and rerun the rule that "
            "writes it"
        )
    for key in ("rule", "inputs", "outputs", "started_at", "ended_at"):
        if key not in data:
            raise StepLogError(
                f"step log {target} lacks the field '{key}': delete it and rerun the rule"
            )
    return data
