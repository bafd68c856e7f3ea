"""Layout: path conventions and the registry of tables, files and table patterns."""

from __future__ import annotations

import json

import pytest

from usher_pipeline.errors import UsherError
from usher_pipeline.workflow.layout import Layout, LayoutError, new_registry, wildcard_names

CHROMS = ["chr1", "chr2", "chr21"]


def test_concrete_tables_keep_their_step_logs_and_sidecars():
    layout = Layout(results_dir="out/")
    layout.register("numbers")
    layout.register("summary", "extra", files=["out/final/summary.tsv"])
    assert layout.tables == {"numbers": "numbers", "summary": "summary", "extra": "summary"}
    assert layout.products() == [
        "out/tables/numbers.parquet",
        "out/tables/summary.parquet",
        "out/tables/extra.parquet",
        "out/final/summary.tsv",
    ]
    assert layout.sidecars()[0] == "out/tables/numbers.provenance.json"
    assert layout.steplogs() == ["out/steplogs/numbers.json", "out/steplogs/summary.json"]
    assert layout.table_steplogs() == layout.steplogs()


def test_a_pattern_with_values_expands_into_tables_step_logs_and_files():
    layout = Layout()
    layout.register("chrom_stats_{chrom}", files=[layout.final("chrom_{chrom}.tsv")], chrom=CHROMS)
    assert layout.tables == {f"chrom_stats_{c}": f"chrom_stats_{c}" for c in CHROMS}
    assert layout.files == {f"results/final/chrom_{c}.tsv": f"chrom_stats_{c}" for c in CHROMS}
    assert layout.steplogs() == [f"results/steplogs/chrom_stats_{c}.json" for c in CHROMS]
    assert layout.table_steplogs() == layout.steplogs()
    assert layout.sidecars() == [
        *(f"results/tables/chrom_stats_{c}.provenance.json" for c in CHROMS),
        *(f"results/final/chrom_{c}.provenance.json" for c in CHROMS),
    ]


def test_several_wildcards_take_the_product_of_their_values_and_one_string_is_one_value():
    layout = Layout()
    layout.register("depth_{sample}_{chrom}", sample=["s1", "s2"], chrom="chr1")
    layout.register("calls_{sample}", "filtered_{sample}", steplog="call_{sample}", sample=[7])
    assert list(layout.tables) == [
        "depth_s1_chr1",
        "depth_s2_chr1",
        "calls_7",
        "filtered_7",
    ]
    assert layout.tables["filtered_7"] == "call_7"


def test_values_found_in_rule_paths_join_those_given_at_registration():
    layout = Layout()
    layout.register("given_{chrom}", chrom=["chr1"])
    layout.register("found_{chrom}")
    with pytest.raises(LayoutError, match=r"'found_\{chrom\}' has no values yet"):
        layout.products()
    layout.expand_patterns(
        [
            ("results/tables/given_chr2.parquet", "rule a"),
            ("./results/tables/found_chr21.parquet", "rule a"),
            ("results/tables/found_{chrom}.parquet", "rule found"),  # its own output
            ("results/tables/found_x/y.parquet", "rule b"),  # another folder: not a sentinel
            ("elsewhere/tables/found_chr3.parquet", "rule b"),
        ]
    )
    assert list(layout.tables) == ["given_chr1", "given_chr2", "found_chr21"]
    assert layout.patterns["found_{chrom}"]["values"] == [{"chrom": "chr21"}]


def test_a_concrete_table_is_not_taken_for_a_value_of_a_pattern():
    layout = Layout()
    layout.register("stats_summary")
    layout.register("stats_{chrom}", chrom=["chr1"])
    layout.expand_patterns([("results/tables/stats_summary.parquet", "rule report")])
    assert layout.tables == {"stats_summary": "stats_summary", "stats_chr1": "stats_chr1"}


def test_a_path_two_patterns_match_goes_to_the_more_specific_one():
    layout = Layout()
    layout.register("stats_{chrom}")
    layout.register("stats_{chrom}_depth")
    layout.expand_patterns(
        [
            ("results/tables/stats_chr1_depth.parquet", "rule report"),
            ("results/tables/stats_chr1.parquet", "rule report"),
        ]
    )
    assert layout.patterns["stats_{chrom}"]["values"] == [{"chrom": "chr1"}]
    assert layout.patterns["stats_{chrom}_depth"]["values"] == [{"chrom": "chr1"}]
    assert set(layout.tables) == {"stats_chr1", "stats_chr1_depth"}


def test_a_pattern_without_values_when_provenance_is_defined_asks_for_them():
    layout = Layout()
    layout.register("chrom_stats_{chrom}")
    with pytest.raises(LayoutError) as caught:
        layout.expand_patterns([("results/tables/other.parquet", "rule all")])
    message = str(caught.value)
    assert "\n" not in message
    assert "an input function's values come too late" in message
    assert "USHER.register('chrom_stats_{chrom}', chrom=[...])" in message


@pytest.mark.parametrize("value", ["chrX", "chr-1", "chr.1", "x" * 60])
def test_a_value_that_makes_no_table_name_is_refused_at_registration(value):
    layout = Layout()
    with pytest.raises(LayoutError) as caught:
        layout.register("chrom_stats_{chrom}", chrom=["chr1", value])
    message = str(caught.value)
    assert "\n" not in message
    assert f"chrom={value!r}" in message
    assert "'chrom_stats_{chrom}'" in message
    assert "(from register())" in message
    assert "chrom=[v.lower() for v in ...]" in message
    assert layout.tables == {"chrom_stats_chr1": "chrom_stats_chr1"}


def test_a_value_found_in_a_rule_that_makes_no_table_name_names_the_rule():
    layout = Layout()
    layout.register("chrom_stats_{chrom}")
    with pytest.raises(LayoutError, match=r"chrom='chrX' \(from rule summary\)"):
        layout.expand_patterns([("results/tables/chrom_stats_chrX.parquet", "rule summary")])


def test_exit_on_error_stops_with_one_line():
    layout = Layout(exit_on_error=True)
    with pytest.raises(SystemExit) as caught:
        layout.register("chrom_stats_{chrom}", chrom=["chrX"])
    assert str(caught.value).startswith("usher_pipeline: table pattern 'chrom_stats_{chrom}'")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (("stats_{chrom}",), {"steplog": "stats"}, "the same wildcards"),
        (("stats_{chrom}", "other_{sample}"), {}, "the same wildcards"),
        (("stats_{chrom}_{sample}",), {"chrom": ["chr1"]}, "for every wildcard, or for none"),
        (("stats",), {"chrom": ["chr1"]}, "names no wildcard"),
        (("stats_{chrom,[a-z0-9]+}",), {}, "put constraints in wildcard_constraints"),
        (("stats_{chrom:>3}",), {}, "plain {name}"),
        (("stats_{chrom",), {}, "unbalanced braces"),
        (("Stats_{chrom}",), {}, "change its fixed part"),
        (("stats_{chrom}",), {"chrom": []}, "are empty"),
        (("stats_{chrom}",), {"chrom": [1.5]}, "give strings"),
        ((), {}, "at least one table"),
    ],
)
def test_registrations_that_cannot_work_are_refused(args, kwargs, expected):
    layout = Layout()
    with pytest.raises(LayoutError, match=expected.replace("{", r"\{").replace("[", r"\[")):
        layout.register(*args, **kwargs)


def test_a_table_registered_for_two_step_logs_is_refused():
    layout = Layout()
    layout.register("stats_chr1")
    with pytest.raises(LayoutError, match="registered for two step logs"):
        layout.register("stats_{chrom}", steplog="job_{chrom}", chrom=["chr1"])
    layout.register("stats_chr1")  # the same registration again is harmless


def test_a_registration_after_the_expansion_is_refused():
    layout = Layout()
    layout.register("numbers")
    layout.expand_patterns([])
    with pytest.raises(LayoutError, match="after rules/provenance.smk was included"):
        layout.register("late")


def test_layouts_sharing_a_registry_see_the_same_tables_and_it_stays_json():
    registry = new_registry()
    main = Layout(registry=registry)
    main.register("chrom_stats_{chrom}")
    module = Layout(registry=registry)
    module.expand_patterns([("results/tables/chrom_stats_chr2.parquet", "rule summary")])
    assert main.products() == ["results/tables/chrom_stats_chr2.parquet"]
    assert json.loads(json.dumps(registry)) == registry
    old_style = {"tables": {"numbers": "numbers"}, "files": {}}  # a registry without patterns
    assert Layout(registry=old_style).products() == ["results/tables/numbers.parquet"]


def test_wildcard_names_in_order_of_first_use():
    assert wildcard_names("a_{x}_{y}_{x}") == ["x", "y"]
    assert wildcard_names("plain") == []
    assert issubclass(LayoutError, UsherError)
