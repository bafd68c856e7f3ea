"""The run history's files without Snakemake: run references, retention, versions by content,
and the config and version changes between two records."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from usher_pipeline.hashing import sha256_file
from usher_pipeline.history.changes import config_changes, flatten, version_changes
from usher_pipeline.history.diff import headline
from usher_pipeline.history.store import (
    RUN_FORMAT,
    History,
    HistoryError,
    RunNotFound,
    TableNotInHistory,
    object_name,
    run_id_for,
)
from usher_pipeline.persistence.fingerprint import fingerprint_parquet

START = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def save_version(history: History, folder: Path, values: list[int]) -> dict[str, Any]:
    """A sentinel with `values`, kept as a version; its table entry."""
    sentinel = folder / f"t_{'_'.join(map(str, values))}.parquet"
    pl.DataFrame({"id": values}).write_parquet(sentinel)
    fingerprint, rows = fingerprint_parquet(sentinel)
    history.add_object(fingerprint, sentinel, sha256_file(sentinel))
    return {
        "fingerprint": fingerprint,
        "rows": rows,
        "object": f"objects/{object_name(fingerprint)}",
        "changed": True,
    }


def save_run(history: History, day: int, tables: dict[str, dict[str, Any]]) -> str:
    ended = START + timedelta(days=day)
    run_id = run_id_for(ended, f"{day:06x}")
    history.save_run(
        {
            "format": RUN_FORMAT,
            "run_id": run_id,
            "started_at": iso(ended - timedelta(minutes=5)),
            "ended_at": iso(ended),
            "tables": tables,
            "config": {"day": day},
        }
    )
    return run_id


@pytest.fixture
def history(tmp_path: Path) -> History:
    return History(tmp_path / "results")


@pytest.fixture
def five_runs(history: History, tmp_path: Path) -> list[str]:
    """Five runs a day apart: table t changes in runs 0, 2 and 4, table u never."""
    same = save_version(history, tmp_path, [7])
    ids = []
    versions = {0: [1], 2: [1, 2], 4: [1, 2, 3]}
    current = None
    for day in range(5):
        if day in versions:
            current = save_version(history, tmp_path, versions[day])
        assert current is not None
        ids.append(save_run(history, day, {"t": current, "u": same}))
    return ids


def test_runs_are_named_by_id_prefix_latest_and_date(history, five_runs):
    assert history.resolve("latest")["run_id"] == five_runs[-1]
    assert history.resolve("latest~2")["run_id"] == five_runs[2]
    assert history.resolve(five_runs[1])["run_id"] == five_runs[1]
    assert history.resolve(five_runs[3][:-3])["run_id"] == five_runs[3]  # a unique prefix
    assert history.resolve("2026-11-21")["run_id"] == five_runs[1]  # ended by that day's end
    assert history.resolve("2026-11-22T11:00Z")["run_id"] == five_runs[1]
    assert history.previous(history.load(five_runs[2]))["run_id"] == five_runs[1]
    assert history.previous(history.load(five_runs[0])) is None


@pytest.mark.parametrize(
    ("ref", "says"),
    [
        ("latest~5", "5 runs are kept, so the oldest is latest~4"),
        ("nosuchrun", "give a run id from `usher-pipeline runs`"),
        ("2026-11-01", "no kept run ended by 2026-11-01"),
        ("2026112", "is ambiguous"),
    ],
)
def test_a_run_that_does_not_exist_is_one_line_naming_the_fix(history, five_runs, ref, says):
    with pytest.raises(RunNotFound) as caught:
        history.resolve(ref)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


def test_no_runs_and_unknown_tables_say_what_to_do(history, five_runs, tmp_path):
    with pytest.raises(RunNotFound, match="run the workflow"):
        History(tmp_path / "elsewhere").resolve("latest")
    with pytest.raises(TableNotInHistory, match=r"kept tables: t, u"):
        history.versions("nosuch")
    assert [entry["rows"] for _run, entry in history.versions("t")] == [1, 1, 2, 2, 3]


def test_an_unchanged_table_is_one_file_and_a_version_costs_no_copy(history, five_runs):
    files = sorted(history.objects_dir.iterdir())
    assert len(files) == 4  # u once, t three times
    # each object is a hard link of its sentinel: no bytes were copied
    assert all(path.stat().st_nlink == 2 for path in files)
    own, shared = history.disk_usage()
    assert own == 0 and shared == sum(path.stat().st_size for path in files)


def test_gc_keeps_the_last_runs_and_removes_versions_only_they_named(history, five_runs, tmp_path):
    for sentinel in tmp_path.glob("t_*.parquet"):  # the sentinels replaced by later versions
        if sentinel.name != "t_1_2_3.parquet":
            sentinel.unlink()
    dry = history.gc(keep_runs=2, keep_days=None, dry_run=True)
    assert dry.runs_removed == tuple(five_runs[:3]) and history.run_ids() == five_runs
    report = history.gc(keep_runs=2, keep_days=None)
    assert report.runs_removed == tuple(five_runs[:3]) and report.runs_kept == 2
    assert report.objects_removed == 1  # t of runs 0 and 1; run 3 still names that of run 2
    assert report.bytes_freed > 0 and report.shared_kept == 0
    assert history.run_ids() == five_runs[3:]
    named = {Path(e["object"]).name for r in history.runs() for e in r["tables"].values()}
    assert {p.name for p in history.objects_dir.iterdir()} == named


def test_gc_by_age_keeps_either_rules_runs_and_always_the_latest(history, five_runs):
    now = START + timedelta(days=4, hours=1)
    report = history.gc(keep_runs=None, keep_days=1.5, now=now, dry_run=True)
    assert report.runs_removed == tuple(five_runs[:3])
    report = history.gc(keep_runs=4, keep_days=1.5, now=now, dry_run=True)
    assert report.runs_removed == (five_runs[0],)
    report = history.gc(keep_runs=None, keep_days=0.001, now=now + timedelta(days=30))
    assert history.run_ids() == [five_runs[-1]]
    report = history.gc(keep_runs=None, keep_days=None)
    assert report.runs_removed == () and report.objects_removed == 0


def test_gc_removes_versions_that_no_record_names(history, five_runs, tmp_path):
    orphan = save_version(history, tmp_path, [9, 9])  # as a run killed before its record
    report = history.gc(keep_runs=None, keep_days=None)
    assert report.runs_removed == () and report.objects_removed == 1
    assert not (history.root / orphan["object"]).exists()


def test_a_sentinel_that_is_not_the_one_its_step_log_names_is_not_kept(history, tmp_path):
    sentinel = tmp_path / "t.parquet"
    pl.DataFrame({"id": [1]}).write_parquet(sentinel)
    fingerprint, _rows = fingerprint_parquet(sentinel)
    with pytest.raises(HistoryError, match="is not the file its step log describes"):
        history.add_object(fingerprint, sentinel, "0" * 64)
    assert not history.object_path(fingerprint).exists()
    assert list(history.objects_dir.iterdir()) == []  # no temporary file left


def test_a_damaged_run_record_names_its_file_and_the_fix(history, five_runs):
    history.run_path(five_runs[1]).write_text("{not json")
    with pytest.raises(HistoryError, match=r"cannot be read .*delete it"):
        history.runs()
    history.run_path(five_runs[1]).write_text('{"format": "other"}')
    with pytest.raises(HistoryError, match="is not a usher_pipeline.run/1 record"):
        history.load(five_runs[1])


def test_leftover_temporary_records_are_not_runs(history, five_runs):
    (history.runs_dir / f".{five_runs[0]}.json.{os.getpid()}.abcd1234.tmp").write_text("{")
    assert history.run_ids() == five_runs


def test_config_changes_are_dotted_paths_with_old_and_new():
    old = {"demo": {"layers": {"a": {"weight": 0.4, "terms": ["x"]}}, "n": 1}, "flag": True}
    new = {"demo": {"layers": {"a": {"weight": 0.5, "terms": ["x", "y"]}}, "n": 1.0}, "k": {}}
    assert flatten(old)["demo.layers.a.weight"] == 0.4
    assert config_changes(old, new) == [
        {"key": "demo.layers.a.terms", "old": ["x"], "new": ["x", "y"], "change": "changed"},
        {"key": "demo.layers.a.weight", "old": 0.4, "new": 0.5, "change": "changed"},
        {"key": "flag", "old": True, "new": None, "change": "removed"},
        {"key": "k", "old": None, "new": {}, "change": "added"},
    ]
    assert config_changes({"x": True}, {"x": 1}) != []  # a boolean is not a number
    assert config_changes({"x": float("nan")}, {"x": float("nan")}) == []
    assert version_changes({"hpo": "1", "a": "2"}, {"hpo": "2", "a": "2"}) == [
        {"name": "hpo", "old": "1", "new": "2"}
    ]


def test_headline_reads_as_a_result():
    entry = {
        "table": "candidate_tiers",
        "status": "changed",
        "noun": "genes",
        "changed": 40,
        "added": 1,
        "removed": 0,
        "changed_columns": [["score", 40], ["tier", 37]],
        "transitions": [
            {"column": "tier", "old": "MEDIUM", "new": "HIGH", "rows": 12},
            {"column": "tier", "old": "LOW", "new": "MEDIUM", "rows": 25},
        ],
    }
    assert headline(entry) == (
        "candidate_tiers: 37 genes changed tier (12 MEDIUM -> HIGH, 25 LOW -> MEDIUM); "
        "40 genes changed score; 1 added"
    )
    one = {"table": "t", "status": "added", "noun": "genes", "rows_new": 1}
    assert headline(one) == "t: new table, 1 gene"


def test_a_version_written_anew_with_the_same_content_holds_no_second_copy(history, tmp_path):
    sentinel = tmp_path / "t.parquet"
    pl.DataFrame({"id": [1, 2]}).write_parquet(sentinel)
    fingerprint, _rows = fingerprint_parquet(sentinel)
    assert history.add_object(fingerprint, sentinel, sha256_file(sentinel)) == 0
    rewritten = tmp_path / "t.new.parquet"  # the job reran: a new file, the same rows
    pl.DataFrame({"id": [2, 1]}).write_parquet(rewritten)
    os.replace(rewritten, sentinel)
    assert fingerprint_parquet(sentinel)[0] == fingerprint
    assert history.add_object(fingerprint, sentinel, sha256_file(sentinel)) == 0
    assert os.path.samefile(history.object_path(fingerprint), sentinel)
    assert history.disk_usage()[0] == 0  # the old file is gone with its last link


def test_temporary_files_of_killed_writers_are_removed_and_a_live_ones_kept(history, five_runs):
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    pid = int(dead.stdout)
    stale = history.runs_dir / f".{five_runs[0]}x.json.{pid}.abcd1234.tmp"
    stale_object = history.objects_dir / f".fp2-{'0' * 32}.parquet.{pid}.abcd1234.tmp"
    live = history.runs_dir / f".other.json.{os.getppid()}.abcd1234.tmp"
    for path in (stale, stale_object, live):
        path.write_text("{")
    assert history.remove_leftovers() == 2
    assert not stale.exists() and not stale_object.exists() and live.exists()
    assert history.run_ids() == five_runs


def test_why_a_table_changed_names_its_params_then_what_it_read():
    from usher_pipeline.history.diff import RunDiff, causes

    def run(weight: float, script: str, data: str) -> dict[str, Any]:
        job = {"step": "scores", "params": {"weights": {"a": weight}}, "inputs": ["data.tsv"]}
        tiers = {"step": "tiers", "params": {"high": 0.5}, "inputs": ["results/scores.parquet"]}
        return {
            "jobs": [job, tiers],
            "inputs": {"data.tsv": data},
            "tables": {
                "scores": {"fingerprint": f"fp2:{weight}{data}", "step": "scores", "upstream": []},
                "tiers": {
                    "fingerprint": f"fp2:{weight}{data}",
                    "step": "tiers",
                    "upstream": ["scores"],
                },
            },
            "workflow": {"files": {"scripts/tiers.py": script}},
        }

    def why(old: dict[str, Any], new: dict[str, Any], table: str) -> list[str]:
        diff = RunDiff(
            old,
            new,
            [],
            [],
            [],
            version_changes(old["inputs"], new["inputs"], name="path"),
            version_changes(old["workflow"]["files"], new["workflow"]["files"], name="path"),
        )
        return causes(diff, old, new, table)

    base = run(0.4, "s1", "d1")
    assert why(base, run(0.5, "s1", "d1"), "scores") == [
        "the params of scores changed: weights.a 0.4 -> 0.5"
    ]
    assert why(base, run(0.5, "s1", "d1"), "tiers") == ["tiers read changed tables: scores"]
    assert why(base, run(0.4, "s1", "d2"), "scores") == ["scores read changed files: data.tsv"]
    same_inputs = run(0.4, "s2", "d1")
    same_inputs["tables"]["tiers"]["fingerprint"] = "fp2:other"
    assert why(base, same_inputs, "tiers") == ["the workflow's files changed: scripts/tiers.py"]
