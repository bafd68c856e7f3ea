"""Parse the HPO ontology (hp.obo) into the table hpo_terms."""

from pathlib import Path

from usher_pipeline.demo import hpo_release, read_ontology
from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    data_dir = Path(snakemake.input.ontology).parent
    release = hpo_release(data_dir)
    job.record_data_source("hpo", release)
    terms = read_ontology(data_dir)
    job.record_step(
        "parse_ontology",
        {"release": release, "terms": terms.height, "obsolete": int(terms["is_obsolete"].sum())},
    )
    job.save(terms, description=f"HPO terms and is_a parents, release {release}")
