"""Script helpers for Snakemake rules: `Job`, the resumable batched fetch, provenance merge."""

from usher_pipeline.steplog import StepLogError, load_steplog
from usher_pipeline.workflow.fetch import (
    FetchFailed,
    PermanentError,
    RetryPolicy,
    fetch_in_batches,
    plan_batches,
)
from usher_pipeline.workflow.job import Job, StoreSettings
from usher_pipeline.workflow.testing import mock_snakemake, run_script

__all__ = [
    "FetchFailed",
    "Job",
    "PermanentError",
    "RetryPolicy",
    "StepLogError",
    "StoreSettings",
    "fetch_in_batches",
    "load_steplog",
    "mock_snakemake",
    "plan_batches",
    "run_script",
]
