"""Provenance merge of synthetic step logs, small vs large (its growth should be linear)."""

from __future__ import annotations

import shutil

from bench.harness import Measure, fresh, in_turn
from bench.results import Comparison, Row, Timing

ABSOLUTE_SECONDS = 3.0  # the target for the small merge


def run(measure: Measure) -> list[Row]:
    small, large = measure.sizes.merge_small, measure.sizes.merge_large
    growth = Row(
        f"provenance merge of {large:,} step logs",
        f"merge of {small:,} step logs",
        f"<= {large / small * 1.2:.0f}",
        large / small * 1.2,
    )
    absolute = Row(
        f"provenance merge of {small:,} step logs", f"{ABSOLUTE_SECONDS:.0f} s", "<= 1.0", 1.0
    )
    trash = fresh(measure.work / "trash")  # where each merge moves the previous one's sidecars
    for n in (small, large):
        measure.worker("make_steplogs", folder=str(measure.work / str(n)), n=n)

    def repetition(rep: int) -> dict[str, Timing]:
        timings = {
            str(n): measure.timed_worker("merge", folder=str(measure.work / str(n)), n=n)
            for n in in_turn((small, large), rep)
        }
        absolute.add(timings[str(small)].seconds / ABSOLUTE_SECONDS)
        absolute.time(str(small), timings[str(small)].seconds)
        return timings

    rows = measure.repeat(
        "merge", [growth, absolute], [Comparison(growth, str(large), str(small))], repetition
    )
    shutil.rmtree(trash)
    return rows
