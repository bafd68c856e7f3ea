"""The log of a job: one file (and stderr) that every library logger writes to, and
expected failures turned into one line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from usher_pipeline.errors import UsherError

PACKAGE_LOGGER = "usher_pipeline"
LINE_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def job_logger(name: str, log_path: str | Path | None) -> logging.Logger:
    """The logger of job `name`, writing to its log file (if any) and to stderr.

    The handlers sit on the package's logger, replacing those of an earlier job in the same
    process; the job's logger and every library module's logger propagate to it.
    """
    package = logging.getLogger(PACKAGE_LOGGER)
    package.setLevel(logging.INFO)
    package.propagate = False
    for handler in list(package.handlers):
        package.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(LINE_FORMAT)
    handlers: list[logging.Handler] = []
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w", encoding="utf-8"))
    handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
        package.addHandler(handler)
    return logging.getLogger(f"{PACKAGE_LOGGER}.job.{name}")


@contextmanager
def user_errors(logger: logging.Logger, label: str) -> Iterator[None]:
    """Turn an expected failure (UsherError) into a one-line exit message, no traceback."""
    try:
        yield
    except UsherError as exc:
        logger.error("%s", exc)
        raise SystemExit(f"{label}: {exc}") from None
