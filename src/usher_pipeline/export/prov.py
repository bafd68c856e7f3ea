"""W3C PROV export of a run: a PROV-JSON document built from the step logs with `prov`.

Mapping: each file a job read or wrote is an entity (sha256, size, rows, table and
fingerprint as attributes); each job is an activity with its start and end times; the
software (usher_pipeline, snakemake, python, duckdb, polars), the host and the user are
agents. Jobs `used` their inputs, outputs `wasGeneratedBy` their job and `wasDerivedFrom`
its inputs, and every job `wasAssociatedWith` the software and host that ran it.
"""

from __future__ import annotations

import getpass
import pwd
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usher_pipeline.errors import UsherError
from usher_pipeline.export.run import RunRecords, parse_time
from usher_pipeline.hashing import sha256_file
from usher_pipeline.lineage import path_key, step_label

if TYPE_CHECKING:
    from prov.model import ProvDocument

USHER_NS = "urn:usher_pipeline:"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-/]")


class ProvWriteError(UsherError, OSError):
    """The PROV document cannot be written where asked (a directory, a read-only folder)."""

    def __str__(self) -> str:  # OSError would prefix an errno
        return str(self.args[0]) if self.args else ""


def _local(text: str) -> str:
    """A QName local part: path-like text with anything unusual replaced by '_'."""
    return _UNSAFE.sub("_", text.lstrip("/"))


def _owner(path: Path) -> str:
    """The account owning a file (who ran the job that wrote it), else the current user."""
    try:
        return pwd.getpwuid(path.stat().st_uid).pw_name
    except (KeyError, OSError):
        return getpass.getuser()


def _entity_attributes(entry: dict[str, Any]) -> dict[str, Any]:
    keys = ("sha256", "size", "rows", "table", "fingerprint", "description")
    attributes: dict[str, Any] = {"prov:label": Path(entry["path"]).name}
    attributes["usher:path"] = str(entry["path"])
    for key in keys:
        if entry.get(key) is not None and entry.get(key) != "":
            attributes[f"usher:{key}"] = entry[key]
    return attributes


def build_prov(
    run: RunRecords,
    config_path: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> ProvDocument:
    """The PROV document of a run."""
    report = progress or (lambda _message: None)
    builder = _ProvBuilder(_owner(run.steplogs[0]))
    builder.add_config(config_path, run.config_hash())
    for n, record in enumerate(run.records, 1):
        label = step_label(record)
        report(f"export-prov: job {n}/{len(run.records)} {label}")
        builder.add_job(record, label)
    builder.add_delegations()
    return builder.doc


class _ProvBuilder:
    """The PROV document of one run, built job by job; files, software and hosts are added
    once, the first time a job names them."""

    def __init__(self, user_name: str) -> None:
        from prov.model import PROV, PROV_TYPE, ProvDocument

        self.doc = ProvDocument()
        self.usher = self.doc.add_namespace("usher", USHER_NS)
        for prefix in ("file", "job", "sw", "host", "user"):
            self.doc.add_namespace(prefix, f"{USHER_NS}{prefix}:")
        self.entities: dict[str, Any] = {}  # by normalised path
        self.software: dict[tuple[str, str], Any] = {}  # by (name, version)
        self.hosts: dict[str, Any] = {}
        self.config: Any = None
        self.user = self.doc.agent(
            f"user:{_local(user_name)}", {PROV_TYPE: PROV["Person"], "prov:label": user_name}
        )

    def entity(self, entry: dict[str, Any]) -> Any:
        """The entity of a file a job read or wrote."""
        key = path_key(entry["path"])
        if key not in self.entities:
            self.entities[key] = self.doc.entity(f"file:{_local(key)}", _entity_attributes(entry))
        return self.entities[key]

    def software_agent(self, name: str, version: str) -> Any:
        """The SoftwareAgent of one version of a program."""
        from prov.model import PROV, PROV_TYPE

        if (name, version) not in self.software:
            self.software[(name, version)] = self.doc.agent(
                f"sw:{_local(name)}-{_local(version)}",
                {
                    PROV_TYPE: PROV["SoftwareAgent"],
                    "prov:label": f"{name} {version}",
                    "usher:version": version,
                },
            )
        return self.software[(name, version)]

    def host_agent(self, host_name: str) -> Any:
        """The agent of a host, acting on behalf of the user."""
        from prov.model import PROV_TYPE

        if host_name not in self.hosts:
            self.hosts[host_name] = self.doc.agent(
                f"host:{_local(host_name)}",
                {PROV_TYPE: self.usher["Host"], "prov:label": host_name},
            )
            self.doc.actedOnBehalfOf(self.hosts[host_name], self.user)
        return self.hosts[host_name]

    def add_config(self, config_path: Path | None, config_hash: str | None) -> None:
        """The config file as an entity every job used, when it exists."""
        from prov.model import PROV_TYPE

        if config_path is None or not Path(config_path).is_file():
            return
        self.config = self.doc.entity(
            f"file:{_local(path_key(config_path))}",
            {
                "prov:label": Path(config_path).name,
                "usher:path": str(config_path),
                "usher:sha256": sha256_file(config_path),
                "usher:config_hash": config_hash or "",
                PROV_TYPE: self.usher["Config"],
            },
        )

    def add_job(self, record: dict[str, Any], label: str) -> None:
        """A job as an activity: what it used and generated, and who ran it."""
        doc = self.doc
        attributes: dict[str, Any] = {
            "prov:label": label,
            "usher:rule": record["rule"],
            "usher:duration_seconds": float(record.get("duration_seconds") or 0.0),
            "usher:host": record.get("host") or "",
        }
        for key in ("config_slice_hash", "config_hash"):
            if record.get(key):
                attributes[f"usher:{key}"] = record[key]
        for key, value in (record.get("wildcards") or {}).items():
            attributes[f"usher:wildcard_{_local(key)}"] = str(value)
        scheduler = record.get("scheduler") or {}
        if scheduler.get("job_id"):
            attributes["usher:scheduler_job"] = f"{scheduler.get('name')}:{scheduler['job_id']}"
        started = parse_time(record.get("started_at"))
        ended = parse_time(record.get("ended_at"))
        activity = doc.activity(f"job:{_local(label)}", started, ended, attributes)
        used = []
        for entry in record["inputs"]:
            source = self.entity(entry)
            used.append(source)
            doc.used(activity, source, started)
        if self.config is not None:
            doc.used(activity, self.config)
        for entry in record["outputs"]:
            product = self.entity(entry)
            doc.wasGeneratedBy(product, activity, ended)
            for source in used:
                doc.wasDerivedFrom(product, source, activity)
        for name, version in sorted((record.get("software") or {}).items()):
            doc.wasAssociatedWith(activity, self.software_agent(name, str(version)))
        doc.wasAssociatedWith(activity, self.host_agent(str(record.get("host") or "unknown")))

    def add_delegations(self) -> None:
        """Every program acted on behalf of the user."""
        for agent in self.software.values():
            self.doc.actedOnBehalfOf(agent, self.user)


def prov_counts(doc: ProvDocument) -> dict[str, int]:
    """How many entities, activities, agents and relations a PROV document holds."""
    from prov.model import ProvActivity, ProvAgent, ProvEntity, ProvRelation

    records = doc.get_records()
    kinds = {"entities": ProvEntity, "activities": ProvActivity, "agents": ProvAgent}
    counts = {name: sum(isinstance(r, kind) for r in records) for name, kind in kinds.items()}
    counts["relations"] = sum(isinstance(r, ProvRelation) for r in records)
    return counts


def write_prov(
    run: RunRecords,
    target: str | Path,
    config_path: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Write the run's PROV-JSON document to `target`; returns counts of what it holds.

    The file appears whole or not at all; a target that cannot be written raises
    ProvWriteError (checked before the document is built, when it is a directory).
    """
    from usher_pipeline._io import write_text_atomic

    path = Path(target)
    if path.is_dir():
        raise ProvWriteError(
            f"{path} is a directory: give a file name for the PROV document, such as "
            f"{path / 'run.prov.json'}"
        )
    doc = build_prov(run, config_path=config_path, progress=progress)
    try:
        write_text_atomic(path, doc.serialize(format="json", indent=2) + "\n")
    except OSError as exc:
        raise ProvWriteError(
            f"cannot write {path} ({exc.strerror or exc}): make {path.parent} writable or "
            "choose another FILE"
        ) from None
    return prov_counts(doc)
