"""Bulk downloads that survive a kill: stream to `<target>.part`, resume with HTTP Range.

    result = download(url, Path("data/downloads/constraint.tsv"), sha256=expected)

The bytes go to `<target>.part` beside the target, with a note `<target>.part.json` of the
URL (secrets redacted), the source's ETag and Last-Modified, the total size and the bytes so
far. A later call for the same URL and target asks only for the bytes it lacks
(`Range: bytes=N-`), with `If-Range` carrying the ETag (or Last-Modified), so that a file
changed on the server since comes whole from byte 0 instead of being spliced. A server that
ignores Range answers 200 and the download restarts; a 416 for a part that is already whole
completes it. Transient failures (connection resets, timeouts, 408, 429, 5xx) are retried
with backoff, each retry resuming from the bytes on disk. The size is checked against
Content-Length or Content-Range, the SHA-256 against the expected one when given (a mismatch
removes the part), and the file is renamed into place: the target is whole or absent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit

import requests

from usher_pipeline.errors import UsherError
from usher_pipeline.sources.redaction import SECRET_PARAMETER, redact_url
from usher_pipeline.sources.transfer import (
    CHUNK_BYTES,
    PROGRESS_SECONDS,
    ChecksumError,
    DownloadError,
    DownloadResult,
    Transfer,
    note_path,
    part_path,
)

if TYPE_CHECKING:
    from usher_pipeline.workflow.job import Job
    from usher_pipeline.workflow.layout import Layout

__all__ = [
    "CHUNK_BYTES",
    "DOWNLOAD_OUTPUT",
    "FILE_NAME",
    "ChecksumError",
    "DownloadDeclarationError",
    "DownloadError",
    "DownloadResult",
    "Downloads",
    "download",
    "download_for_job",
    "note_path",
    "part_path",
    "redact_url",
]

#: The output of the library's download rule (rules/download.smk) that is the file.
DOWNLOAD_OUTPUT: Final = "file"


def download(
    url: str,
    target: str | Path,
    *,
    sha256: str | None = None,
    timeout: float = 30.0,
    max_retries: int = 5,
    headers: Mapping[str, str] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    progress: Callable[[str], None] | None = None,
    progress_seconds: float = PROGRESS_SECONDS,
    session: requests.Session | None = None,
    secrets: Iterable[str] = (),
) -> DownloadResult:
    """Download `url` to `target`, resuming from an earlier call's part; see the module doc.

    Query parameters named in `secrets`, or named like one (key, token, email, ...), are
    sent but shown as REDACTED in every note, line and error.

    `max_retries` is how many transient failures in a row, with no byte received between
    them, are retried. `progress` receives a line (bytes, rate, ETA) every `progress_seconds`.
    Raises `DownloadError` (one line naming the redacted URL) when the download cannot finish.
    """
    secrets = tuple(secrets)
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise DownloadError(
            f"the expected SHA-256 of {redact_url(url, secrets)} is {sha256!r}: give 64 "
            "hexadecimal digits, or no checksum"
        )
    fetcher = Transfer(
        url,
        Path(target),
        timeout=timeout,
        max_retries=max_retries,
        headers=dict(headers or {}),
        chunk_bytes=chunk_bytes,
        progress=progress,
        progress_seconds=progress_seconds,
        session=session,
        secrets=secrets,
    )
    return fetcher.run(sha256.lower() if sha256 else None)


#: A declared download's file name: plain, and not a sidecar's (`x.provenance.json`).
FILE_NAME: Final = r"(?!.*\.provenance\.json$)[A-Za-z0-9][A-Za-z0-9._-]*"


class DownloadDeclarationError(UsherError, ValueError):
    """A download declared in a workflow that the download rule cannot make."""


class Downloads:
    """The bulk files a workflow declares for the library's download rule (rules/download.smk).

    `declared` is plain JSON kept in the workflow's config, so that a module given
    `config: config` shares it; `layout` is the workflow's `USHER`, with which each file is
    registered as a product whose step log is `download_<file name>`. With `exit_on_error`,
    a bad declaration stops the workflow with its one line (as the library's rules do).
    """

    def __init__(
        self,
        declared: dict[str, dict[str, Any]],
        layout: Layout,
        folder: str,
        *,
        exit_on_error: bool = False,
    ) -> None:
        self.declared = declared
        self.layout = layout
        self.folder = folder
        self.exit_on_error = exit_on_error

    def path(self, filename: str) -> str:
        """Where the download named `filename` goes."""
        return f"{self.folder}/{filename}"

    def declare(
        self,
        filename: str,
        url: str,
        sha256: str | None = None,
        source: str | None = None,
        version: str | int | None = None,
    ) -> str:
        """Declare the file `filename`, downloaded from `url`; returns its path. `sha256` is
        the expected checksum; `source` a name under `api.sources` (its timeout, retries and
        secrets apply), and `version` the release the URL holds (`v4.1`), recorded as the
        source's version (else its ETag or Last-Modified). A secret in the URL is refused:
        its value belongs in the environment, named in `api.sources.<source>.secrets`."""
        from usher_pipeline.persistence.provenance import sidecar_path

        try:
            name, address = str(filename), str(url)
            secret = [
                k for k, _ in parse_qsl(urlsplit(address).query) if SECRET_PARAMETER.search(k)
            ]
            if not re.fullmatch(FILE_NAME, name):
                raise DownloadDeclarationError(
                    f"the download file name {name!r} is not a plain file name: use letters, "
                    "digits, '.', '_' and '-' (and not a .provenance.json name)"
                )
            if urlsplit(address).scheme not in ("http", "https"):
                raise DownloadDeclarationError(
                    f"the download {name} has the URL {redact_url(address)!r}: give an "
                    "http or https URL"
                )
            if secret:
                raise DownloadDeclarationError(
                    f"the URL of the download {name} holds the secret {secret[0]}: leave it out "
                    f"and name its environment variable in api.sources.<source>.secrets"
                )
            if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", str(sha256)):
                raise DownloadDeclarationError(
                    f"the sha256 of the download {name} is {sha256!r}: give 64 hexadecimal "
                    "digits, or None"
                )
            if source is not None and not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", str(source)):
                raise DownloadDeclarationError(
                    f"the source of the download {name} is {source!r}: name it as under "
                    "api.sources, in lowercase letters, digits and '_' (e.g. gnomad)"
                )
            if name in self.declared:
                raise DownloadDeclarationError(
                    f"the download {name} is declared twice: declare each file once"
                )
            path = self.path(name)
            for other in self.declared:
                if sidecar_path(self.path(other)) == sidecar_path(path):
                    raise DownloadDeclarationError(
                        f"the downloads {other} and {name} would share the sidecar "
                        f"{sidecar_path(path)}: rename one of them"
                    )
        except DownloadDeclarationError as error:
            if self.exit_on_error:
                raise SystemExit(f"usher_pipeline: {error}") from None
            raise
        self.declared[name] = {
            "url": address,
            "sha256": str(sha256).lower() if sha256 else None,
            "source": source,
            "version": None if version is None else str(version),
        }
        self.layout.register(steplog=f"download_{name}", files=[path])
        return path

    def param(self, key: str) -> Callable[[Any], Any]:
        """A params function: the declared `key` (url, sha256, source, version) of a job."""

        def value(wildcards: Any) -> Any:
            found = self.declared.get(str(wildcards.download))
            if found is None:
                problem = (
                    f"{self.path(str(wildcards.download))} is not a declared download: declare "
                    "it with usher_download(...) before including provenance.smk"
                )
                if self.exit_on_error:
                    raise SystemExit(f"usher_pipeline: {problem}")
                raise DownloadDeclarationError(problem)
            return found[key]

        return value


def download_for_job(job: Job, output: str = DOWNLOAD_OUTPUT) -> DownloadResult:
    """The download rule's work: fetch the job's `url` param into its output `output`.

    The params are `url`, `sha256` (or None), `version` (or None) and `source` (a name
    under `api.sources`, whose `timeout_seconds`, `max_retries`, `secrets` and
    `secret_headers` apply; the `api` section's otherwise). Secrets are query parameters
    and headers whose values come from environment variables, added here so
    that no param, note or record holds them. The step log gets a `download` step and the
    output entry (URL, size, SHA-256, ETag, Last-Modified) without hashing the file again;
    the source's version (the declared one, else the ETag, else Last-Modified, else the SHA-256)
    goes to its data sources, under the source's name (else the file's).
    """
    params = job.params
    url = str(params["url"])
    source = str(params.get("source") or "")
    api = dict(job.smk.config.get("api") or {})
    own = dict((api.get("sources") or {}).get(source) or {})
    secrets: dict[str, str] = dict(own.get("secrets") or {})
    sent = _from_environment(url, source, secrets, "query parameter", "secrets")
    if sent:
        url += ("&" if urlsplit(url).query else "?") + urlencode(sent)
    headers = _from_environment(
        url, source, dict(own.get("secret_headers") or {}), "header", "secret_headers"
    )
    target = job.output(output)
    result = download(
        url,
        target,
        sha256=params.get("sha256") or None,
        timeout=float(own.get("timeout_seconds") or api.get("timeout_seconds") or 30),
        max_retries=int(own.get("max_retries") or api.get("max_retries") or 5),
        headers=dict(headers),
        progress=job.log.info,
        secrets=secrets,
    )
    job.record_step("download", result.as_dict())
    declared = params.get("version")
    job.record_data_source(
        source or target.name,
        declared or result.etag or result.last_modified or result.sha256,
    )
    job.outputs.append(
        {
            "name": output,
            "path": str(target),
            "sha256": result.sha256,
            "size": result.size,
            "rows": None,
            "url": result.url,
            "etag": result.etag,
            "last_modified": result.last_modified,
        }
    )
    return result


def _from_environment(
    url: str, source: str, names: Mapping[str, str], kind: str, key: str
) -> list[tuple[str, str]]:
    """(name, value) of each secret `names` maps to an environment variable, all required."""
    found = []
    for name, variable in names.items():
        value = os.environ.get(variable)
        if not value:
            raise DownloadError(
                f"download of {redact_url(url, names)} needs the environment variable "
                f"{variable} for its {kind} {name} (api.sources.{source}.{key}): set it"
            )
        found.append((name, value))
    return found
