"""End a Snakemake process as soon as its work is done.

Snakemake's job scheduler starts a one-second `threading.Timer` every time it looks at ready
jobs, to look again once its job-rate limit (`--max-jobs-per-timespan`, at least one second)
allows more submissions. The timer thread is not a daemon, so the interpreter waits for the
last one before it exits: a finished run, the main process or a cluster job's, ends up to a
second after its last job (a whole second when the final job is a target rule such as `all`,
which finishes at once). At that point the scheduler has returned and nothing waits for the
timer, so `rules/library.smk` has these timers cancelled when the interpreter shuts down,
before it joins its threads. Timers of anything else are left alone.

The interpreter's last garbage collections then walk every object Snakemake, its plugins and
the workflow created: 0.25 s after `import snakemake.api` alone, about 0.5 s after a run.
The same hook freezes the garbage collector first (`gc.freeze`): the objects are still freed
by reference counting as modules are torn down and the operating system reclaims the rest,
and exit handlers (log flushing, temporary directories) run as before; only objects caught in
reference cycles at exit are no longer finalised one by one.
"""

from __future__ import annotations

import gc
import threading

SCHEDULER_MODULE = "snakemake.scheduling.job_scheduler"
SCHEDULER_TIMER = "_schedule_reevalutation"  # Snakemake's spelling


def scheduler_timers() -> list[threading.Timer]:
    """The live timers started by Snakemake's job scheduler to re-check ready jobs."""
    timers = []
    for thread in threading.enumerate():
        if not isinstance(thread, threading.Timer):
            continue
        function = getattr(thread, "function", None)
        if getattr(function, "__module__", None) == SCHEDULER_MODULE and SCHEDULER_TIMER in (
            getattr(function, "__qualname__", "")
        ):
            timers.append(thread)
    return timers


def cancel_scheduler_timers() -> int:
    """Cancel the scheduler's pending timers (call once scheduling is over); returns how many."""
    timers = [timer for timer in scheduler_timers() if not timer.finished.is_set()]
    for timer in timers:
        timer.cancel()
    return len(timers)


def finish_process() -> None:
    """Once the work is done: cancel the scheduler's timers, skip the final collections."""
    cancel_scheduler_timers()
    gc.freeze()


_registered = False


def exit_promptly() -> bool:
    """Have the interpreter run `finish_process` when it shuts down, before it waits for its
    threads (once per process). Returns False where this Python offers no such hook."""
    global _registered
    register = getattr(threading, "_register_atexit", None)  # runs before threads are joined
    if register is None:
        return False
    if not _registered:
        register(finish_process)
        _registered = True
    return True
