"""Run a rule's script outside Snakemake: a real `snakemake` object built from plain values.

smk = mock_snakemake("gene_universe", output={"table": ..., "steplog": ...}, config=cfg)
run_script("scripts/gene_universe.py", smk)
"""

from __future__ import annotations

import runpy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def mock_snakemake(
    rule: str,
    *,
    input: Mapping[str, Any] | None = None,  # noqa: A002 - mirrors Snakemake's directive
    output: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    wildcards: Mapping[str, str] | None = None,
    log: Sequence[str | Path] | Mapping[str, str | Path] | None = None,
    config: Mapping[str, Any] | None = None,
    threads: int = 1,
    resources: Mapping[str, Any] | None = None,
    scriptdir: str | Path | None = None,
) -> Any:
    """A `snakemake.script.Snakemake` object, as Snakemake hands it to a `script:`."""
    from snakemake.iocontainers import (
        InputFiles,
        Log,
        OutputFiles,
        Params,
        ResourceList,
        Wildcards,
    )
    from snakemake.script import Snakemake

    def strings(values: Mapping[str, Any] | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in (values or {}).items():
            if isinstance(value, list | tuple):
                out[key] = [str(v) for v in value]
            else:
                out[key] = str(value)
        return out

    logs = (
        dict(log) if isinstance(log, Mapping) else {f"log{i}": p for i, p in enumerate(log or [])}
    )
    return Snakemake(
        InputFiles(fromdict=strings(input)),
        OutputFiles(fromdict=strings(output)),
        Params(fromdict=dict(params or {})),
        Wildcards(fromdict=dict(wildcards or {})),
        threads,
        ResourceList(fromdict=dict(resources or {"_cores": threads, "_nodes": 1})),
        Log(fromdict=strings(logs)),
        dict(config or {}),
        rule,
        None,
        str(scriptdir) if scriptdir else None,
    )


def run_script(script: str | Path, snakemake: Any) -> dict[str, Any]:
    """Execute a rule script with `snakemake` in its globals, as Snakemake does."""
    return runpy.run_path(str(script), init_globals={"snakemake": snakemake}, run_name="__main__")
