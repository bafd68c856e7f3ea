"""One evidence layer: per gene, the HPO terms it carries inside the layer's term closure.

Genes are looked up in batches through the resumable fetch, as a real API would be: with
`demo.fetch.api_url` null, in the release files with a configurable latency per batch standing
in for the network; with a URL, from an HTTP API serving the same annotations, through the
source client `hpo` (retries, pacing, cache, and the release the API names).
"""

import time

from usher_pipeline.demo import (
    RELEASE_HEADER,
    DemoDataError,
    annotations_from_answer,
    descendant_closure,
    genes_request,
    layer_evidence,
    read_annotations,
)
from usher_pipeline.sources import client_for
from usher_pipeline.workflow import Job, PermanentError

with Job(snakemake) as job:
    fetch_settings = snakemake.config["demo"]["fetch"]
    batch_size = int(fetch_settings["batch_size"])
    api_url = fetch_settings.get("api_url")
    roots = snakemake.params.layer["terms"]
    closure = descendant_closure(job.read("terms"), roots)
    job.record_step("term_closure", {"roots": roots, "terms": len(closure)})
    genes = job.read("universe")["ncbi_gene_id"].to_list()

    if api_url is None:
        latency = float(fetch_settings["batch_latency_seconds"])
        annotations = read_annotations(snakemake.input.annotations.rsplit("/", 1)[0])

        def fetch(batch: list[int]) -> object:
            time.sleep(latency)
            return layer_evidence(annotations, batch, closure)

        evidence = job.fetch(genes, fetch, batch_size=batch_size)
    else:
        with client_for(job, "hpo", release_header=RELEASE_HEADER) as client:

            def fetch_api(batch: list[int]) -> object:
                url, query = genes_request(api_url, batch)
                try:
                    found = annotations_from_answer(client.get_json(url, query), batch)
                except DemoDataError as exc:  # a malformed answer comes back the same
                    raise PermanentError(str(exc)) from exc
                return layer_evidence(found, batch, closure)

            evidence = job.fetch(genes, fetch_api, batch_size=batch_size)
    job.record_step(
        "annotated_genes", {"with_evidence": int((evidence["n_layer_terms"] > 0).sum())}
    )
    job.save(evidence, description=f"evidence layer {snakemake.wildcards.layer}: terms {roots}")
