"""`snakemake -n` of the same DAG written with the library's rules and without."""

from __future__ import annotations

from bench.harness import Measure, in_turn, template_workflow
from bench.results import Comparison, Row, Timing


def run(measure: Measure) -> list[Row]:
    n = measure.sizes.dryrun_jobs // 2
    row = Row(
        f"snakemake -n of a {2 * n}-job DAG, library rules",
        "plain Snakefile, same DAG",
        "<= 1.3",
        1.3,
    )
    workflows = {
        variant: template_workflow(measure.work / variant, template, n, 10)
        for variant, template in (("library", "library"), ("plain", "plain"))
    }

    def repetition(rep: int) -> dict[str, Timing]:
        timings = {}
        for variant in in_turn(("library", "plain"), rep):
            timings[variant] = measure.snakemake(workflows[variant], "-n")
            if "total" not in (workflows[variant].folder / "snakemake.out").read_text():
                raise RuntimeError(f"dry run of {variant} printed no job table")
        return timings

    return measure.repeat("dry-run", [row], [Comparison(row, "library", "plain")], repetition)
