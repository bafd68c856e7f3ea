"""The benchmark cases, cheap ones first: each takes a `Measure` and returns its rows."""

from __future__ import annotations

from collections.abc import Callable

from bench.cases import (
    big_frame,
    demo_restart,
    dryrun,
    fingerprint,
    history_diff,
    history_overhead,
    import_,
    lock,
    merge,
    scale_fetch,
    small_jobs,
)
from bench.harness import Measure
from bench.results import Row

CASES: dict[str, Callable[[Measure], list[Row]]] = {
    "import": import_.run,
    "dryrun": dryrun.run,
    "merge": merge.run,
    "big_frame": big_frame.run,
    "fingerprint": fingerprint.run,
    "demo_restart": demo_restart.run,
    "small_jobs": small_jobs.run,
    "lock": lock.run,
    "history_diff": history_diff.run,
    "history_overhead": history_overhead.run,
    "scale_fetch": scale_fetch.run,
}
