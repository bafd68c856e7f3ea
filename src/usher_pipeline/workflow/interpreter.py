"""An interpreter path that Snakemake's `script:` jobs can run from a folder with spaces.

Snakemake runs a script job as `<interpreter> <script>` and quotes only the script, so from a
checkout or virtual environment whose path holds a space every job would exit with 127, and
it offers no setting for that interpreter. `rules/library.smk` therefore points
`sys.executable` at the same environment through a symlink whose path has no whitespace.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path


def plain_interpreter(executable: str, prefix: str) -> str:
    """`executable` by a path without whitespace: itself, or the same file reached through a
    symlink to its environment `prefix` (so that a venv stays a venv) in the temporary folder.
    Where no such link can be made, `executable` itself, with a one-line warning on stderr."""
    if not any(c.isspace() for c in executable):
        return executable
    root, inner = Path(prefix), Path(executable)
    if not inner.is_relative_to(root):
        root = inner.parent
    folder = Path(tempfile.gettempdir())
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    link = folder / f"usher_pipeline-python-{os.getuid()}-{digest}"
    try:
        if any(c.isspace() for c in str(folder)):
            raise OSError(0, "the temporary folder's path holds a space too")
        if not (link.is_symlink() and os.readlink(link) == str(root)):
            staging = link.with_name(f".{link.name}.{os.getpid()}")
            staging.unlink(missing_ok=True)
            staging.symlink_to(root, target_is_directory=True)
            os.replace(staging, link)
    except OSError as error:
        print(
            f"usher_pipeline: cannot link {root} to {link} ({error.strerror}): jobs may fail "
            "with exit code 127; move the checkout to a path without spaces",
            file=sys.stderr,
        )
        return executable
    return str(link / inner.relative_to(root))
