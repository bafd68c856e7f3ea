import os
from pathlib import Path

import polars as pl

from usher_pipeline.sources import client_for
from usher_pipeline.workflow import Job

# the harness samples this process's peak RSS from /proc while it fetches
Path("fetch.pid").write_text(str(os.getpid()))

with Job(snakemake) as job, client_for(job, "loopback") as api:
    queries = int(snakemake.params.queries)
    url = str(snakemake.params.url)

    def fetch(batch: list[str]) -> pl.DataFrame:
        keys, numbers, paths = [], [], []
        for key in batch:
            for q in range(queries):
                answer = api.get_json(f"{url}/q{q}", {"id": key})
                (record,) = answer["results"]
                keys.append(record["id"])
                numbers.append(q)
                paths.append(record["path"])
        return pl.DataFrame({"key": keys, "query": numbers, "path": paths})

    genes = [f"G{i:05d}" for i in range(int(snakemake.params.genes))]
    answers = job.fetch(
        genes,
        fetch,
        batch_size=int(snakemake.params.batch_size),
        in_flight=int(snakemake.params.in_flight),
    )
    job.save(answers, description="loopback answers, one row per key and query")
