"""The run history on real runs: the demo run twice with two layer weights changed, the
history commands read back in subprocesses and checked against the tables themselves; bad
input to those commands; and kills (a fault point between a run's versions and its record,
SIGKILLs of the whole Snakemake process group at random instants, a gc killed between
records and versions), after which every record is whole and the next run converges.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import signal
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from history_helpers import (
    HEARING,
    RETINA,
    after,
    fault_seed,
    job_stats_of,
    named_objects,
    object_files,
    one_line_error,
    run_or_kill,
    same_run,
    set_tiny,
    set_weights,
    tiny_run,
    tiny_workflow,
    usher,
    usher_json,
    whole_history,
)
from polars.testing import assert_frame_equal
from test_workflow import copy_workflow, job_stats, output, run_env, snakemake

from usher_pipeline.history.store import History
from usher_pipeline.persistence.fingerprint import fingerprint_parquet
from usher_pipeline.workflow.faults import FAULT_VARIABLE

TIERS = Path("results/tables/candidate_tiers.parquet")
WEIGHTS = {HEARING: (0.4, 0.5), RETINA: (0.35, 0.25)}  # key -> (first run, second run)


def demo_first_run(workdir: Path) -> Path:
    """A copy of the demo (200 genes) run once with the default weights."""
    copy_workflow(workdir, "small")
    snakemake(workdir, "--cores", "2")
    return workdir


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo run twice: the default weights, then hearing 0.5 and retina 0.25; the first
    run's candidate_tiers.parquet is kept beside the copy as first_tiers.parquet."""
    workdir = demo_first_run(tmp_path_factory.mktemp("history") / "demo")
    first = History(workdir / "results").latest()
    assert first is not None
    layers = first["config"]["demo"]["layers"]
    assert (layers["hearing"]["weight"], layers["retina"]["weight"]) == (0.4, 0.35)
    shutil.copyfile(workdir / TIERS, workdir.parent / "first_tiers.parquet")
    set_weights(workdir, WEIGHTS[HEARING][1], WEIGHTS[RETINA][1])
    snakemake(workdir, "--cores", "2")
    return workdir


def tier_moves(demo: Path) -> pl.DataFrame:
    """The genes whose tier differs between the two runs, from the two Parquet files."""
    old = pl.read_parquet(demo.parent / "first_tiers.parquet")
    new = pl.read_parquet(demo / TIERS)
    assert sorted(old["ncbi_gene_id"]) == sorted(new["ncbi_gene_id"])
    joined = old.select("ncbi_gene_id", "tier").join(
        new.select("ncbi_gene_id", "tier"), on="ncbi_gene_id", suffix="_new"
    )
    return joined.filter(pl.col("tier") != pl.col("tier_new"))


def pair_counts(frame: pl.DataFrame, old: str, new: str) -> dict[tuple[str, str], int]:
    return {(row[old], row[new]): row["len"] for row in frame.group_by(old, new).len().to_dicts()}


def table_entry(diff: dict[str, Any], table: str) -> dict[str, Any]:
    found = [entry for entry in diff["tables"] if entry["table"] == table]
    assert len(found) == 1, [entry["table"] for entry in diff["tables"]]
    return found[0]


# -- 1. the demo with two weights changed -----------------------------------------------------


@pytest.mark.slow
def test_diff_names_the_two_weights_and_nothing_else(demo):
    diff = usher_json(demo, "diff")
    runs = History(demo / "results").run_ids()
    assert [diff["old"]["run_id"], diff["new"]["run_id"]] == runs
    assert sorted(diff["config"], key=lambda c: c["key"]) == [
        {"key": key, "old": old, "new": new, "change": "changed"}
        for key, (old, new) in sorted(WEIGHTS.items())
    ]
    assert (diff["data_sources"], diff["software"], diff["inputs"]) == ([], [], [])
    assert "hpo_terms" in diff["unchanged_tables"]


@pytest.mark.slow
def test_tier_transitions_are_exactly_the_genes_whose_tier_changed(demo):
    moves = tier_moves(demo)
    assert moves.height > 0, "the weight change moved no gene: the test would prove nothing"
    expected = pair_counts(moves, "tier", "tier_new")

    entry = table_entry(usher_json(demo, "diff"), "candidate_tiers")
    assert (entry["key"], entry["noun"], entry["added"], entry["removed"]) == (
        ["ncbi_gene_id"],
        "genes",
        0,
        0,
    )
    transitions = [t for t in entry["transitions"] if t["column"] == "tier"]
    assert {(t["old"], t["new"]): t["rows"] for t in transitions} == expected
    listed = {key[0] for t in transitions for key in t["keys"]}
    if moves.height <= 50:  # the transitions keep at most 50 keys each
        assert listed == set(moves["ncbi_gene_id"])
    assert listed <= set(moves["ncbi_gene_id"])

    rows = pl.DataFrame(usher_json(demo, "diff", "--table", "candidate_tiers"))
    assert set(rows["change"]) == {"changed"}
    assert rows.height == entry["changed"]
    moved = rows.filter(pl.col("tier_old") != pl.col("tier_new"))
    assert sorted(moved["ncbi_gene_id"]) == sorted(moves["ncbi_gene_id"])
    assert pair_counts(moved, "tier_old", "tier_new") == expected
    old = pl.read_parquet(demo.parent / "first_tiers.parquet").select("ncbi_gene_id", "score")
    new = pl.read_parquet(demo / TIERS).select("ncbi_gene_id", "score")
    values = old.join(new, on="ncbi_gene_id", suffix="_new").filter(
        pl.col("score") != pl.col("score_new")
    )
    scores = rows.filter(pl.col("score_old") != pl.col("score_new"))
    assert_frame_equal(  # the diff's values are the tables' own, not rounded
        scores.select("ncbi_gene_id", "score_old", "score_new").sort("ncbi_gene_id"),
        values.rename({"score": "score_old"}).sort("ncbi_gene_id"),
        check_exact=True,
    )

    as_csv = usher(demo, "diff", "--table", "candidate_tiers", "--format", "csv").stdout
    from_csv = pl.read_csv(io.StringIO(as_csv))
    assert sorted(from_csv.filter(pl.col("tier_old") != pl.col("tier_new"))["ncbi_gene_id"]) == (
        sorted(moves["ncbi_gene_id"])
    )


@pytest.mark.slow
def test_the_text_diff_counts_the_genes_that_changed_tier(demo):
    lines = [line.strip() for line in usher(demo, "diff").stdout.splitlines()]
    headline = f"candidate_tiers: {tier_moves(demo).height} genes changed tier ("
    assert any(line.startswith(headline) for line in lines), "\n".join(lines)
    assert f"{HEARING}: 0.4 -> 0.5" in lines and f"{RETINA}: 0.35 -> 0.25" in lines


@pytest.mark.slow
def test_runs_lists_both_runs_newest_first_with_the_config_keys(demo):
    rows = usher_json(demo, "runs")
    assert [row["run"] for row in rows] == History(demo / "results").run_ids()[::-1]
    assert set(rows[0]) == {"run", "ended", "took", "by", "changes"}
    assert HEARING in rows[0]["changes"] and RETINA in rows[0]["changes"]
    assert rows[1]["changes"].startswith("first run")
    newest = History(demo / "results").latest()
    assert newest is not None and sorted(newest["changed"]["config"]) == sorted(WEIGHTS)
    assert "candidate_tiers" in newest["changed"]["tables"]
    assert "hpo_terms" not in newest["changed"]["tables"]


@pytest.mark.slow
def test_an_unchanged_table_keeps_one_version_shared_with_its_sentinel(demo):
    versions = usher_json(demo, "history", "hpo_terms")
    assert len(versions) == 2
    assert len({v["fingerprint"] for v in versions}) == 1
    assert len({v["file"] for v in versions}) == 1
    kept = demo / versions[0]["file"]
    assert fingerprint_parquet(kept)[0] == versions[0]["fingerprint"]
    assert kept.samefile(demo / "results/tables/hpo_terms.parquet"), "not a hard link"

    runs = whole_history(demo)
    fingerprints = {e["fingerprint"] for run in runs for e in run["tables"].values()}
    assert len(object_files(demo)) == len(fingerprints)
    assert set(object_files(demo)) == named_objects(runs)

    changed = usher_json(demo, "history", "candidate_tiers")
    assert [v["version"] for v in changed] == ["v2", "v1"]
    assert len({v["file"] for v in changed}) == 2


@pytest.mark.slow
def test_show_prints_the_earlier_version_as_it_was(demo):
    first = pl.read_parquet(demo.parent / "first_tiers.parquet")
    shown = usher(demo, "show", "candidate_tiers", "--run", "latest~1", "--format", "csv")
    read = pl.read_csv(io.StringIO(shown.stdout), schema=first.schema)
    assert_frame_equal(read, first, check_exact=True)
    latest = usher(demo, "show", "candidate_tiers", "--format", "csv").stdout
    read = pl.read_csv(io.StringIO(latest), schema=first.schema)
    assert_frame_equal(read, pl.read_parquet(demo / TIERS), check_exact=True)
    as_json = usher_json(demo, "show", "candidate_tiers", "--run", "latest~1")
    assert as_json == first.to_dicts()
    assert latest != shown.stdout


@pytest.mark.slow
def test_query_reads_a_history_object_and_still_refuses_other_files(demo):
    versions = usher_json(demo, "history", "candidate_tiers")
    earlier = versions[-1]["file"]
    done = usher_json(demo, "query", f"SELECT count(*) AS n, min(tier) AS t FROM '{earlier}'")
    assert done == [{"n": versions[-1]["rows"], "t": "HIGH"}]
    refused = usher(demo, "query", "SELECT * FROM read_text('/etc/passwd')", check=False)
    one_line_error(refused)
    assert "root:" not in refused.stdout + refused.stderr


@pytest.mark.slow
def test_a_run_is_named_by_its_id_a_prefix_latest_n_or_its_end_time(demo):
    first, second = History(demo / "results").runs()
    for ref in (first["run_id"], first["run_id"][:18], "latest~1", first["ended_at"]):
        diff = usher_json(demo, "diff", ref, second["run_id"][:18])
        assert (diff["old"]["run_id"], diff["new"]["run_id"]) == (
            first["run_id"],
            second["run_id"],
        ), ref
    by_day = usher_json(demo, "diff", "latest~1", second["ended_at"][:10])
    assert by_day["new"]["run_id"] == second["run_id"]  # the newest run that day


# -- 2. bad input -----------------------------------------------------------------------------

BAD_COMMANDS = {
    "unknown run": (["diff", "nosuchrun", "latest"], ["nosuchrun", "usher-pipeline runs"]),
    "too far back": (["diff", "latest~9"], ["latest~9", "latest~1"]),
    "show too far back": (["show", "candidate_tiers", "--run", "latest~9"], ["latest~1"]),
    "history of no table": (["history", "nosuch"], ["nosuch", "check the name"]),
    "show of no table": (["show", "nosuch"], ["nosuch", "check the name"]),
    "diff of no table": (["diff", "--table", "nosuch"], ["nosuch", "check the name"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_COMMANDS))
def test_bad_input_is_one_line_naming_the_fix(demo, case):
    command, fragments = BAD_COMMANDS[case]
    one_line_error(usher(demo, *command, check=False), *fragments)


# Last of the tests of `demo`: they add a third run.
@pytest.mark.slow
def test_the_provenance_rule_rerun_on_the_same_step_logs_records_no_second_run(demo):
    done = snakemake(demo, "--cores", "2", "--forcerun", "provenance")
    assert job_stats(done).get("provenance") == 1
    assert "is recorded already" in (demo / "logs/provenance/provenance.log").read_text()
    assert len(whole_history(demo)) == 2


@pytest.mark.slow
def test_a_run_that_changes_nothing_adds_no_version_and_no_bytes(demo):
    before = object_files(demo)
    own_before = History(demo / "results").disk_usage()[0]
    done = snakemake(demo, "--cores", "2", "--forceall")  # every job writes the same again
    assert job_stats(done).get("provenance") == 1
    assert object_files(demo) == before
    assert sum(object_files(demo).values()) == sum(before.values())
    assert History(demo / "results").disk_usage()[0] == own_before  # no second copy held
    runs = whole_history(demo)
    assert len(runs) == 3
    assert runs[-1]["changed"]["tables"] == [] and runs[-1]["changed"]["config"] == []
    assert {t: e["fingerprint"] for t, e in runs[-1]["tables"].items()} == {
        t: e["fingerprint"] for t, e in runs[-2]["tables"].items()
    }


# -- 2. bad input on a tiny workflow: one run, then a key that is not unique ------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny workflow run once (the diff it then gives), then again with key 0 repeated."""
    workdir = tiny_workflow(tmp_path_factory.mktemp("history-tiny") / "tiny")
    tiny_run(workdir)
    one_run = usher(workdir, "diff", check=False)
    set_tiny(workdir, n=6, repeat=True)
    tiny_run(workdir)
    return {"workdir": workdir, "one_run": one_run}


@pytest.mark.slow
def test_diff_with_one_run_says_to_run_again(tiny):
    one_line_error(tiny["one_run"], "1 is kept", "run the workflow again")


@pytest.mark.slow
@pytest.mark.parametrize(
    "command", [["diff"], ["diff", "--format", "json"], ["diff", "--table", "things"]]
)
def test_diff_says_a_declared_key_is_not_unique(tiny, command):
    line = one_line_error(usher(tiny["workdir"], *command, check=False), "key k", "unique")
    assert 'USHER.register("things"' in line


@pytest.mark.slow
def test_the_report_notes_a_key_that_is_not_unique_and_the_run_goes_on(tiny):
    page = (tiny["workdir"] / "results/final/changes.html").read_text()
    assert "cannot be compared" in page and "key k" in page  # the run itself succeeded


@pytest.mark.slow
@pytest.mark.parametrize("keep", ["0", "-1"])
def test_gc_refuses_to_keep_fewer_than_one_run(tiny, keep):
    workdir = tiny["workdir"]
    before = History(workdir / "results").run_ids()
    done = usher(workdir, "gc", "--keep-runs", keep, check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "--keep-runs" in errors[0], done.stderr
    assert History(workdir / "results").run_ids() == before


# -- 3. kills ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_kill_between_the_versions_and_the_record_leaves_the_history_whole(tmp_path):
    workdir = demo_first_run(tmp_path / "demo")
    first = whole_history(workdir)
    set_weights(workdir, WEIGHTS[HEARING][1], WEIGHTS[RETINA][1])
    killed = snakemake(
        workdir,
        "--cores",
        "2",
        check=False,
        env=run_env(**{FAULT_VARIABLE: "history_after_objects"}),
    )
    assert killed.returncode != 0
    assert whole_history(workdir) == first
    assert [row["run"] for row in usher_json(workdir, "runs")] == [first[0]["run_id"]]
    orphans = set(object_files(workdir)) - named_objects(first)
    assert orphans, "the killed run kept no version before its record"

    snakemake(workdir, "--cores", "2")
    runs = whole_history(workdir)
    assert len(runs) == 2
    assert orphans <= named_objects(runs)  # the rerun's record names what the kill left
    diff = usher_json(workdir, "diff")
    assert sorted(c["key"] for c in diff["config"]) == sorted(WEIGHTS)
    assert "candidate_tiers" in {entry["table"] for entry in diff["tables"]}
    gc = usher(workdir, "gc").stdout
    assert gc.startswith("gc: removed 0 runs and 0 table versions"), gc
    assert whole_history(workdir) == runs
    assert set(object_files(workdir)) == named_objects(runs)


@pytest.mark.slow
def test_random_sigkills_of_a_changed_run_record_each_run_once(tmp_path, request):
    seed = fault_seed(request.config)
    replay = f"fault seed {seed}: replay with pytest tests/test_history.py --fault-seed {seed}"
    print(replay)
    try:
        check_random_kills(tmp_path, random.Random(seed))
    except Exception as error:
        error.add_note(replay)
        raise


def check_random_kills(tmp_path: Path, rng: random.Random) -> None:
    workdir = demo_first_run(tmp_path / "demo")
    settings = [(0.4, 0.35), (0.5, 0.25)]  # (hearing, retina): the run alternates between them
    current = 0

    def change() -> None:
        nonlocal current
        current = 1 - current
        set_weights(workdir, *settings[current])

    def objects_grew() -> Any:
        count = len(object_files(workdir))
        return lambda: len(object_files(workdir)) > count

    change()
    instants = [("random", rng.uniform(0.3, 7.0)) for _ in range(3)] + [("objects", 0.0)]
    rng.shuffle(instants)
    for number, (how, seconds) in enumerate(instants):
        before = whole_history(workdir)
        ready = objects_grew() if how == "objects" else after(seconds)
        attempt = run_or_kill(workdir, ready, tmp_path / f"attempt-{number}.log")
        runs = whole_history(workdir)
        new = runs[len(before) :]
        print(f"attempt {number}: {how} {seconds:.2f} s, killed {attempt.killed}, {len(new)} new")
        assert runs[: len(before)] == before, "a kill changed an earlier record"
        for run in new:
            assert run["config"]["demo"]["layers"]["hearing"]["weight"] == settings[current][0]
        if attempt.killed:
            assert len(new) <= 1, f"one killed attempt recorded {len(new)} runs"
        else:
            assert attempt.returncode == 0, attempt.log
            # no provenance job when the attempt before was killed after its job had ended; a
            # job killed after its record and rerun here finds its run recorded
            assert len(new) <= job_stats_of(attempt.log).get("provenance", 0), attempt.log
            provenance = json.loads((workdir / "results/provenance.json").read_text())
            assert runs[-1]["provenance_run_id"] == provenance["run_id"], "run not recorded"
            change()  # so that the next attempt has a changed run to kill

    before = whole_history(workdir)
    done = snakemake(workdir, "--cores", "2")
    if "provenance" not in job_stats_of(output(done)):  # the last kill came after the job
        change()
        done = snakemake(workdir, "--cores", "2")
    runs = whole_history(workdir)
    assert len(runs) == len(before) + 1 == len(before) + job_stats_of(output(done))["provenance"]
    again = [r["run_id"] for b, r in zip(runs, runs[1:], strict=False) if same_run(b, r)]
    assert again == [], "a run recorded twice (a kill after its record, then its job rerun)"
    latest = runs[-1]
    provenance = json.loads((workdir / "results/provenance.json").read_text())
    assert latest["provenance_run_id"] == provenance["run_id"]
    for table, entry in latest["tables"].items():
        sentinel = workdir / "results" / "tables" / f"{table}.parquet"
        assert fingerprint_parquet(sentinel)[0] == entry["fingerprint"], table
    hearing = latest["config"]["demo"]["layers"]["hearing"]["weight"]
    assert hearing == settings[current][0]
    if runs[0]["config"] != latest["config"]:
        diff = usher_json(workdir, "diff", runs[0]["run_id"], "latest")
        assert sorted(c["key"] for c in diff["config"]) == sorted(WEIGHTS)
    assert "Nothing to be done" in output(snakemake(workdir, "--cores", "2"))


@pytest.mark.slow
def test_a_gc_killed_between_records_and_versions_is_finished_by_the_next(tmp_path):
    workdir = tiny_workflow(tmp_path / "tiny")
    for n in range(1, 7):
        set_tiny(workdir, n=n, repeat=False)
        tiny_run(workdir)
    runs = whole_history(workdir)
    assert len(runs) == 6
    assert set(object_files(workdir)) == named_objects(runs) and len(named_objects(runs)) == 6

    killed = usher(
        workdir, "gc", "--keep-runs", "1", check=False, **{FAULT_VARIABLE: "history_gc_between"}
    )
    assert killed.returncode == -signal.SIGKILL, output(killed)
    kept = whole_history(workdir)
    assert kept == runs[1:], "the kill came after the first removed record"
    assert set(object_files(workdir)) == named_objects(runs)  # no version removed yet

    done = usher(workdir, "gc", "--keep-runs", "1")
    assert done.stdout.startswith("gc: removed 4 runs and 5 table versions"), done.stdout
    left = whole_history(workdir)
    assert left == runs[-1:]
    assert set(object_files(workdir)) == named_objects(left)
    again = usher(workdir, "gc", "--keep-runs", "1").stdout
    assert again.startswith("gc: removed 0 runs and 0 table versions"), again
