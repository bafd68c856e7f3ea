"""The results model and RESULTS.md: rows of ratios, the table, and the record of which command
measured which row."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Timing:
    """One measured run of a variant: wall and CPU seconds, peak RSS when measured."""

    seconds: float
    cpu: float
    peak_rss_mb: float | None = None


@dataclass
class Row:
    """One line of the results table: a ratio of library to baseline over the repetitions."""

    case: str
    compared: str
    target: str
    limit: float | None
    ratios: list[float] = field(default_factory=list)
    cpu_ratios: list[float] = field(default_factory=list)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    extra: str = ""
    ok_extra: bool = True
    group: str = ""  # the case (key of CASES) that measured it
    measured_by: str = ""  # the command that measured it, and when

    def add(self, ratio: float) -> None:
        self.ratios.append(ratio)

    def time(self, variant: str, seconds: float) -> None:
        self.seconds.setdefault(variant, []).append(seconds)

    def peak(self, variant: str, rss_mb: float) -> None:
        self.rss_mb[variant] = max(self.rss_mb.get(variant, 0.0), rss_mb)

    @property
    def median(self) -> float:
        return statistics.median(self.ratios) if self.ratios else float("nan")

    @property
    def met(self) -> bool:
        return (
            bool(self.ratios)
            and self.ok_extra
            and (self.limit is None or self.median <= self.limit)
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        """A row read back from results.json."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "measured_by": self.measured_by,
            "limit": self.limit,
            "cpu_ratios": self.cpu_ratios,
            "ok_extra": self.ok_extra,
            "case": self.case,
            "compared": self.compared,
            "target": self.target,
            "ratios": self.ratios,
            "median": self.median,
            "seconds": self.seconds,
            "rss_mb": self.rss_mb,
            "extra": self.extra,
            "met": self.met,
        }


@dataclass(frozen=True)
class Comparison:
    """What one repetition adds to `row`: the ratios of variant `ours` to `baseline`."""

    row: Row
    ours: str
    baseline: str
    names: tuple[str, str] | None = None  # how the seconds column names them (default: as is)
    rss: bool = False  # also keep each side's peak RSS

    def add(self, timings: dict[str, Timing]) -> None:
        ours, baseline = timings[self.ours], timings[self.baseline]
        names = self.names or (self.ours, self.baseline)
        self.row.add(ours.seconds / baseline.seconds)
        self.row.cpu_ratios.append(ours.cpu / baseline.cpu)
        for name, timing in zip(names, (ours, baseline), strict=True):
            self.row.time(name, timing.seconds)
            if self.rss and timing.peak_rss_mb is not None:
                self.row.peak(name, timing.peak_rss_mb)


def fmt_seconds(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "-"


def table(rows: list[Row]) -> str:
    """The Markdown table of ratios."""
    lines = [
        "| case | compared with | ratio median | min | max | target | met | median seconds"
        " (library / baseline) | CPU ratio | peak RSS MB | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        secs = " / ".join(f"{n} {fmt_seconds(v)}" for n, v in row.seconds.items())
        rss = ", ".join(f"{n} {v:.0f}" for n, v in row.rss_mb.items()) or "-"
        if row.ratios:
            stats = f"{row.median:.3f} | {min(row.ratios):.3f} | {max(row.ratios):.3f}"
        else:
            stats = "- | - | -"
        cpu = f"{statistics.median(row.cpu_ratios):.3f}" if row.cpu_ratios else "-"
        lines.append(
            f"| {row.case} | {row.compared} | {stats} | {row.target} | "
            f"{'yes' if row.met else 'NO'} | {secs} | {cpu} | {rss} | {row.extra} |"
        )
    return "\n".join(lines)


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> str:
    """CPU, cores, memory, OS and the versions that matter."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    packages = ["usher_pipeline", "snakemake", "duckdb", "polars", "pyarrow", "pandas"]
    versions = ", ".join(f"{p} {version(p)}" for p in packages)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"- machine: {cpu}, {os.cpu_count()} cores, {memory:.1f} GiB RAM, "
        f"load average when written {load} (1, 5, 15 min), "
        f"{platform.system()} {platform.release()}\n"
        f"- Python {platform.python_version()}; {versions}"
    )


def command_line(argv: list[str]) -> str:
    """The command as typed, without local paths (the values of --work and --output)."""
    shown, skip = [], False
    for arg in argv:
        if not skip and arg not in ("--work", "--output"):
            shown.append(arg)
        skip = arg in ("--work", "--output")
    return f"`.venv/bin/python benchmarks/run.py{''.join(f' {a}' for a in shown)}`"


METHOD = """\
Ratios are library / baseline wall times (lower is better). The CPU ratio compares user +
system CPU seconds (of Snakemake and every job it ran, from `wait4`, or of the measuring
process): it hardly moves when other work shares the machine, while wall time does. Peak RSS
is measured in a fresh subprocess per variant (`ru_maxrss`)."""

NOTES = """\
- Small jobs: every library job runs `with Job(snakemake)`, reads its input sentinel,
  commits its table and `_checkpoints` row under the store's lock, renames its sentinel into
  place and writes its step log; the plain job reads and writes Parquet with polars. The
  provenance merge is not requested (it is measured on its own below). In head-node mode the
  jobs never load DuckDB, and one local `ingest` job loads every sentinel at the end.
- Both sides of every Snakemake case run the same `snakemake` command, so each pays the same
  process start and exit; the workflows are the files in `benchmarks/templates/`.
- Every subprocess may write bytecode, and the package is compiled before the first case, as
  in any installation (otherwise, where PYTHONDONTWRITEBYTECODE is set, each library job
  would compile the package from source).
- Lock case: both sides run the same workflow with the library, whose rule declares
  `resources: duckdb_writer=1`; the baseline runs with `--resources duckdb_writer=1`, so
  whole jobs run one at a time.
- Big frame: the frame is read from a prepared Parquet file before the clock starts; the
  library side is `with Job(...) as job: job.save(frame)` (table, `_checkpoints`, sentinel,
  fingerprint, SHA-256, step log).
- Demo restart: the demo is copied to the work directory, run once uninterrupted, then run
  again from scratch and killed (SIGKILL to the whole process group) once half of its fetch
  batches are committed (the notes column gives when, as a share of the uninterrupted run's
  time); the rerun (the same command: the library clears the stale Snakemake locks) is
  timed. USHER_FETCH_AUDIT records every fetched and committed batch. The replay row runs the
  same DAG in plain Snakemake: one rule per demo job that sleeps the seconds its step log
  measured in the uninterrupted run; its rerun starts from the jobs finished at the kill and
  lets each unfinished fetch sleep only its share of the batches not yet committed. It is the
  ratio plain Snakemake allows a perfect resume of this run; the library's provenance job has
  no counterpart in it.
- Merge: synthetic step logs; before each timed merge the previous repetition's sidecars are
  moved aside (deleted after the last one) and written back to disk (`sync`), so neither
  their deletion nor their write-back runs during the merge.
- Scale fetch (run once, whatever the repetitions): the workflow of
  `benchmarks/templates/scale_fetch.smk` asks keys x 6 requests of a loopback API
  (`tests/loopback_api.py`, in the measuring process) through the source client inside
  `job.fetch`, 4 batches of 20 keys in flight; the server refuses with 429 what goes over its
  limit in any second, and the client is paced to 0.98 of it. Its SIGKILLs go to the whole
  process group when the server's count reaches 5 random points, and each resume is the same
  command. Requests are the server's count (every attempt, refused or not); the achieved rate
  is that count over the seconds from each run's first request to its last, summed (the
  Snakemake starts between runs excluded; the wall time is in the notes). The reference is an
  uninterrupted run of the same workflow against an unlimited server, whose fetch job's
  VmHWM is read from /proc as the server counts a tenth of the requests and the last one. At
  NCBI's 3 requests/s without a key, 132,000 requests take 12.2 h at the limit; the upstream
  literature layer took about 46 h.
- Past measurements, and what was found to limit each target, are in `benchmarks/NOTES.md`
  (hand-written and dated, not from this run)."""


class Report:
    """The rows of this run and those kept from <work>/results.json, and RESULTS.md.

    Every row carries the command that measured it; <work>/header.json keeps how and on what
    the rows were measured, so that `--report-only` rewrites the texts without losing it."""

    def __init__(
        self, work: Path, output: Path, order: list[str], command: str, intro: str
    ) -> None:
        self.results = work / "results.json"
        self.header_file = work / "header.json"
        self.output = output
        self.order = order
        self.started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        self.started = time.perf_counter()
        self.measured_by = f"{command} started {self.started_at}"
        self.intro = intro  # how this run measured, after "Written by ..."
        self.kept: list[Row] = []
        self.rows: dict[str, list[Row]] = {}

    def earlier_rows(self) -> list[Row]:
        if not self.results.exists():
            return []
        return [Row.from_dict(data) for data in json.loads(self.results.read_text())]

    def keep(self, measured_now: list[str]) -> None:
        """Keep the earlier rows of every case not measured now."""
        self.kept = [row for row in self.earlier_rows() if row.group not in measured_now]

    def update(self, group: str, rows: list[Row]) -> None:
        """The rows of case `group` so far; written at once, so an interrupted run leaves them."""
        for row in rows:
            row.group = group
            row.measured_by = row.measured_by or self.measured_by
        self.rows[group] = rows
        self.write()

    def everything(self) -> list[Row]:
        rows = self.kept + [row for rows in self.rows.values() for row in rows]
        last = len(self.order)
        return sorted(
            rows, key=lambda r: self.order.index(r.group) if r.group in self.order else last
        )

    def kept_note(self) -> str:
        """Which cases `--keep` kept, and which command measured each of them."""
        if not self.kept:
            return ""
        by: dict[str, set[str]] = {}
        for row in self.kept:
            by.setdefault(row.measured_by or "an earlier run", set()).add(row.group)
        measured = "; ".join(f"{', '.join(sorted(groups))} by {how}" for how, groups in by.items())
        return (
            f"Cases kept from earlier runs (`--keep`): {measured}. The others were measured by "
            "this command.\n"
        )

    def header(self) -> dict[str, str]:
        minutes = (time.perf_counter() - self.started) / 60
        return {
            "intro": f"Written by {self.measured_by}, {minutes:.1f} min;\n{self.intro}"
            + self.kept_note(),
            "machine": machine(),
        }

    def write(self, header: dict[str, str] | None = None) -> None:
        """results.json, header.json (unless `header` is an earlier one) and RESULTS.md."""
        rows = self.everything()
        self.results.write_text(json.dumps([r.as_dict() for r in rows], indent=2))
        if header is None:
            header = self.header()
            self.header_file.write_text(json.dumps(header, indent=2))
        self.output.write_text(render(rows, header))

    def rewrite(self) -> None:
        """Rewrite RESULTS.md from results.json, keeping how and on what the rows were measured."""
        self.kept = self.earlier_rows()
        header = json.loads(self.header_file.read_text())
        note = (
            f"The texts were rewritten on {self.started_at} by `--report-only` from "
            f"{self.results.parent.name}/{self.results.name}.\n"
        )
        self.write({**header, "intro": header["intro"] + note})


def render(rows: list[Row], header: dict[str, str]) -> str:
    """RESULTS.md: how it was run, on what, the table, the method and any missed target."""
    text = f"""\
# Benchmark results

{header["intro"].rstrip()}

{METHOD}

{header["machine"]}

{table(rows)}

## Notes

{NOTES}
"""
    missed = [r for r in rows if r.limit is not None and not r.met]
    if missed:
        text += "\n## Targets missed\n\n" + "\n".join(
            f"- **{row.case}**: see `benchmarks/NOTES.md` for what was found to limit it."
            for row in missed
        )
        text += "\n"
    return text
