"""One evidence layer: per gene, the HPO terms it carries inside the layer's term closure.

Genes are looked up in batches through the resumable fetch, as a real API would be; a
configurable latency per batch stands in for the network.
"""

import time

from usher_pipeline.demo import descendant_closure, layer_evidence, read_annotations
from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    fetch_settings = snakemake.config["demo"]["fetch"]
    latency = float(fetch_settings["batch_latency_seconds"])
    roots = snakemake.params.layer["terms"]
    closure = descendant_closure(job.read("terms"), roots)
    job.record_step("term_closure", {"roots": roots, "terms": len(closure)})
    annotations = read_annotations(snakemake.input.annotations.rsplit("/", 1)[0])
    genes = job.read("universe")["ncbi_gene_id"].to_list()

    def fetch(batch: list[int]) -> object:
        time.sleep(latency)
        return layer_evidence(annotations, batch, closure)

    evidence = job.fetch(genes, fetch, batch_size=int(fetch_settings["batch_size"]))
    job.record_step(
        "annotated_genes", {"with_evidence": int((evidence["n_layer_terms"] > 0).sum())}
    )
    job.save(evidence, description=f"evidence layer {snakemake.wildcards.layer}: terms {roots}")
