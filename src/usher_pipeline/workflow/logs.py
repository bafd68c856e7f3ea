"""The log of a job: one file (and stderr) that every library logger writes to, and
expected failures turned into one line.

A failure is said once in each place. The job's log file gets it from the logger (the
traceback of an unexpected error, the line of an expected one); the terminal gets it from the
process's own exit, which prints the traceback of the exception that ends the script (or the
`SystemExit` message), so the logger leaves such records out of stderr (`FILE_ONLY`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from usher_pipeline.errors import UsherError

PACKAGE_LOGGER = "usher_pipeline"
LINE_FORMAT = "%(asctime)s %(levelname)s %(message)s"
# `extra=FILE_ONLY` on a record that the process's exit prints to the terminal anyway
FILE_ONLY_ATTRIBUTE = "usher_file_only"
FILE_ONLY: dict[str, bool] = {FILE_ONLY_ATTRIBUTE: True}


def not_file_only(record: logging.LogRecord) -> bool:
    """The filter of the stderr handler: leave out records marked `FILE_ONLY`."""
    return not getattr(record, FILE_ONLY_ATTRIBUTE, False)


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
    terminal = logging.StreamHandler(sys.stderr)
    terminal.addFilter(not_file_only)
    handlers.append(terminal)
    for handler in handlers:
        handler.setFormatter(formatter)
        package.addHandler(handler)
    return logging.getLogger(f"{PACKAGE_LOGGER}.job.{name}")


@contextmanager
def user_errors(logger: logging.Logger, label: str) -> Iterator[None]:
    """Turn an expected failure (UsherError) into a one-line exit message, no traceback.

    The line goes to the job's log file; the exit message puts it on the terminal once.
    """
    try:
        yield
    except UsherError as exc:
        logger.error("%s", exc, extra=FILE_ONLY)
        raise SystemExit(f"{label}: {exc}") from None
