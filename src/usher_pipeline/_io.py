"""Atomic file writes: a reader sees the old file or the new one, never a half-written one."""

from __future__ import annotations

import glob
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


def temp_path_for(target: Path, suffix: str = TEMP_SUFFIX) -> Path:
    """A unique temporary name `.<name>.<pid>.<hex><suffix>` in the target's own folder, so
    that a rename is atomic and `remove_stale_temps` can tell whose file it is."""
    return target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")


def _temp_name(target: Path) -> re.Pattern[str]:
    """The names `temp_path_for(target, ...)` gives, with the writer's PID as group `pid`."""
    return re.compile(rf"\.{re.escape(target.name)}\.(?P<pid>\d+)\.[0-9a-f]+(\..+)?")


def _process_stat(pid: int) -> tuple[str, float] | None:
    """The state letter of process `pid` and when it started (seconds since the epoch), or
    None where /proc cannot say."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = float(handle.read().split()[0])
        ticks = int(fields[19])  # field 22 of stat(5); the first two precede the ")"
        return fields[0], time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def writer_is_gone(pid: int, written_at: float) -> bool:
    """True when no process `pid` runs: none has that PID, it has exited and waits to be
    reaped (a killed job whose parent died too stays a zombie until init reaps it), or the
    one that has it started after `written_at`: the writer died and its PID went to a new
    process (PIDs wrap around quickly on a busy node)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass  # alive, under another user
    stat = _process_stat(pid)
    if stat is None:
        return False
    state, started = stat
    return state in ("Z", "X") or started > written_at + 0.1  # /proc's clock-tick rounding


def remove_stale_temps(target: Path) -> list[Path]:
    """Delete the temporary files of `target` (named by `temp_path_for`, any suffix) whose
    writing process no longer runs (a job killed mid-write). Snakemake never runs two jobs
    for one output at a time, so no live writer's file is touched."""
    removed = []
    pattern = _temp_name(target)
    for path in target.parent.glob(f".{glob.escape(target.name)}.*"):
        match = pattern.fullmatch(path.name)
        if match is None or int(match["pid"]) == os.getpid():
            continue
        pid = int(match["pid"])
        try:
            written_at = path.stat().st_mtime
        except FileNotFoundError:
            continue  # its writer renamed or removed it meanwhile
        if writer_is_gone(pid, written_at):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path; rename it onto `target` only if the block succeeds."""
    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(target: str | Path, text: str) -> Path:
    """Write `text` to `target` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_json_atomic(target: str | Path, data: Any) -> Path:
    """Write `data` as indented JSON to `target` atomically."""
    return write_text_atomic(target, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
