"""An HTTP client for the sources that fetch functions call: cached, paced, retried, redacted.

Built on `requests` with `requests-cache`: requests is synchronous, which is what a fetch
function is (a batch in, a frame out), and requests-cache is a well-kept on-disk cache
(SQLite) with expiry and a way to leave secret parameters out of what it stores. Retries are
`tenacity`'s, around the request and the read of its body, so that a connection reset in the
middle of a body is retried like one before the headers (urllib3's own retries end when the
headers arrive).

One `SourceClient` per source (an API such as `ncbi`), with its settings from the config's
`api` section and `api.sources.<name>`:

- every request has the timeout `timeout_seconds` (connect and read);
- 408, 429, 5xx, timeouts and connection errors (also mid-body) are retried, up to
  `max_retries` attempts in all, after `Retry-After` when the server sends one, else after an
  exponential backoff with jitter; any other 4xx is refused at once (`SourceRequestError`
  with `permanent=True`);
- requests that reach the network are paced to `rate_limit_per_second`, shared by every
  process on the host through a bucket file in `cache_dir` (`pacing.SharedPacer`); a
  `Retry-After` holds the whole bucket, so that every job waits;
- responses are cached in `cache_dir/http/<name>.sqlite` for `cache_ttl_seconds` (0 = for
  ever): a rerun does not request them again;
- secrets (query parameters or headers whose values come from environment variables) are
  sent but never stored: the cache leaves them out, and every URL and error that the client
  logs, records or raises has them replaced by `REDACTED`;
- `summary()` is a few numbers for the step log (requests, cache hits, retries, waits), and
  `versions()` the data-source version the responses announced (ETag, Last-Modified, a
  release header) for `Job.record_data_source`.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import requests
import requests_cache
from pydantic import ValidationError
from requests.adapters import HTTPAdapter
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
)

from usher_pipeline.config.library import APIConfig, ResolvedSourceConfig, SourceAPIConfig
from usher_pipeline.errors import UsherError
from usher_pipeline.retry_after import parse_retry_after
from usher_pipeline.sources.pacing import RETRY_AFTER_MAX_S, SharedPacer
from usher_pipeline.sources.redaction import (
    REDACTED,
    RedactFilter,
    redact_url,
    transport_loggers,
)

__all__ = [
    "REDACTED",
    "SourceClient",
    "SourceRequestError",
    "SourceSettingsError",
    "client_for",
    "redact_url",
]

#: A source's name, as `api.sources` takes it: it names files and a Snakemake resource.
SOURCE_NAME: Final = re.compile(r"[a-z][a-z0-9_]*")
#: Statuses worth another attempt: the server is busy, overloaded or briefly broken.
RETRY_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
#: The first backoff and the longest one (seconds); jitter adds up to the backoff again.
BACKOFF_FIRST_S: Final = 0.5
BACKOFF_MAX_S: Final = 60.0
#: Retry the transfer errors of requests: timeouts, resets and bodies cut short.
TRANSIENT_ERRORS: Final = (
    requests.Timeout,
    requests.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class SourceRequestError(UsherError):
    """A request to a source failed: refused (`permanent`) or still failing after its attempts.

    `status` is the HTTP status of the last answer, None when no answer came; `response` is
    that answer, so that `job.fetch` sees a refused request's status (a 4xx other than 408 and
    429) and does not try its batch again.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        permanent: bool,
        response: requests.Response | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.permanent = permanent
        self.response = response


class SourceSettingsError(UsherError):
    """A source's name or one of the settings given for its client is not valid."""


class _Transient(Exception):
    """One attempt that is worth another: a retryable status or a transfer error."""

    def __init__(
        self,
        text: str,
        status: int | None,
        retry_after: float | None,
        response: requests.Response | None = None,
    ) -> None:
        super().__init__(text)
        self.status = status
        self.retry_after = retry_after
        self.response = response


class _PacedAdapter(HTTPAdapter):
    """The transport: every request that reaches the network waits for the shared bucket.

    A cached response never gets here, so cache hits cost no rate budget.
    """

    def __init__(self, client: SourceClient) -> None:
        super().__init__()
        self.client = client

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        self.client._count_network(self.client.pacer.acquire())
        return super().send(request, stream, timeout, verify, cert, proxies)


class SourceClient:
    """An HTTP client for one source: see the module docstring."""

    def __init__(
        self,
        settings: ResolvedSourceConfig,
        cache_dir: Path,
        *,
        environ: Mapping[str, str] | None = None,
        log: logging.Logger | None = None,
        backoff_first_seconds: float = BACKOFF_FIRST_S,
    ) -> None:
        if not SOURCE_NAME.fullmatch(settings.name):
            raise SourceSettingsError(
                f"source name {settings.name!r} is not valid: use lower-case letters, digits and "
                "_, starting with a letter (e.g. ncbi), as in api.sources"
            )
        self.settings = settings
        self.backoff_first_seconds = backoff_first_seconds
        self.name = settings.name
        self.log = log or logging.getLogger(f"usher_pipeline.sources.{settings.name}")
        env = os.environ if environ is None else environ
        self.secret_params = self._from_env(settings.secrets, env)
        self.secret_headers = self._from_env(settings.secret_headers, env)
        self.secret_values = [
            v for v in (*self.secret_params.values(), *self.secret_headers.values()) if v
        ]
        self.redacted_names = frozenset(settings.secrets)
        self.pacer = SharedPacer(
            Path(cache_dir) / "pace" / f"{settings.name}.next", settings.rate_limit_per_second
        )
        ttl = settings.cache_ttl_seconds
        self.session = requests_cache.CachedSession(
            str(Path(cache_dir) / "http" / settings.name),
            backend="sqlite",
            expire_after=requests_cache.NEVER_EXPIRE if ttl == 0 else ttl,
            allowable_codes=(200,),
            allowable_methods=("GET", "HEAD"),
            ignored_parameters=[*settings.secrets, *settings.secret_headers],
            stale_if_error=False,
        )
        adapter = _PacedAdapter(self)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(self.secret_headers)
        self._filter = RedactFilter(self.secret_values)
        self._filtered = transport_loggers()
        for logger in self._filtered:
            logger.addFilter(self._filter)
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.waits = {"pacing_seconds": 0.0, "backoff_seconds": 0.0, "retry_after_seconds": 0.0}
        self.found: dict[str, str] = {}

    def _from_env(self, names: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
        values: dict[str, str] = {}
        for field, variable in names.items():
            value = env.get(variable)
            if value:
                values[field] = value
            else:
                self.log.warning(
                    "source %s: environment variable %s is not set, so %s is not sent",
                    self.name,
                    variable,
                    field,
                )
        return values

    # -- life ------------------------------------------------------------------------------

    def __enter__(self) -> SourceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the session and its cache."""
        for logger in self._filtered:
            logger.removeFilter(self._filter)
        self.session.close()  # type: ignore[no-untyped-call]

    # -- requests --------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        """`text` (a URL or an error) with every secret value replaced by REDACTED."""
        text = redact_url(text, self.redacted_names) if text.startswith("http") else text
        for secret in self.secret_values:
            text = text.replace(secret, REDACTED)
        return text

    def get(
        self,
        url: str,
        params: Mapping[str, Any] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """GET `url` (cached, paced, retried); the response is a 200..399 with its body read.

        Raises `SourceRequestError` for a refused request (`permanent`) or one that still
        fails after `max_retries` attempts.
        """
        query = {**(params or {}), **self.secret_params}
        shown = self.redact(requests.Request("GET", url, params=query).prepare().url or url)
        retrying = Retrying(
            stop=stop_after_attempt(self.settings.max_retries),
            retry=retry_if_exception_type(_Transient),
            wait=self._wait,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            response: requests.Response = retrying(self._attempt, url, query, headers, shown)
        except _Transient as exc:
            raise SourceRequestError(
                f"GET {shown} failed after {self.settings.max_retries} attempts, the last "
                f"with {self.redact(str(exc))}: retry later, or raise "
                f"api.sources.{self.name}.max_retries",
                status=exc.status,
                permanent=False,
                response=exc.response,
            ) from None
        return response

    def get_json(
        self,
        url: str,
        params: Mapping[str, Any] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """GET `url` and decode its JSON body."""
        response = self.get(url, params, headers=headers)
        try:
            return response.json()
        except ValueError:
            raise SourceRequestError(
                f"GET {self.redact(response.url)} answered a body that is not JSON: check "
                "the URL and its parameters",
                status=response.status_code,
                permanent=True,
            ) from None

    def _attempt(
        self,
        url: str,
        query: Mapping[str, Any],
        headers: Mapping[str, str] | None,
        shown: str,
    ) -> requests.Response:
        timeout = self.settings.timeout_seconds
        try:
            response = self.session.get(url, params=query, headers=headers, timeout=timeout)
            response.content  # noqa: B018 - read the body here, so a reset mid-body is retried
        except TRANSIENT_ERRORS as exc:
            kind = type(exc).__name__
            self._count_error(kind)
            raise _Transient(self.redact(f"{kind}: {exc}"), None, None) from None
        if getattr(response, "from_cache", False):
            self._count("cache_hits")
        status = response.status_code
        if status in RETRY_STATUSES or status >= 500:
            self._count_error(f"http_{status}")
            retry_after = parse_retry_after(response.headers.get("Retry-After"), RETRY_AFTER_MAX_S)
            if retry_after is not None:
                self.pacer.hold(retry_after)
            raise _Transient(f"HTTP {status} {response.reason}", status, retry_after, response)
        if status >= 400:
            self._count_error(f"http_{status}")
            raise SourceRequestError(
                f"GET {shown} answered HTTP {status} {response.reason}: check the URL, its "
                "parameters and the source's API key",
                status=status,
                permanent=True,
                response=response,
            )
        self._note_versions(response)
        return response

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            return float(exc.retry_after)
        backoff = min(BACKOFF_MAX_S, self.backoff_first_seconds * 2 ** (state.attempt_number - 1))
        return float(backoff + random.uniform(0, backoff))  # noqa: S311 - jitter, not a secret

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        seconds = state.upcoming_sleep
        with self._lock:
            self.counts["retries"] += 1
            if isinstance(exc, _Transient) and exc.retry_after is not None:
                self.waits["retry_after_seconds"] += seconds
            else:
                self.waits["backoff_seconds"] += seconds
        self.log.debug("source %s: retry in %.2f s after %s", self.name, seconds, exc)

    # -- accounting ------------------------------------------------------------------------

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _count_network(self, waited: float) -> None:
        with self._lock:
            self.counts["requests"] += 1
            self.waits["pacing_seconds"] += waited

    def _count_error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    def _note_versions(self, response: requests.Response) -> None:
        names = {"etag": "ETag", "last_modified": "Last-Modified"}
        if self.settings.release_header:
            names["release"] = self.settings.release_header
        with self._lock:
            for key, header in names.items():
                value = response.headers.get(header)
                if value:
                    self.found[key] = value

    def summary(self) -> dict[str, Any]:
        """Requests sent, cache hits, retries, errors by kind and seconds waited, for a step log."""
        with self._lock:
            return {
                "source": self.name,
                "requests": self.counts["requests"],
                "cache_hits": self.counts["cache_hits"],
                "retries": self.counts["retries"],
                "errors": dict(sorted(self.errors.items())),
                "waits": {k: round(v, 3) for k, v in self.waits.items()},
                "rate_limit_per_second": self.settings.rate_limit_per_second,
            }

    def versions(self) -> dict[str, str]:
        """The version headers of the latest responses: release, etag, last_modified."""
        with self._lock:
            return dict(self.found)

    def version(self) -> str | None:
        """The source's version for `record_data_source`: its release, else ETag or date."""
        found = self.versions()
        return found.get("release") or found.get("etag") or found.get("last_modified")


@contextmanager
def client_for(
    job: Any,
    source: str,
    *,
    backoff_first_seconds: float = BACKOFF_FIRST_S,
    **settings: Any,
) -> Iterator[SourceClient]:
    """A client for `source` with the job's config; on success, its summary goes in the step
    log (step `http_<source>`) and the version it saw in the job's data sources.

    `settings` override the config's `api.sources.<source>` keys for this client (e.g.
    `release_header="X-Release"`, `timeout_seconds=5`); they are checked like the config.
    """
    config = dict(getattr(job.smk, "config", None) or {})
    api = APIConfig.model_validate(config.get("api") or {})
    own = api.sources.get(source, SourceAPIConfig()).model_dump(exclude_unset=True)
    try:
        merged = SourceAPIConfig.model_validate({**own, **settings})
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        raise SourceSettingsError(
            f"client_for(job, {source!r}) was given a bad setting {where}: {error['msg']}; it "
            f"takes {', '.join(SourceAPIConfig.model_fields)}"
        ) from None
    resolved = api.model_copy(update={"sources": {**api.sources, source: merged}})
    cache_dir = Path(config.get("cache_dir") or "data/cache")
    with SourceClient(
        resolved.for_source(source),
        cache_dir,
        log=job.log,
        backoff_first_seconds=backoff_first_seconds,
    ) as client:
        yield client
        job.record_step(f"http_{source}", client.summary())
        version = client.version()
        if version is not None:
            job.record_data_source(source, version)
