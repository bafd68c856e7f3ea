"""Fetch one record per key in batches, as from a web service (here computed: no network).

`job.fetch(keys, fetch, batch_size=...)` cuts the keys into batches and calls `fetch` with
each batch: a list of keys, in order. `fetch` returns a frame (polars or pandas) with the
batch's rows; every batch has the same columns, each of one type. Each batch is committed as
soon as it returns, so after a crash the same command fetches only the batches not yet
committed. An exception raised by `fetch` fails the job with its traceback, and the batches
committed before it stay for the next run.
"""

import hashlib
import time

import polars as pl

from usher_pipeline.workflow import Job

SCHEMA = {"key": pl.String, "value": pl.Int64}


def fetch_records(keys: list[str], latency: float) -> pl.DataFrame:
    """One batch: a value in 0..999 for each key, after `latency` seconds standing in for
    the round trip to a service."""
    time.sleep(latency)
    values = [int.from_bytes(hashlib.sha256(k.encode()).digest()[:4], "big") % 1000 for k in keys]
    return pl.DataFrame({"key": keys, "value": values}, schema=SCHEMA)


with Job(snakemake) as job:
    # what to fetch comes from params (a change reruns the job); how to fetch it from the
    # config (batching and latency change nothing in the result, so they rerun nothing)
    keys = [f"{snakemake.params.prefix}{i:04d}" for i in range(int(snakemake.params.how_many))]
    how = snakemake.config["fetch"]
    latency = float(how["latency_seconds"])
    records = job.fetch(
        keys, lambda batch: fetch_records(batch, latency), batch_size=int(how["batch_size"])
    )
    job.record_data_source("records service", "computed locally, version 1")
    job.save(records, description=f"one value per key, {len(keys)} keys")
