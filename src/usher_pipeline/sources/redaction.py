"""Secrets kept out of what is written: URLs and log lines with their values replaced."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["REDACTED", "SECRET_PARAMETER", "RedactFilter", "redact_url", "transport_loggers"]

REDACTED: Final = "REDACTED"
#: Query parameters whose values are secrets by their name alone (key, token, email, ...).
SECRET_PARAMETER: Final = re.compile(
    r"(^|[_-])(api_?key|key|token|secret|password|passwd|e?mail|signature|sig|auth|credentials?)$",
    re.IGNORECASE,
)


def redact_url(url: str, names: Iterable[str] = ()) -> str:
    """`url` with REDACTED for the values of the query parameters in `names` and of those
    whose name says they are secret (SECRET_PARAMETER), and for a password in its authority."""
    secret = set(names)
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}:{REDACTED}@{host}" if ":" in user else netloc
    if not parts.query and netloc == parts.netloc:
        return url
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    kept = [
        (name, REDACTED if name in secret or SECRET_PARAMETER.search(name) else value)
        for name, value in pairs
    ]
    query = urlencode(kept, safe=",")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


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
