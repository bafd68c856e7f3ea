#!/usr/bin/env python3
"""Side-by-side benchmarks of usher_pipeline against plain Snakemake with Parquet outputs.

    .venv/bin/python benchmarks/run.py            every case, 3 repetitions (about 45 min,
                                                  the scale fetch, run once, about 22)
    .venv/bin/python benchmarks/run.py --quick    tiny sizes, 1 repetition (a smoke run)

Each case runs its variants alternately in every repetition, so that noise on a shared machine
hits both sides alike; the table reports the ratio library/baseline as the median of the
repetitions, with min and max. Snakemake cases are real runs of the workflows in
benchmarks/templates/ in folders below the work directory (default benchmarks/work/,
git-ignored); in-process cases run in a fresh subprocess each, which also reports its peak
RSS. The results go to stdout, to benchmarks/RESULTS.md (with the machine and versions) and,
raw, to <work>/results.json. The cases are in benchmarks/bench/cases/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.cases import CASES
from bench.harness import BENCH, FULL, QUICK, Measure, Sizes, compile_package
from bench.results import Report, command_line, table


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--repeats", type=int, help="repetitions per case (default 3, quick 1)")
    parser.add_argument("--cases", help=f"comma-separated subset of: {', '.join(CASES)}")
    parser.add_argument("--work", type=Path, default=BENCH / "work", help="where workflows run")
    parser.add_argument("--output", type=Path, default=BENCH / "RESULTS.md", help="results file")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the rows of cases not run now from <work>/results.json (rerun one case)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: rewrite the results file from <work>/results.json",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cli = parser()
    args = cli.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.repeats:
        sizes = Sizes(**{**sizes.__dict__, "repeats": args.repeats})
    selected = [] if args.report_only else args.cases.split(",") if args.cases else list(CASES)
    unknown = [c for c in selected if c not in CASES]
    if unknown:
        cli.error(f"unknown cases {unknown}: choose from {', '.join(CASES)}")
    work = args.work.resolve()
    loads = "" if args.quick else f" (loads: median of {sizes.load_repeats} runs per repetition)"
    intro = (
        f"{sizes.repeats} repetition(s) per case measured by this command, variants alternated "
        f"within each\nrepetition{loads}.\n"
    )
    report = Report(work, args.output, list(CASES), command_line(argv), intro)
    if args.report_only:
        if not (report.results.exists() and report.header_file.exists()):
            cli.error(f"{work} holds no earlier results: run some cases first, without it")
        report.rewrite()
        print(f"wrote {args.output} from {report.results}")
        return 0
    work.mkdir(parents=True, exist_ok=True)
    compile_package()
    if args.keep:
        report.keep(selected)
    for name in selected:
        print(f"case {name}", flush=True)
        started = time.perf_counter()
        measure = Measure(work / name, sizes, lambda rows, name=name: report.update(name, rows))
        report.update(name, CASES[name](measure))
        print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)
    rows = report.everything()
    print(table(rows))
    if report.kept:
        print(f"kept {len(report.kept)} rows of earlier cases from {report.results}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
