"""W3C PROV export of a run: a PROV-JSON document built from the step logs with `prov`.

Mapping: each file a job read or wrote is an entity (sha256, size, rows, table and
fingerprint as attributes); each job is an activity with its start and end times; the
software (usher_pipeline, snakemake, python, duckdb, polars), the host and the user are
agents. Jobs `used` their inputs, outputs `wasGeneratedBy` their job and `wasDerivedFrom`
its inputs, and every job `wasAssociatedWith` the software and host that ran it.

The workflow that ran, from its run manifest (`export.workflow`), is a plan and collection
`workflow:NAME` (its name and version) whose members are its Snakefile, rule files and
scripts, each an entity with its role and SHA-256. The whole run is an activity `run:NAME`
that used the workflow and its config files (entities of type `usher:Config`, which every job
used too), was associated with Snakemake and usher_pipeline under the workflow as plan, and
started every job. A run without a manifest has the config entity only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usher_pipeline.errors import UsherError
from usher_pipeline.export.run import RunRecords, parse_time
from usher_pipeline.export.workflow import (
    SourceFile,
    WorkflowDescription,
    file_owner,
    from_manifest,
    without_manifest,
)
from usher_pipeline.lineage import path_key, step_label

if TYPE_CHECKING:
    from prov.model import ProvDocument

    from usher_pipeline.workflow.manifest import Manifest

USHER_NS = "urn:usher_pipeline:"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-/]")
#: The PROV type (in the usher namespace) of each role of a workflow file.
_ROLE_TYPES = {
    "snakefile": "Snakefile",
    "rules": "RuleFile",
    "script": "Script",
    "config": "Config",
}


class ProvWriteError(UsherError, OSError):
    """The PROV document cannot be written where asked (a directory, a read-only folder)."""

    def __str__(self) -> str:  # OSError would prefix an errno
        return str(self.args[0]) if self.args else ""


def _local(text: str) -> str:
    """A QName local part: path-like text with anything unusual replaced by '_'."""
    return _UNSAFE.sub("_", text.lstrip("/"))


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
    manifest: Manifest | None = None,
) -> ProvDocument:
    """The PROV document of a run; its workflow from `manifest`, else only `config_path`."""
    report = progress or (lambda _message: None)
    builder = _ProvBuilder(file_owner(run.steplogs[0]))
    if manifest is not None:
        described = from_manifest(manifest)
    else:
        described = without_manifest(Path.cwd(), None, config_path)
    builder.add_workflow(described, run.config_hash())
    for n, record in enumerate(run.records, 1):
        label = step_label(record)
        report(f"export-prov: job {n}/{len(run.records)} {label}")
        builder.add_job(record, label)
    builder.add_run(described, run)
    builder.add_delegations()
    return builder.doc


class _ProvBuilder:
    """The PROV document of one run, built job by job; files, software and hosts are added
    once, the first time a job names them."""

    def __init__(self, user_name: str) -> None:
        from prov.model import PROV, PROV_TYPE, ProvDocument

        self.doc = ProvDocument()
        self.usher = self.doc.add_namespace("usher", USHER_NS)
        for prefix in ("file", "job", "sw", "host", "user", "workflow", "run"):
            self.doc.add_namespace(prefix, f"{USHER_NS}{prefix}:")
        self.entities: dict[str, Any] = {}  # by normalised path
        self.software: dict[tuple[str, str], Any] = {}  # by (name, version)
        self.hosts: dict[str, Any] = {}
        self.configs: list[Any] = []
        self.plan: Any = None
        self.jobs: list[Any] = []
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

    def source_entity(self, source: SourceFile, config_hash: str | None) -> Any:
        """The entity of a workflow file: its role and the SHA-256 it had when the run
        started (and whether it changed since)."""
        from prov.model import PROV_TYPE

        key = path_key(source.shown)
        attributes: dict[str, Any] = {
            "prov:label": source.path.name,
            "usher:path": source.shown,
            "usher:role": source.role,
            "usher:sha256": source.sha256,
            PROV_TYPE: self.usher[_ROLE_TYPES[source.role]],
        }
        if source.role == "config":
            attributes["usher:config_hash"] = config_hash or ""
        if not source.unchanged:
            attributes["usher:changed_since_run"] = True
        entity = self.doc.entity(f"file:{_local(key)}", attributes)
        self.entities[key] = entity
        return entity

    def add_workflow(self, described: WorkflowDescription, config_hash: str | None) -> None:
        """The workflow as a plan whose members are its files, and its config files as the
        config entities every job used."""
        from prov.model import PROV, PROV_TYPE

        for source in described.of_role("config"):
            self.configs.append(self.source_entity(source, config_hash))
        if not described.from_manifest:
            return
        attributes: list[tuple[str, Any]] = [
            (PROV_TYPE, PROV["Plan"]),
            (PROV_TYPE, PROV["Collection"]),
            ("prov:label", described.name),
            ("usher:workflow_name", described.name),
        ]
        if described.version:
            attributes.append(("usher:version", described.version))
        self.plan = self.doc.entity(f"workflow:{_local(described.name)}", attributes)
        for source in described.of_role("snakefile", "rules", "script"):
            self.doc.hadMember(self.plan, self.source_entity(source, None))

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
        for config in self.configs:
            doc.used(activity, config)
        for entry in record["outputs"]:
            product = self.entity(entry)
            doc.wasGeneratedBy(product, activity, ended)
            for source in used:
                doc.wasDerivedFrom(product, source, activity)
        for name, version in sorted((record.get("software") or {}).items()):
            doc.wasAssociatedWith(activity, self.software_agent(name, str(version)))
        doc.wasAssociatedWith(activity, self.host_agent(str(record.get("host") or "unknown")))
        self.jobs.append(activity)

    def add_run(self, described: WorkflowDescription, run: RunRecords) -> None:
        """The whole run as an activity that used the workflow and its config, run by
        Snakemake and usher_pipeline under the workflow as plan, and started every job."""
        if self.plan is None:
            return
        doc = self.doc
        starts = [t for t in (parse_time(r.get("started_at")) for r in run.records) if t]
        ends = [t for t in (parse_time(r.get("ended_at")) for r in run.records) if t]
        activity = doc.activity(
            f"run:{_local(described.name)}",
            min(starts) if starts else None,
            max(ends) if ends else None,
            {
                "prov:label": f"run of {described.name}",
                "usher:config_hash": run.config_hash() or "",
            },
        )
        doc.used(activity, self.plan)
        for config in self.configs:
            doc.used(activity, config)
        software = run.software()
        programs = [("usher_pipeline", described.pipeline_version)]
        if software.get("snakemake"):
            programs.append(("snakemake", software["snakemake"]))
        for name, version in programs:
            doc.wasAssociatedWith(activity, self.software_agent(name, version), self.plan)
        for job in self.jobs:
            doc.wasStartedBy(job, starter=activity)

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
    manifest: Manifest | None = None,
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
    doc = build_prov(run, config_path=config_path, progress=progress, manifest=manifest)
    try:
        write_text_atomic(path, doc.serialize(format="json", indent=2) + "\n")
    except OSError as exc:
        raise ProvWriteError(
            f"cannot write {path} ({exc.strerror or exc}): make {path.parent} writable or "
            "choose another FILE"
        ) from None
    return prov_counts(doc)
