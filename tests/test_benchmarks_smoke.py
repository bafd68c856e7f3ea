"""Smoke run of the benchmark harness at tiny sizes: it runs and writes a results table.

No timing is asserted here; the speed targets live in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES = [
    "import",
    "small_jobs",
    "lock",
    "big_frame",
    "fingerprint",
    "merge",
    "dryrun",
    "demo_restart",
    "history_diff",
    "history_overhead",
]


def harness(tmp_path: Path, *args: str) -> None:
    """Run benchmarks/run.py ARGS with its work folder and results file in `tmp_path`."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), *args]
        + ["--work", str(tmp_path / "work"), "--output", str(tmp_path / "RESULTS.md")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def measured_by(work: Path) -> dict[str, str]:
    """The command that measured each case's rows, from results.json."""
    rows = json.loads((work / "results.json").read_text())
    by: dict[str, set[str]] = {}
    for row in rows:
        by.setdefault(row["group"], set()).add(row["measured_by"])
    assert all(len(commands) == 1 for commands in by.values()), by
    return {group: commands.pop() for group, commands in by.items()}


@pytest.mark.slow
def test_benchmark_harness_writes_a_results_table(tmp_path: Path) -> None:
    output = tmp_path / "RESULTS.md"
    work = tmp_path / "work"
    harness(tmp_path, "--quick", "--cases", ",".join(CASES))

    text = output.read_text()
    assert "| case | compared with | ratio median |" in text
    assert "- machine:" in text and "duckdb" in text and "polars" in text
    rows = json.loads((work / "results.json").read_text())
    cases = " ".join(row["case"] for row in rows)
    expected_cases = ("small jobs", "store lock", "save", "load_dataframe", "merge", "-n")
    expected_cases += ("row-level diff", "run history")
    for expected in (*expected_cases, "rerun of the demo after", "replayed in plain Snakemake"):
        assert expected in cases
    for row in rows:
        assert row["ratios"], f"no measurement for {row['case']}"
        # a ratio is a measurement above 0, but a count whose target is 0 (history bytes)
        assert all(ratio > 0 or (row["limit"] == 0 and ratio == 0) for ratio in row["ratios"]), row
        assert f"| {row['case']} |" in text
    # the library runs committed every table they were asked to (checked by the harness too)
    for variant in ("job", "head"):
        assert (work / "small_jobs" / variant / "results" / "pipeline.duckdb").exists()
    # one command measured every case, and the results say which
    by = measured_by(work)
    assert set(by) == set(CASES)
    (first,) = set(by.values())
    assert first in text

    # rewriting the texts keeps how and on what the rows were measured
    header = json.loads((work / "header.json").read_text())
    harness(tmp_path, "--report-only")
    rewritten = output.read_text()
    assert header["intro"] in rewritten
    assert header["machine"] in rewritten
    assert json.loads((work / "header.json").read_text()) == header
    assert all(f"| {row['case']} |" in rewritten for row in rows)

    # rerunning one case keeps the others, each with the command that measured it
    harness(tmp_path, "--quick", "--cases", "import", "--keep")
    by = measured_by(work)
    assert set(by) == set(CASES)
    now = by.pop("import")
    assert now != first
    assert set(by.values()) == {first}
    kept = output.read_text()
    assert first in kept and now in kept


SCALE_SMOKE = """
import json, sys
from pathlib import Path
from bench.cases import scale_fetch
from bench.harness import QUICK, Measure, Sizes

sizes = Sizes(**{**QUICK.__dict__, "scale_keys": 40, "scale_rate": 400.0, "scale_kills": 2})
rows = scale_fetch.run(Measure(Path(sys.argv[1]), sizes, lambda rows: None))
print(json.dumps([row.as_dict() for row in rows]))
"""


@pytest.mark.slow
def test_scale_fetch_case_survives_its_kills_at_tiny_sizes(tmp_path: Path) -> None:
    """The scale case's workflow, killed twice and resumed, ends with the uninterrupted run's
    table; the server counted what the client asked, and a little more only at the kills."""
    result = subprocess.run(
        [sys.executable, "-c", SCALE_SMOKE, str(tmp_path / "work")],
        capture_output=True,
        text=True,
        cwd=ROOT / "benchmarks",
        env={**os.environ, "PYTHONPATH": str(ROOT / "benchmarks")},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    requests, rate, memory = json.loads(result.stdout.strip().splitlines()[-1])
    assert "equal to the uninterrupted run's (240 rows)" in requests["extra"]
    assert requests["ok_extra"]
    # every request asked reached the server once; asked again were only the requests in
    # flight at the two kills (4 threads, one request each) and those refused with a 429
    counted = re.search(
        r"server counted (\d+) requests \((\d+) more than asked, (\d+) of", requests["extra"]
    )
    assert counted, requests["extra"]
    made, more, refused = (int(n) for n in counted.groups())
    assert requests["ratios"][0] == made / 240 and more == made - 240
    assert 0 <= more - refused <= 2 * 4
    assert "killed at " in requests["extra"] and "step log " in requests["extra"]
    assert 0 < rate["ratios"][0] < 1.5
    assert memory["ratios"] and memory["ratios"][0] > 0
    assert set(memory["rss_mb"]) == {"at 240", "at 24"}
    steplog = tmp_path / "work" / "killed" / "results" / "steplogs" / "answers.json"
    steps = {step["step_name"] for step in json.loads(steplog.read_text())["steps"]}
    assert {"batched_fetch", "http_loopback"} <= steps
