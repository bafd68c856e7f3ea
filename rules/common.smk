# Config validation, path conventions and input functions of the demo workflow.


import sys

from usher_pipeline.config import validate_config_dict
from usher_pipeline.errors import UsherError


def _config_source():
    files = [str(f) for f in getattr(workflow, "configfiles", [])]
    return ", ".join(files) if files else "the workflow config"


try:
    CFG = validate_config_dict(
        {k: v for k, v in config.items() if not str(k).startswith("_")},
        source=_config_source(),
    )
    from usher_pipeline.demo import HPO_FILES, hpo_data_dir

    HPO_DIR = hpo_data_dir(CFG.demo.hpo_data_dir)
except UsherError as error:
    sys.exit(f"usher_pipeline: {error}")

# Jobs and the library read the validated config, defaults filled in (library.smk then
# checks the library's keys of it again, as in any workflow). Each rule gets only the settings
# it uses as params: its config slice, whose hash its step log records.
config.update(CFG.model_dump(mode="json"))


include: "library.smk"


LAYERS = list(CFG.demo.layers)
HPO = {role: str(HPO_DIR / name) for role, name in HPO_FILES.items()}

# The tables of the demo, each with the step log of the job that writes it.
# The keys, nouns and labels tell `usher-pipeline diff` how to compare two runs' versions.
GENES = dict(key=["ncbi_gene_id"], noun="genes", label="gene_symbol")
USHER.register("hpo_terms", key=["term_id"], noun="terms", label="name")
USHER.register("known_usher_genes", **GENES)
USHER.register("gene_universe", **GENES)
USHER.register("evidence_{layer}", key=["ncbi_gene_id"], noun="genes", layer=LAYERS)
USHER.register("gene_evidence", **GENES)
USHER.register("gene_scores", **GENES)
USHER.register(
    "candidate_tiers",
    "positive_controls",
    files=(
        USHER.final("candidate_tiers.tsv"),
        USHER.final("positive_controls.tsv"),
    ),
    **GENES,
)


wildcard_constraints:
    layer="|".join(LAYERS),


def get_layer_params(wildcards):
    """The HPO terms of one evidence layer (the only setting its result depends on)."""
    return {"terms": list(CFG.demo.layers[wildcards.layer].terms)}


def get_evidence_tables(wildcards):
    """The sentinels of every evidence layer."""
    return [USHER.sentinel(f"evidence_{layer}") for layer in LAYERS]


def get_final_outputs():
    """The targets of the default run: reports, the run record and every sidecar, plus every
    sentinel and step log, so that a resume re-makes one that a killed job left missing
    (Snakemake skips a missing intermediate file whose dependents are up to date)."""
    return [
        USHER.final("candidate_tiers.tsv"),
        USHER.final("positive_controls.tsv"),
        USHER.run_record,
        *USHER.history_report,
        *USHER.sidecars(),
        *USHER.products(),
        *USHER.steplogs(),
    ]


def print_run_summary():
    """Tell the user where the results are."""
    print(
        "\nusher_pipeline: run complete\n"
        f"  candidate tiers   {USHER.final('candidate_tiers.tsv')}"
        f" (table candidate_tiers, {USHER.sentinel('candidate_tiers')})\n"
        f"  positive controls {USHER.final('positive_controls.tsv')}\n"
        f"  database          {CFG.duckdb_path}\n"
        f"  provenance        {USHER.run_record} and a .provenance.json sidecar beside"
        " every table and report\n"
        f"  changes           {USHER.history_report[0]} (and `usher-pipeline diff`);"
        f" pictures {USHER.history_report[1]}, {USHER.final('score_distribution.png')}",
        file=sys.stderr,
    )
