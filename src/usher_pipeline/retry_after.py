"""The wait a server asks for in a `Retry-After` header, read one way everywhere.

RFC 9110 (section 10.2.3) gives it as a number of seconds or as an HTTP date. The batched
fetch, the source client and the download helper all honour it, each up to its own cap.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def parse_retry_after(value: object, cap: float) -> float | None:
    """Seconds to wait from a Retry-After value (seconds, as text or a number, or an HTTP
    date), between 0 and `cap`; None when there is none or it cannot be read."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        if not text:
            return None
        try:
            seconds = float(text)
        except ValueError:
            try:
                when = parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), cap)
