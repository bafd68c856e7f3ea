"""Jobs with compute whose commits the store's lock serialises, against whole jobs serialised
by a Snakemake resource."""

from __future__ import annotations

from bench.harness import Measure, check_tables, in_turn, template_workflow
from bench.results import Comparison, Row, Timing


def run(measure: Measure) -> list[Row]:
    n, compute = measure.sizes.lock_jobs, measure.sizes.lock_compute
    row = Row(
        f"{n} jobs x {compute} s compute, store lock",
        "whole jobs serialised by resource duckdb_writer=1",
        "<= 0.6",
        0.6,
    )

    def repetition(rep: int) -> dict[str, Timing]:
        timings = {}
        for variant in in_turn(("lock", "resource"), rep):
            workflow = template_workflow(measure.work / variant, "busy", n, compute=compute)
            limit = ("--resources", "duckdb_writer=1") if variant == "resource" else ()
            timings[variant] = measure.snakemake(workflow, *limit)
            check_tables(workflow.folder, n)
        return timings

    return measure.repeat("lock", [row], [Comparison(row, "lock", "resource")], repetition)
