"""A real HTTP API on 127.0.0.1 that misbehaves on demand, for the tests of the source client.

`serve_loopback_api()` starts a `ThreadingHTTPServer` on a free port in a daemon thread and
stops it when its block ends; the `loopback_api` fixture yields one per test (a test module
makes it available with `from loopback_api import loopback_api_fixture`). Child processes reach
it by `api.url(...)`: the server lives in the test's process, so its counts see every process's
requests.

What it answers (`GET` on any path):

- `?ids=1,2,3` (or `?id=1`): JSON `{"results": [{"id": "1", "path": "/genes", ...}, ...]}`, one
  record per key, in the order asked; `api.records[path][key]` adds fields to a key's record.
- `api.files[path] = bytes`: the bytes as a file, with `Accept-Ranges: bytes`; a
  `Range: bytes=N-` or `bytes=N-M` request gets `206` and those bytes only (`api.ranges`
  records each request's Range header, or None).
- `api.headers[path] = {...}`: extra response headers (e.g. `ETag`, `Last-Modified`, a release).
- anything else: JSON `{"path": ..., "query": {...}}`.

Knobs (set them between requests; all are thread-safe to read from the handler):

- `api.schedule(path, *faults)`: the next requests to `path` get these faults in order, one
  each, then it behaves again. `api.always(path, fault)` gives every request that fault.
  Faults are `Fault` values or strings: `"429"` (Retry-After 1), `"429:3"` (Retry-After 3),
  `"429:date"` (Retry-After as an HTTP date 1 s ahead), `"500"`, `"503"`, `"503:2"`, `"404"`,
  `"400"`, `"slow:2.5"` (answer after 2.5 s), `"reset"` (send half the body of the
  response it would have sent, then reset the connection).
- `api.rate_limit_per_second = N`: a server-wide limit; a request when N requests were answered
  in the last second gets `429` with `Retry-After: 1` (counted in `api.rejected`).
- `api.counts[path]`: requests received per path (every attempt, refused or not);
  `api.times`: the wall time each request arrived (`time.time()`), in order;
  `api.requests`: `(path, raw_query, status)` of each, in order; `api.total()`: all requests.
- `api.reset()`: forget counts, faults and the limit (records, files and headers stay).
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest


@dataclass(frozen=True)
class Fault:
    """One misbehaviour: a status with an optional Retry-After, a delay, or a reset mid-body."""

    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    reset: bool = False

    @classmethod
    def parse(cls, text: str) -> Fault:
        kind, _, arg = text.partition(":")
        if kind == "slow":
            return cls(delay=float(arg or "1"))
        if kind == "reset":
            return cls(reset=True)
        status = int(kind)
        if status in (429, 503) and arg:
            if arg == "date":
                return cls(status=status, retry_after=formatdate(time.time() + 1, usegmt=True))
            return cls(status=status, retry_after=arg)
        if status == 429:
            return cls(status=status, retry_after="1")
        return cls(status=status)


class LoopbackAPI:
    """The server's state and knobs; see the module docstring."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: dict[str, dict[str, dict[str, Any]]] = {}
        self.files: dict[str, bytes] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.base_url = ""
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.counts: Counter[str] = Counter()
            self.requests: list[tuple[str, str, int]] = []
            self.times: list[float] = []
            self.ranges: list[str | None] = []
            self.rejected = 0
            self.rate_limit_per_second: float | None = None
            self._scheduled: dict[str, deque[Fault]] = {}
            self._always: dict[str, Fault] = {}
            self._answered: deque[float] = deque()

    def url(self, path: str = "/") -> str:
        return self.base_url + path

    def schedule(self, path: str, *faults: Fault | str) -> None:
        with self.lock:
            queue = self._scheduled.setdefault(path, deque())
            queue.extend(f if isinstance(f, Fault) else Fault.parse(f) for f in faults)

    def always(self, path: str, fault: Fault | str | None) -> None:
        with self.lock:
            if fault is None:
                self._always.pop(path, None)
            else:
                self._always[path] = fault if isinstance(fault, Fault) else Fault.parse(fault)

    def total(self) -> int:
        with self.lock:
            return sum(self.counts.values())

    def take_fault(self, path: str) -> Fault | None:
        """Count a request to `path` and say how it misbehaves (None: it behaves)."""
        with self.lock:
            self.counts[path] += 1
            self.times.append(time.time())
            queue = self._scheduled.get(path)
            if queue:
                return queue.popleft()
            if path in self._always:
                return self._always[path]
            limit = self.rate_limit_per_second
            if limit is not None:
                now = time.monotonic()
                while self._answered and self._answered[0] <= now - 1.0:
                    self._answered.popleft()
                if len(self._answered) >= limit:
                    self.rejected += 1
                    return Fault(status=429, retry_after="1")
                self._answered.append(now)
            return None

    def note(self, path: str, query: str, status: int, byte_range: str | None) -> None:
        with self.lock:
            self.requests.append((path, query, status))
            self.ranges.append(byte_range)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes: with Nagle's algorithm on, the body waits for the
    # client's delayed ACK (about 40 ms) on every kept-alive request
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """Quiet: the tests read the counts, not a log."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        api = self.server.api
        parts = urlsplit(self.path)
        path = parts.path
        fault = api.take_fault(path)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.status is not None:
            body = json.dumps({"error": f"status {fault.status}"}).encode()
            extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            self._send(fault.status, body, "application/json", extra, path, parts.query)
            return
        status, body, kind, extra = self._answer(api, path, parts.query)
        extra = {**api.headers.get(path, {}), **extra}
        if fault is not None and fault.reset:
            self._send_half_then_reset(status, body, kind, extra, path, parts.query)
            return
        self._send(status, body, kind, extra, path, parts.query)

    def _answer(
        self, api: LoopbackAPI, path: str, query: str
    ) -> tuple[int, bytes, str, dict[str, str]]:
        if path in api.files:
            data = api.files[path]
            wanted = self.headers.get("Range")
            extra = {"Accept-Ranges": "bytes"}
            if wanted and wanted.startswith("bytes="):
                first_text, _, last_text = wanted[len("bytes=") :].partition("-")
                first = int(first_text)
                last = int(last_text) if last_text else len(data) - 1
                if first >= len(data):
                    return 416, b"", "application/octet-stream", {"Content-Range": f"*/{len(data)}"}
                extra["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
                return 206, data[first : last + 1], "application/octet-stream", extra
            return 200, data, "application/octet-stream", extra
        params = parse_qs(query)
        keys = [k for v in params.get("ids", []) + params.get("id", []) for k in v.split(",") if k]
        if keys:
            known = api.records.get(path, {})
            results = [{"id": k, "path": path, **known.get(k, {})} for k in keys]
            return 200, json.dumps({"results": results}).encode(), "application/json", {}
        echo = {"path": path, "query": {k: v[-1] for k, v in params.items()}}
        return 200, json.dumps(echo).encode(), "application/json", {}

    def _head(self, status: int, length: int, kind: str, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(length))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()

    def _send(
        self,
        status: int,
        body: bytes,
        kind: str,
        extra: dict[str, str],
        path: str,
        query: str,
    ) -> None:
        self.server.api.note(path, query, status, self.headers.get("Range"))
        self._head(status, len(body), kind, extra)
        self.wfile.write(body)

    def _send_half_then_reset(
        self,
        status: int,
        body: bytes,
        kind: str,
        extra: dict[str, str],
        path: str,
        query: str,
    ) -> None:
        self.server.api.note(path, query, -1, self.headers.get("Range"))
        self._head(status, max(len(body), 2), kind, extra)
        self.wfile.write(body[: max(len(body) // 2, 1)])
        self.wfile.flush()
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN: a reset mid-body
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: LoopbackAPI

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about clients that hung up (a timeout on their side); loud about the rest."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextmanager
def serve_loopback_api() -> Iterator[LoopbackAPI]:
    """A `LoopbackAPI` answering on 127.0.0.1 at a free port for the block."""
    api = LoopbackAPI()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.api = api
    host, port = server.server_address[:2]
    api.base_url = f"http://{host!s}:{port}"
    thread = threading.Thread(target=server.serve_forever, name="loopback-api", daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(name="loopback_api")
def loopback_api_fixture() -> Iterator[LoopbackAPI]:
    """The fixture `loopback_api`: a misbehaving API on loopback for one test.

    A test module makes it available with `from loopback_api import loopback_api_fixture`.
    """
    with serve_loopback_api() as api:
        yield api
