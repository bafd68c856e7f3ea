"""The transfer behind `download`: one file's part on disk, its hash and the source's validators.

See `usher_pipeline.sources.download` for the protocol; this module holds the state machine
(`Transfer`), what it returns and raises, and the parsing of the headers it reads.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import requests

from usher_pipeline._io import read_json, remove_stale_temps, write_json_atomic
from usher_pipeline.errors import UsherError
from usher_pipeline.retry_after import parse_retry_after
from usher_pipeline.sources.redaction import REDACTED, SECRET_PARAMETER, redact_url

__all__ = [
    "CHUNK_BYTES",
    "PROGRESS_SECONDS",
    "REDACTED",
    "SECRET_PARAMETER",
    "ChecksumError",
    "DownloadError",
    "DownloadResult",
    "Transfer",
    "note_path",
    "part_path",
]

#: One read of the body. A connection cut mid-read loses the bytes of that read (requests
#: gathers a whole chunk before it yields it), so a chunk is small: the retry asks for them again.
CHUNK_BYTES: Final = 64 * 1024
PROGRESS_SECONDS: Final = 10.0
TRANSIENT_STATUS: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF_SECONDS: Final = 60.0


class DownloadError(UsherError, RuntimeError):
    """A download that cannot finish: a permanent HTTP error, or transient ones past the retries."""


class ChecksumError(DownloadError):
    """A downloaded file whose SHA-256 is not the expected one."""


@dataclass(frozen=True)
class DownloadResult:
    """What a download gave: for the step log and the data source record."""

    url: str  # secrets redacted
    path: str
    size: int
    sha256: str
    etag: str | None
    last_modified: str | None
    resumed_from: int  # bytes already on disk when this call started
    bytes_received: int  # bytes this call received (restarts included)
    restarts: int  # times the part was dropped because the file changed or Range was ignored
    retries: int  # transient failures retried
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON values."""
        return asdict(self)


def part_path(target: Path) -> Path:
    """Where the bytes of `target` accumulate until it is whole."""
    return target.with_name(target.name + ".part")


def note_path(target: Path) -> Path:
    """The JSON note beside the part: URL, validators, total size, bytes so far."""
    return target.with_name(target.name + ".part.json")


class _Transient(Exception):
    """A failure worth another attempt, after `wait` seconds when the server said so."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


class Transfer:
    """One download's state: the part on disk, its hash so far and the source's validators."""

    def __init__(
        self,
        url: str,
        target: Path,
        *,
        timeout: float,
        max_retries: int,
        headers: dict[str, str],
        chunk_bytes: int,
        progress: Callable[[str], None] | None,
        progress_seconds: float,
        session: requests.Session | None,
        secrets: tuple[str, ...],
    ) -> None:
        self.url = url
        self.shown = redact_url(url, secrets)
        self.secret_values = [
            value
            for name, value in parse_qsl(urlsplit(url).query)
            if value and (name in secrets or SECRET_PARAMETER.search(name))
        ]
        self.url_hash = hashlib.sha256(url.encode()).hexdigest()
        self.target = target
        self.part = part_path(target)
        self.note = note_path(target)
        self.timeout = timeout
        self.max_retries = max_retries
        self.headers = headers
        self.chunk_bytes = chunk_bytes
        self.progress = progress
        self.progress_seconds = progress_seconds
        self.session = session
        self.hasher = hashlib.sha256()
        self.offset = 0
        self.total: int | None = None
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.received = 0
        self.restarts = 0
        self.retries = 0
        self.t0 = time.monotonic()
        self.last_report = self.t0

    # -- the part on disk ------------------------------------------------------------------

    def resume_state(self) -> None:
        """Take over the part of an earlier call for the same URL, or start afresh."""
        remove_stale_temps(self.note)
        note: Any = None
        if self.note.exists():
            try:
                note = read_json(self.note)
            except (OSError, ValueError):
                note = None
        if (
            not self.part.exists()
            or not isinstance(note, dict)
            or note.get("url_sha256") != self.url_hash
            or not (note.get("etag") or note.get("last_modified"))
        ):
            # another URL, no note, or no validator to tell whether the file changed since
            self.discard()
            return
        self.etag, self.last_modified = note.get("etag"), note.get("last_modified")
        self.total = note.get("total")
        with open(self.part, "rb") as handle:
            while block := handle.read(1 << 20):
                self.hasher.update(block)
        self.offset = self.part.stat().st_size

    def discard(self) -> None:
        """Drop the part and start from byte 0."""
        self.part.parent.mkdir(parents=True, exist_ok=True)
        self.part.write_bytes(b"")
        self.hasher = hashlib.sha256()
        self.offset = 0
        self.total = None

    def write_note(self) -> None:
        write_json_atomic(
            self.note,
            {
                "url": self.shown,
                "url_sha256": self.url_hash,
                "etag": self.etag,
                "last_modified": self.last_modified,
                "total": self.total,
                "bytes": self.offset,
            },
        )

    def remove_part(self) -> None:
        self.part.unlink(missing_ok=True)
        self.note.unlink(missing_ok=True)

    # -- the transfer ----------------------------------------------------------------------

    def run(self, expected: str | None) -> DownloadResult:
        self.resume_state()
        resumed_from = self.offset
        if resumed_from:
            self.say(f"resuming at {_size(resumed_from)} from {self.part}")
        session = self.session or requests.Session()
        failures = 0
        try:
            while True:
                before = self.offset
                try:
                    if self.attempt(session):
                        break
                except _Transient as problem:
                    failures = 0 if self.offset > before else failures + 1
                    if failures >= self.max_retries:
                        raise DownloadError(
                            f"download of {self.shown} failed {failures} times in a row at byte "
                            f"{self.offset} (last: {problem}): rerun to resume from there, or "
                            "raise api.max_retries"
                        ) from None
                    self.retries += 1
                    wait = problem.wait
                    if wait is None:
                        wait = min(MAX_BACKOFF_SECONDS, 0.5 * 2**failures) * random.uniform(
                            0.5, 1.0
                        )
                    self.say(f"{problem}; retrying in {wait:.1f} s from byte {self.offset}")
                    time.sleep(wait)
        finally:
            if self.session is None:
                session.close()
        return self.finish(expected, resumed_from)

    def attempt(self, session: requests.Session) -> bool:
        """One request; True when the part is whole. Raises `_Transient` to be retried."""
        # the bytes as stored: a Range counts them, and a decoded body would not match it
        headers = {"Accept-Encoding": "identity", **self.headers}
        strong = self.etag if self.etag and not self.etag.startswith("W/") else None
        if self.offset and not (strong or self.last_modified):
            self.say("the source gives no ETag or Last-Modified to resume against: restarting")
            self.restart()
        if self.offset:
            headers["Range"] = f"bytes={self.offset}-"
            headers["If-Range"] = strong or str(self.last_modified)
        try:
            with session.get(self.url, headers=headers, stream=True, timeout=self.timeout) as reply:
                return self.receive(reply)
        except (requests.ConnectionError, requests.Timeout) as error:
            raise _Transient(f"{type(error).__name__} ({self.clean(error)})") from None
        except requests.exceptions.ChunkedEncodingError as error:
            raise _Transient(f"connection cut mid-body ({self.clean(error)})") from None

    def receive(self, reply: requests.Response) -> bool:
        status = reply.status_code
        if status == 416 and self.offset:
            whole = _content_range_total(reply.headers.get("Content-Range"))
            if whole is not None and whole == self.offset:
                self.total = whole
                return True
            self.say(f"the server cannot serve from byte {self.offset} (416): restarting")
            self.restart()
            raise _Transient("416 for the resumed range", wait=0.0)
        if status in TRANSIENT_STATUS:
            raise _Transient(
                f"HTTP {status}",
                wait=parse_retry_after(reply.headers.get("Retry-After"), MAX_BACKOFF_SECONDS),
            )
        if status not in (200, 206):
            raise DownloadError(
                f"download of {self.shown} failed with HTTP {status} {reply.reason}: check the "
                "URL and its access"
            )
        etag, modified = reply.headers.get("ETag"), reply.headers.get("Last-Modified")
        if status == 206:
            start, whole = _content_range(reply.headers.get("Content-Range"))
            changed = (self.etag and etag and etag != self.etag) or (
                self.total is not None and whole is not None and whole != self.total
            )
            if start != self.offset or changed:
                self.say("the server sent another range or a changed file: restarting")
                self.restart()
                raise _Transient("a range that does not continue the part", wait=0.0)
            self.total = whole
        else:
            if self.offset:
                changed = bool(self.etag and etag and etag != self.etag)
                why = "the file changed on the server" if changed else "the server sent it whole"
                self.say(f"{why}: restarting from byte 0")
                self.restart()
            length = reply.headers.get("Content-Length")
            self.total = int(length) if length and length.isdigit() else None
        self.etag, self.last_modified = etag, modified
        self.write_note()
        with open(self.part, "ab") as out:
            for chunk in reply.iter_content(chunk_size=self.chunk_bytes):
                out.write(chunk)
                self.hasher.update(chunk)
                self.offset += len(chunk)
                self.received += len(chunk)
                self.report(out)
        if self.total is not None and self.offset != self.total:
            raise _Transient(f"the body ended at byte {self.offset} of {self.total}")
        return True

    def restart(self) -> None:
        self.restarts += 1
        self.etag = self.last_modified = None
        self.discard()

    def report(self, out: Any) -> None:
        """Every `progress_seconds`: a progress line, and the note's byte count."""
        now = time.monotonic()
        if now - self.last_report < self.progress_seconds:
            return
        self.last_report = now
        out.flush()
        self.write_note()
        rate = self.received / max(now - self.t0, 1e-9)
        line = f"{_size(self.offset)}"
        if self.total:
            left = (self.total - self.offset) / rate if rate > 0 else float("inf")
            line += (
                f" of {_size(self.total)} ({100 * self.offset / self.total:.0f}%), "
                f"{_size(rate)}/s, ETA {_duration(left)}"
            )
        else:
            line += f", {_size(rate)}/s"
        self.say(line)

    def finish(self, expected: str | None, resumed_from: int) -> DownloadResult:
        actual = self.hasher.hexdigest()
        if expected is not None and actual != expected:
            self.remove_part()
            raise ChecksumError(
                f"download of {self.shown} has SHA-256 {actual}, expected {expected}: the part "
                "was removed; check the expected checksum, then rerun"
            )
        with open(self.part, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(self.part, self.target)
        self.note.unlink(missing_ok=True)
        seconds = time.monotonic() - self.t0
        self.say(
            f"done: {_size(self.offset)} in {_duration(seconds)}"
            + (f", resumed from {_size(resumed_from)}" if resumed_from else "")
            + f"; SHA-256 {actual}"
        )
        return DownloadResult(
            url=self.shown,
            path=str(self.target),
            size=self.offset,
            sha256=actual,
            etag=self.etag,
            last_modified=self.last_modified,
            resumed_from=resumed_from,
            bytes_received=self.received,
            restarts=self.restarts,
            retries=self.retries,
            seconds=round(seconds, 3),
        )

    def clean(self, error: BaseException) -> str:
        """The first line of an error, with the URL's secrets replaced by REDACTED."""
        text = (str(error).splitlines() or [type(error).__name__])[0][:200]
        for value in self.secret_values:
            text = text.replace(value, REDACTED)
        return text

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(f"download {self.target.name}: {message}")


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of `Content-Range: bytes A-B/T`; None where absent or `*`."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", header or "")
    if match is None:
        return None, None
    return int(match[1]), int(match[2]) if match[2] != "*" else None


def _content_range_total(header: str | None) -> int | None:
    """The total of `Content-Range: bytes */T` (a 416's), or None."""
    match = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", header or "")
    return int(match[1]) if match else None


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
