"""Import time of the job helper (every job pays it), against bare Python and its dependencies."""

from __future__ import annotations

import statistics
import subprocess
import time

from bench.harness import PYTHON, Measure, bench_env
from bench.results import Row

STATEMENTS = {
    "python": "pass",
    "Job": "from usher_pipeline.workflow import Job",
    "snakemake.script+polars": "import snakemake.script, polars",
    "snakemake.script+polars+Job": (
        "import snakemake.script, polars; from usher_pipeline.workflow import Job"
    ),
    "polars": "import polars",
    "duckdb": "import duckdb",
    "Job+polars+duckdb": "from usher_pipeline.workflow import Job; import polars, duckdb",
}


def run(measure: Measure) -> list[Row]:
    """Each statement in a fresh interpreter, in turn, `import_repeats` times; medians."""
    seconds: dict[str, list[float]] = {name: [] for name in STATEMENTS}
    for _ in range(measure.sizes.import_repeats):
        for name, statement in STATEMENTS.items():
            started = time.perf_counter()
            subprocess.run([PYTHON, "-c", statement], check=True, env=bench_env())
            seconds[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    base = median["python"]
    row = Row(
        "import of `from usher_pipeline.workflow import Job` (interpreter start subtracted)",
        "import polars + import duckdb",
        "report",
        None,
        seconds=seconds,
    )
    job = median["Job"] - base
    row.add(job / (median["polars"] + median["duckdb"] - 2 * base))
    in_job = median["snakemake.script+polars+Job"] - median["snakemake.script+polars"]
    row.extra = (
        f"Job {1000 * job:.0f} ms, polars {1000 * (median['polars'] - base):.0f} ms, "
        f"duckdb {1000 * (median['duckdb'] - base):.0f} ms, all three "
        f"{1000 * (median['Job+polars+duckdb'] - base):.0f} ms; "
        f"interpreter {1000 * base:.0f} ms; in a job script, where Snakemake's preamble has "
        "already imported snakemake.script and the script polars, Job adds "
        f"{1000 * in_job:.0f} ms"
    )
    return [row]
