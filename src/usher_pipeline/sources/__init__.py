"""Real sources: an HTTP client for APIs, paced to a rate limit shared across processes.

See docs/sources.md.
"""

from __future__ import annotations

from usher_pipeline.sources.client import (
    REDACTED,
    SourceClient,
    SourceRequestError,
    SourceSettingsError,
    client_for,
    redact_url,
)
from usher_pipeline.sources.download import download
from usher_pipeline.sources.pacing import SharedPacer

__all__ = [
    "REDACTED",
    "SharedPacer",
    "SourceClient",
    "SourceRequestError",
    "SourceSettingsError",
    "client_for",
    "download",
    "redact_url",
]
