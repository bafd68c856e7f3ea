"""Run library code once Snakemake has set a workflow up, before it builds the DAG.

Snakemake parses the Snakefile before it assigns a workflow's DAG settings and executor, and
a Snakefile has no public hook between the two: `onstart` runs after the DAG is built, and a
workflow has one `onstart` handler, which belongs to its author. Snakemake logs through the
standard `logging` module on its public `snakemake.logging.logger`, and it logs before it
builds the DAG ("Building DAG of jobs..." at the latest). So the library attaches one
`logging.Handler` to that logger, which calls each registered action on the first record for
which the action's readiness test passes, once. Two actions use it: rerunning incomplete jobs
(workflow/runguard.py) and writing the run manifest (workflow/manifest.py).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any


class _Action:
    """One action: `run` once, on the first log record for which `ready()` is true."""

    def __init__(self, ready: Callable[[], bool], run: Callable[[], object]) -> None:
        self.ready = ready
        self.run = run
        self.done = False


class _OnSetUp(logging.Handler):
    """Runs the actions of one workflow; it stays attached when they are done (removing a
    handler while the logger walks its handlers would cost the next handler this record)."""

    def __init__(self, workflow: Any) -> None:
        super().__init__(level=logging.NOTSET)
        self.workflow = weakref.ref(workflow)
        self.actions: dict[str, _Action] = {}

    def emit(self, record: logging.LogRecord) -> None:
        for action in self.actions.values():
            if not action.done and action.ready():
                action.done = True
                action.run()


def when_set_up(
    workflow: Any, name: str, ready: Callable[[], bool], run: Callable[[], object]
) -> None:
    """Call `run` once, on the first Snakemake log record after `ready()` becomes true.

    `name` identifies the action: registering a name again for the same workflow (a library
    included twice, as in the module form) keeps the first registration.
    """
    from snakemake.logging import logger

    for handler in logger.handlers:
        if isinstance(handler, _OnSetUp) and handler.workflow() is workflow:
            handler.actions.setdefault(name, _Action(ready, run))
            return
    handler = _OnSetUp(workflow)
    handler.actions[name] = _Action(ready, run)
    logger.addHandler(handler)
