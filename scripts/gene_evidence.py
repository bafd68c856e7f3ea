"""Integrate the evidence layers into one row per gene."""

from usher_pipeline.demo import integrate
from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    universe = job.read("universe")
    tables = job.read_many("layers")
    layers = {name.removeprefix("evidence_"): frame for name, frame in tables.items()}
    evidence = integrate(universe, {name: layers[name] for name in snakemake.params.layers})
    job.record_step("integrate", {"genes": evidence.height, "layers": list(layers)})
    job.save(evidence, description="per-gene term counts in every evidence layer")
