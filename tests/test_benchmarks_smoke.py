"""Smoke run of the benchmark harness at tiny sizes: it runs and writes a results table.

No timing is asserted here; the speed targets live in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES = ["import", "small_jobs", "lock", "big_frame", "merge", "dryrun", "demo_restart"]


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
    for expected in (*expected_cases, "rerun of the demo after", "replayed in plain Snakemake"):
        assert expected in cases
    for row in rows:
        assert row["ratios"], f"no measurement for {row['case']}"
        assert all(ratio > 0 for ratio in row["ratios"]), row
        assert f"| {row['case']} |" in text
    # the library runs committed every table they were asked to (checked by the harness too)
    for variant in ("job", "head"):
        folder = work / "small_jobs" / "small_jobs" / variant
        assert (folder / "results" / "pipeline.duckdb").exists()

    # rewriting the texts keeps how and on what the rows were measured
    measured = text.split("\n\n", 2)[1]
    assert measured.startswith("Written by `.venv/bin/python benchmarks/run.py --quick --cases")
    harness(tmp_path, "--report-only")
    rewritten = output.read_text()
    assert measured in rewritten
    assert "by `--report-only` from work/results.json" in rewritten
    assert rewritten.split("- machine:")[1] == text.split("- machine:")[1]

    # rerunning one case keeps the others, each said to be measured by the command that did
    first = measured.splitlines()[0].removeprefix("Written by ").rsplit(", ", 1)[0]
    harness(tmp_path, "--quick", "--cases", "import", "--keep")
    kept = sorted(c for c in CASES if c != "import")
    assert f"Cases kept from earlier runs (`--keep`): {', '.join(kept)} by {first}." in (
        output.read_text()
    )
    by = {
        row["group"]: row["measured_by"] for row in json.loads((work / "results.json").read_text())
    }
    assert by.pop("import").startswith("`.venv/bin/python benchmarks/run.py --quick --cases import")
    assert set(by.values()) == {first}
