"""A real file server on 127.0.0.1 for download tests: Range, HEAD, ETag, Last-Modified.

    with FileServer() as server:
        server.put("/big.bin", data)
        url = server.url("/big.bin")
        server.throttle = 1_000_000        # bytes per second, so a kill lands mid-transfer
        server.cut_after, server.cuts = 100_000, 2   # the next 2 bodies stop after 100 kB
        server.ignore_range = True         # answer 200 with the whole file
        server.fail_next = [503, 503]      # the next 2 requests fail with these statuses
        server.requests                    # every request: its headers, status, bytes sent

The server runs in a thread of the test process; a client in another process (a Snakemake
run) is served the same way, and killing that process does not touch the server.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

SEND_BYTES = 16 * 1024  # one write of the body: the throttle's unit


@dataclass
class Served:
    """One request as the server saw it."""

    method: str
    path: str
    query: str
    range: str | None
    if_range: str | None
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 0
    bytes_sent: int = 0


@dataclass
class Hosted:
    data: bytes
    etag: str
    last_modified: str


@dataclass
class FileServer:
    """The server, its files and its misbehaviours (all settable while it runs)."""

    throttle: float | None = None  # bytes per second of every body
    cut_after: int | None = None  # stop a body after this many bytes, closing the connection
    cuts: int = 0  # how many bodies are cut
    ignore_range: bool = False
    fail_next: list[int] = field(default_factory=list)  # the next requests' statuses; 0 serves
    requests: list[Served] = field(default_factory=list)
    files: dict[str, Hosted] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    def url(self, path: str, query: str = "") -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}{path}" + (f"?{query}" if query else "")

    def put(self, path: str, data: bytes) -> None:
        """Host `data` at `path`, with a new ETag and Last-Modified."""
        with self.lock:
            stamp = formatdate(time.time() + len(self.files), usegmt=True)
            self.files[path] = Hosted(data, f'"{hashlib.sha256(data).hexdigest()[:16]}"', stamp)

    def bytes_sent(self, path: str) -> int:
        """Body bytes written for `path` over every request so far."""
        return sum(r.bytes_sent for r in self.requests if r.path == path)

    def take_cut(self) -> int | None:
        with self.lock:
            if self.cut_after is None or self.cuts <= 0:
                return None
            self.cuts -= 1
            return self.cut_after


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
            pass

        def do_HEAD(self) -> None:
            self.answer(body=False)

        def do_GET(self) -> None:
            self.answer(body=True)

        def answer(self, body: bool) -> None:
            path, _, query = self.path.partition("?")
            record = Served(
                self.command,
                path,
                query,
                self.headers.get("Range"),
                self.headers.get("If-Range"),
                dict(self.headers.items()),
            )
            server.requests.append(record)
            hosted = server.files.get(path)
            with server.lock:
                failure = (server.fail_next.pop(0) if server.fail_next else 0) or None
            if hosted is None or failure is not None:
                record.status = failure or 404
                self.send_response(record.status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data, size = hosted.data, len(hosted.data)
            start, end, status = 0, size - 1, 200
            wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", record.range or "")
            fresh = record.if_range is None or record.if_range in (
                hosted.etag,
                hosted.last_modified,
            )
            if wanted and fresh and not server.ignore_range:
                start = int(wanted[1])
                end = min(int(wanted[2]), size - 1) if wanted[2] else size - 1
                if start >= size:
                    record.status = 416
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            record.status = status
            self.send_response(status)
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("ETag", hosted.etag)
            self.send_header("Last-Modified", hosted.last_modified)
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if not body:
                return
            cut = server.take_cut()
            position = start
            began = time.monotonic()
            while position <= end:
                piece = data[position : min(position + SEND_BYTES, end + 1)]
                if cut is not None and record.bytes_sent + len(piece) > cut:
                    piece = piece[: cut - record.bytes_sent]
                try:
                    self.wfile.write(piece)
                    self.wfile.flush()
                except OSError:  # the client went away (killed)
                    break
                record.bytes_sent += len(piece)
                position += len(piece)
                if cut is not None and record.bytes_sent >= cut:
                    self.close_connection = True
                    return
                if server.throttle:
                    ahead = began + record.bytes_sent / server.throttle - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)

    return Handler
