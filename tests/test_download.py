"""Bulk downloads against a real file server on 127.0.0.1 (tests/loopback_files.py).

The helper is called directly for each behaviour of the protocol (resume, If-Range, a server
that ignores Range, 416, a cut connection, a checksum mismatch); then the library's download
rule runs in a real Snakemake workflow, whose whole process group is SIGKILLed mid-transfer,
and the rerun asks the server for the remaining bytes only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from loopback_files import FileServer

from usher_pipeline.sources.download import (
    CHUNK_BYTES,
    ChecksumError,
    DownloadDeclarationError,
    DownloadError,
    Downloads,
    download,
    note_path,
    part_path,
)
from usher_pipeline.sources.redaction import redact_url
from usher_pipeline.workflow.layout import Layout
from usher_pipeline.workflow.testing import mock_snakemake, run_script

SNAKEMAKE = Path(sys.executable).with_name("snakemake")
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "download.py"
TIMEOUT = 300


def payload(size: int, seed: int = 0) -> bytes:
    """`size` bytes that differ from offset to offset (a splice at the wrong byte shows)."""
    blocks = b"".join(
        hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(size // 32 + 1)
    )
    return blocks[:size]


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as running:
        yield running


def test_full_download_checks_hash_and_renames(server: FileServer, tmp_path: Path) -> None:
    data = payload(700_000)
    server.put("/a.bin", data)
    target = tmp_path / "a.bin"
    lines: list[str] = []
    result = download(
        server.url("/a.bin"),
        target,
        sha256=hashlib.sha256(data).hexdigest(),
        progress=lines.append,
        progress_seconds=0.0,
    )
    assert target.read_bytes() == data
    assert not part_path(target).exists() and not note_path(target).exists()
    assert result.size == len(data) and result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.etag == server.files["/a.bin"].etag
    assert result.last_modified == server.files["/a.bin"].last_modified
    assert result.resumed_from == 0 and result.bytes_received == len(data)
    assert [r.range for r in server.requests] == [None]
    assert any("%)" in line and "/s, ETA" in line for line in lines), lines


def kept(cut: int) -> int:
    """The bytes a part keeps of a body cut after `cut` bytes: whole chunks only."""
    return cut // CHUNK_BYTES * CHUNK_BYTES


def interrupt(server: FileServer, cut: int) -> None:
    """The next body stops after `cut` bytes and the retry finds the server unavailable, so a
    download with max_retries=1 fails, leaving its part."""
    server.cut_after, server.cuts = cut, 1
    server.fail_next = [0, 503]  # 0: served


def test_resume_asks_for_the_remaining_bytes_only(server: FileServer, tmp_path: Path) -> None:
    data = payload(500_000)
    server.put("/r.bin", data)
    target = tmp_path / "r.bin"
    cut = 200_000
    interrupt(server, cut)
    with pytest.raises(DownloadError, match=f"failed 1 times in a row at byte {kept(cut)} "):
        download(server.url("/r.bin"), target, max_retries=1)
    assert part_path(target).stat().st_size == kept(cut) > 0
    note = json.loads(note_path(target).read_text())
    assert note["etag"] == server.files["/r.bin"].etag and note["total"] == len(data)

    result = download(server.url("/r.bin"), target, sha256=hashlib.sha256(data).hexdigest())
    assert target.read_bytes() == data
    assert result.resumed_from == kept(cut)
    assert result.bytes_received == len(data) - kept(cut)
    last = server.requests[-1]
    assert (last.range, last.if_range, last.status) == (
        f"bytes={kept(cut)}-",
        server.files["/r.bin"].etag,
        206,
    )
    assert [r.status for r in server.requests] == [200, 503, 206]
    assert server.bytes_sent("/r.bin") == cut + len(data) - kept(cut)


def test_a_cut_connection_resumes_within_one_call(server: FileServer, tmp_path: Path) -> None:
    data = payload(400_000)
    server.put("/c.bin", data)
    cut = 90_000
    server.cut_after, server.cuts = cut, 3
    result = download(server.url("/c.bin"), tmp_path / "c.bin", max_retries=2)
    assert (tmp_path / "c.bin").read_bytes() == data
    assert result.retries == 3 and result.resumed_from == 0
    starts = [0, kept(cut), 2 * kept(cut), 3 * kept(cut)]
    assert [r.range for r in server.requests] == [None] + [f"bytes={s}-" for s in starts[1:]]
    assert server.bytes_sent("/c.bin") == 3 * cut + len(data) - starts[-1]


def test_a_changed_file_restarts_from_zero(server: FileServer, tmp_path: Path) -> None:
    server.put("/e.bin", payload(300_000, seed=1))
    target = tmp_path / "e.bin"
    interrupt(server, 100_000)
    with pytest.raises(DownloadError):
        download(server.url("/e.bin"), target, max_retries=1)
    old_etag = server.files["/e.bin"].etag
    new = payload(350_000, seed=2)
    server.put("/e.bin", new)
    result = download(server.url("/e.bin"), target)
    assert target.read_bytes() == new
    assert result.restarts == 1 and result.etag == server.files["/e.bin"].etag != old_etag
    last = server.requests[-1]
    # the If-Range named the old ETag, so the server sent the new file whole
    assert (last.range, last.if_range, last.status) == (f"bytes={kept(100_000)}-", old_etag, 200)


def test_a_server_that_ignores_range_restarts(server: FileServer, tmp_path: Path) -> None:
    data = payload(250_000)
    server.put("/i.bin", data)
    target = tmp_path / "i.bin"
    interrupt(server, 100_000)
    with pytest.raises(DownloadError):
        download(server.url("/i.bin"), target, max_retries=1)
    server.ignore_range = True
    result = download(server.url("/i.bin"), target)
    assert target.read_bytes() == data and result.restarts == 1
    assert server.requests[-1].status == 200


def test_a_whole_part_completes_on_416(server: FileServer, tmp_path: Path) -> None:
    data = payload(120_000)
    server.put("/w.bin", data)
    target = tmp_path / "w.bin"
    part_path(target).write_bytes(data)
    note_path(target).write_text(
        json.dumps(
            {
                "url_sha256": hashlib.sha256(server.url("/w.bin").encode()).hexdigest(),
                "etag": server.files["/w.bin"].etag,
                "last_modified": None,
                "total": len(data),
            }
        )
    )
    result = download(server.url("/w.bin"), target, sha256=hashlib.sha256(data).hexdigest())
    assert target.read_bytes() == data and result.bytes_received == 0
    assert [r.status for r in server.requests] == [416]


def test_a_checksum_mismatch_is_one_line_and_removes_the_part(
    server: FileServer, tmp_path: Path
) -> None:
    data = payload(100_000)
    server.put("/m.bin", data)
    target = tmp_path / "m.bin"
    wrong = "0" * 64
    url = server.url("/m.bin", "api_key=hunter2&release=4")
    with pytest.raises(ChecksumError) as raised:
        download(url, target, sha256=wrong)
    message = str(raised.value)
    assert "\n" not in message
    assert f"{wrong}" in message and hashlib.sha256(data).hexdigest() in message
    assert "hunter2" not in message and "api_key=REDACTED&release=4" in message
    assert not target.exists() and not part_path(target).exists()
    assert not note_path(target).exists()


def test_a_permanent_error_names_the_url(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"HTTP 404 .*: check the URL") as raised:
        download(server.url("/missing.bin", "token=s3cret"), tmp_path / "x.bin")
    assert "s3cret" not in str(raised.value)
    assert len(server.requests) == 1


def test_redact_url() -> None:
    url = "https://u:pw@example.org/f.tsv?email=a@b.org&db=pubmed&API_KEY=k&tool=x"
    assert redact_url(url) == (
        "https://u:REDACTED@example.org/f.tsv?email=REDACTED&db=pubmed&API_KEY=REDACTED&tool=x"
    )


# -- the library's rule in a real Snakemake run ----------------------------------------------

SNAKEFILE = """\
from usher_pipeline import library_path


include: library_path("library.smk")
include: library_path("download.smk")


BIG = usher_download(
    "big.bin", url=config["url"], sha256=config.get("sha256"), source="files"
)


include: library_path("provenance.smk")


rule all:
    default_target: True
    input:
        USHER.run_record,
        USHER.sidecars(),
        USHER.products(),
        USHER.steplogs(),
"""
SECRET = "hunter2-in-the-environment"
SIZE = 4_000_000


class DownloadFlow:
    """A workflow of one declared download, run in its own process group."""

    def __init__(self, root: Path, server: FileServer, sha256: str) -> None:
        self.root = root
        self.snakefile = root / "Snakefile"
        self.snakefile.write_text(SNAKEFILE)
        (root / "config.yaml").write_text(
            json.dumps(
                {
                    "url": server.url("/big.bin", "release=4"),
                    "sha256": sha256,
                    "api": {"sources": {"files": {"secrets": {"api_key": "FILES_KEY"}}}},
                }
            )
        )
        self.target = root / "data" / "downloads" / "big.bin"
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("SNAKEMAKE_", "USHER_"))
        }
        self.env.update(XDG_CONFIG_HOME=str(root / "xdg"), FILES_KEY=SECRET)

    def command(self, *extra: str) -> list[str]:
        return [
            str(SNAKEMAKE),
            "--snakefile",
            str(self.snakefile),
            "--directory",
            str(self.root),
            "--configfile",
            str(self.root / "config.yaml"),
            "--cores",
            "1",
            *extra,
        ]

    def run(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*extra),
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.root,
            timeout=TIMEOUT,
        )

    def kill_at(self, share: float) -> None:
        """SIGKILL the whole run once the part holds `share` of the file."""
        process = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self.env,
            cwd=self.root,
            start_new_session=True,
        )
        part = part_path(self.target)
        deadline = time.monotonic() + TIMEOUT
        while not (part.exists() and part.stat().st_size >= share * SIZE):
            assert process.poll() is None, "the run ended before the kill"
            assert time.monotonic() < deadline, "the download never got that far"
            time.sleep(0.005)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_rule_killed_mid_transfer_resumes_with_the_remaining_bytes(
    server: FileServer, tmp_path: Path
) -> None:
    data = payload(SIZE, seed=3)
    server.put("/big.bin", data)
    flow = DownloadFlow(tmp_path, server, hashlib.sha256(data).hexdigest())
    lint = flow.run("--lint")
    assert lint.returncode == 0, lint.stdout + lint.stderr

    server.throttle = 1_500_000  # about 2.7 s for the whole file: the kill lands mid-transfer
    flow.kill_at(0.5)
    assert not flow.target.exists()
    kept_bytes = part_path(flow.target).stat().st_size
    assert SIZE * 0.5 <= kept_bytes < SIZE

    server.throttle = None
    done = flow.run()
    assert done.returncode == 0, done.stdout + done.stderr
    assert flow.target.read_bytes() == data
    assert not part_path(flow.target).exists() and not note_path(flow.target).exists()
    gets = [r for r in server.requests if r.method == "GET"]
    assert len(gets) == 2
    assert gets[1].range == f"bytes={kept_bytes}-" and gets[1].status == 206
    # only the remaining bytes came again: what was in flight at the kill is at most a chunk
    assert server.bytes_sent("/big.bin") <= SIZE * 1.05 + CHUNK_BYTES
    # the secret was sent, from the environment, and is written nowhere
    assert all(f"api_key={SECRET}" in r.query for r in gets)
    for path in tmp_path.rglob("*"):
        if path.is_file() and path != flow.target:
            assert SECRET.encode() not in path.read_bytes(), path

    steplog = json.loads((tmp_path / "results/steplogs/download_big.bin.json").read_text())
    (step,) = [s for s in steplog["steps"] if s["step_name"] == "download"]
    details = step["details"]
    assert details["resumed_from"] == kept_bytes
    assert details["bytes_received"] == SIZE - kept_bytes
    assert details["url"] == server.url("/big.bin", "release=4&api_key=REDACTED")
    assert details["etag"] == server.files["/big.bin"].etag
    assert details["last_modified"] == server.files["/big.bin"].last_modified
    (entry,) = [o for o in steplog["outputs"] if o["name"] == "file"]
    assert (entry["sha256"], entry["size"]) == (hashlib.sha256(data).hexdigest(), SIZE)
    assert steplog["data_sources"] == {"files": server.files["/big.bin"].etag}
    sidecar = json.loads((tmp_path / "data/downloads/big.provenance.json").read_text())
    assert sidecar["output"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert sidecar["data_source_versions"] == {"files": server.files["/big.bin"].etag}
    log = (tmp_path / "logs/usher_download/big.bin.log").read_text()
    assert "resuming at" in log and "done:" in log


def test_rule_with_a_wrong_checksum_fails_in_one_line(server: FileServer, tmp_path: Path) -> None:
    data = payload(200_000, seed=4)
    server.put("/big.bin", data)
    flow = DownloadFlow(tmp_path, server, "ab" * 32)
    failed = flow.run()
    assert failed.returncode != 0
    actual = hashlib.sha256(data).hexdigest()
    lines = [line for line in failed.stderr.splitlines() if "ab" * 32 in line]
    assert lines and all(
        actual in line and "/big.bin?release=4&api_key=REDACTED" in line for line in lines
    ), failed.stderr
    assert "Traceback" not in failed.stderr
    assert not flow.target.exists() and not part_path(flow.target).exists()
    assert SECRET not in failed.stdout + failed.stderr


@pytest.mark.parametrize(
    ("filename", "url", "sha256", "expected"),
    [
        ("a/b.tsv", "https://x.org/b.tsv", None, "'a/b.tsv' is not a plain file name"),
        ("b.provenance.json", "https://x.org/b", None, "not a plain file name"),
        ("b.tsv", "ftp://x.org/b.tsv", None, "give an http or https URL"),
        ("b.tsv", "https://x.org/b.tsv?api_key=k", None, "holds the secret api_key"),
        ("b.tsv", "https://x.org/b.tsv", "abc", "give 64 hexadecimal digits"),
        ("a.tsv", "https://x.org/a.tsv", None, "declared twice"),
        ("b.tsv", "https://x.org/b.tsv", None, "name it as under api.sources"),
        ("a.csv", "https://x.org/a.csv", None, "would share the sidecar"),
    ],
)
def test_a_bad_declaration_is_one_line(
    filename: str, url: str, sha256: str | None, expected: str
) -> None:
    downloads = Downloads({}, Layout(), "data/downloads")
    assert downloads.declare("a.tsv", "https://x.org/a.tsv") == "data/downloads/a.tsv"
    source = "GnomAD" if "api.sources" in expected else None
    with pytest.raises(DownloadDeclarationError, match=re.escape(expected)) as raised:
        downloads.declare(filename, url, sha256, source=source)
    assert "\n" not in str(raised.value)
    assert list(downloads.declared) == ["a.tsv"]


def test_a_declaration_registers_the_file_with_its_step_log() -> None:
    layout = Layout()
    downloads = Downloads({}, layout, "data/downloads")
    path = downloads.declare(
        "c.tsv.gz", "https://x.org/c.tsv.gz", "AB" * 32, source="hpa", version=23
    )
    assert layout.files == {path: "download_c.tsv.gz"}
    assert downloads.declared["c.tsv.gz"] == {
        "url": "https://x.org/c.tsv.gz",
        "sha256": "ab" * 32,
        "source": "hpa",
        "version": "23",
    }
    assert downloads.param("source")(type("W", (), {"download": "c.tsv.gz"})()) == "hpa"
    with pytest.raises(DownloadDeclarationError, match="is not a declared download"):
        downloads.param("url")(type("W", (), {"download": "d.tsv"})())


def test_the_rule_script_names_a_missing_secret_variable(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.put("/s.bin", payload(1000))
    monkeypatch.delenv("FILES_KEY", raising=False)
    smk = mock_snakemake(
        "usher_download",
        output={"file": tmp_path / "s.bin", "steplog": tmp_path / "s.json"},
        params={"url": server.url("/s.bin"), "sha256": None, "source": "files"},
        config={"api": {"sources": {"files": {"secrets": {"api_key": "FILES_KEY"}}}}},
        log=[tmp_path / "s.log"],
    )
    with pytest.raises(SystemExit) as raised:
        run_script(SCRIPT, smk)
    assert str(raised.value) == (
        f"rule usher_download: download of {server.url('/s.bin')} needs the environment "
        "variable FILES_KEY for its query parameter api_key (api.sources.files.secrets): set it"
    )
    assert server.requests == [] and not (tmp_path / "s.bin").exists()


def test_the_rule_script_records_the_download(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(90_000, seed=5)
    server.put("/t.bin", data)
    monkeypatch.setenv("FILES_KEY", SECRET)
    monkeypatch.setenv("FILES_TOKEN", "header-" + SECRET)
    files = {"secrets": {"api_key": "FILES_KEY"}, "secret_headers": {"X-Token": "FILES_TOKEN"}}
    smk = mock_snakemake(
        "usher_download",
        output={"file": tmp_path / "t.bin", "steplog": tmp_path / "t.json"},
        params={"url": server.url("/t.bin"), "sha256": None, "source": "files", "version": "v9"},
        config={"api": {"timeout_seconds": 5, "sources": {"files": files}}},
        log=[tmp_path / "t.log"],
    )
    run_script(SCRIPT, smk)
    assert (tmp_path / "t.bin").read_bytes() == data
    assert [r.query for r in server.requests] == [f"api_key={SECRET}"]
    assert server.requests[0].headers["X-Token"] == "header-" + SECRET
    steplog = (tmp_path / "t.json").read_text()
    assert SECRET not in steplog and SECRET not in (tmp_path / "t.log").read_text()
    record = json.loads(steplog)
    assert record["outputs"][0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["data_sources"] == {"files": "v9"}  # the declared release, not the ETag
    (step,) = record["steps"]
    assert step["details"]["etag"] == server.files["/t.bin"].etag


def test_the_file_server_answers_head_and_ranges(server: FileServer) -> None:
    data = payload(5000)
    server.put("/h.bin", data)
    head = requests.head(server.url("/h.bin"), timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == "5000" and head.headers["Accept-Ranges"] == "bytes"
    assert head.headers["ETag"] == server.files["/h.bin"].etag
    part = requests.get(server.url("/h.bin"), headers={"Range": "bytes=100-199"}, timeout=10)
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["Content-Range"] == "bytes 100-199/5000"
    stale = requests.get(
        server.url("/h.bin"), headers={"Range": "bytes=100-", "If-Range": '"old"'}, timeout=10
    )
    assert stale.status_code == 200 and stale.content == data
