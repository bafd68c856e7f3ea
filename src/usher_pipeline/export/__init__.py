"""Publish a run's provenance: W3C PROV-JSON, Workflow Run RO-Crate, the report's summary."""

from usher_pipeline.export.run import RunRecordError, RunRecords, load_run

__all__ = ["RunRecordError", "RunRecords", "load_run"]
