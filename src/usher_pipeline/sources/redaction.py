"""Secrets kept out of what is written: URLs and log lines with their values replaced."""

from __future__ import annotations

import logging
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["REDACTED", "RedactFilter", "redact_url", "transport_loggers"]

REDACTED: Final = "REDACTED"


def redact_url(url: str, secret_params: frozenset[str] | set[str]) -> str:
    """`url` with the value of every query parameter in `secret_params` replaced by REDACTED."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, REDACTED if k in secret_params else v) for k, v in pairs]
    query = urlencode(kept, safe=",")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


class RedactFilter(logging.Filter):
    """Replaces the secrets in the debug lines of urllib3 and requests-cache (they hold URLs)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(s in message for s in self.secrets):
            for secret in self.secrets:
                message = message.replace(secret, REDACTED)
            record.msg, record.args = message, None
        return True


def transport_loggers() -> list[logging.Logger]:
    """The loggers of urllib3 and requests-cache, whose debug lines hold request URLs.

    A filter on a logger sees only the records logged on it, so each one gets it.
    """
    names = {"urllib3", "requests_cache"}
    found = [logging.getLogger(name) for name in names]
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.split(".")[0] in names and isinstance(logger, logging.Logger):
            found.append(logger)
    return found
