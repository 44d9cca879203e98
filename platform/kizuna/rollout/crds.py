"""The CustomResourceDefinitions of ``resources.py``, derived from its pydantic models.

Kubernetes wants structural OpenAPI v3: no ``$ref``, ``nullable`` instead of a null
branch, boolean ``exclusiveMinimum``, and free-form maps marked as such. The chart's
``crds/`` files are written by ``python -m kizuna.rollout.crds charts/kizuna/crds`` and a
test checks they equal what this module makes now.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from kizuna.rollout.resources import (
    GROUP,
    PRINTER_COLUMNS,
    VERSION,
    PersonalitySpec,
    PersonalityStatus,
    RetrainRunSpec,
    RetrainRunStatus,
)

KINDS: dict[str, tuple[str, str, type[BaseModel], type[BaseModel]]] = {
    # kind: (plural, short name, spec, status)
    "Personality": ("personalities", "persona", PersonalitySpec, PersonalityStatus),
    "RetrainRun": ("retrainruns", "rr", RetrainRunSpec, RetrainRunStatus),
}
_DROPPED = {"title"}


def structural(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema (by alias), rewritten as a structural OpenAPI v3 schema."""
    schema = model.model_json_schema(by_alias=True)
    definitions = schema.pop("$defs", {})
    rewritten: dict[str, Any] = _rewrite(schema, definitions)
    return rewritten


def _rewrite(node: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_rewrite(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = definitions[node["$ref"].rsplit("/", 1)[-1]]
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return _rewrite({**target, **extra}, definitions)
    branches = node.get("anyOf")
    if branches and any(b == {"type": "null"} for b in branches):
        rest = [b for b in branches if b != {"type": "null"}]
        if len(rest) == 1:
            merged = {**{k: v for k, v in node.items() if k != "anyOf"}, **rest[0]}
            return {**_rewrite(merged, definitions), "nullable": True}
    result: dict[str, Any] = {}
    for key, value in node.items():
        # An empty-string default is read as null, and refused, by v1.20's API server
        # (found against a real one; newer servers accept it): the models' own defaults
        # fill those fields wherever they are read.
        if key in _DROPPED or (key == "default" and value in (None, "")):
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum"):
            result["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            result[key] = True
        elif key == "const":
            result["enum"] = [value]
        elif key == "properties":
            result[key] = {name: _rewrite(sub, definitions) for name, sub in value.items()}
        else:
            result[key] = _rewrite(value, definitions)
    if result.get("type") == "object" and "properties" not in result:
        result["x-kubernetes-preserve-unknown-fields"] = True
        result.pop("additionalProperties", None)
    if result.get("type") == "object" and "properties" in result:
        result.pop("additionalProperties", None)
    if "enum" in result and "type" not in result:
        result["type"] = "integer" if all(isinstance(v, int) for v in result["enum"]) else "string"
    return result


def crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition of ``kind``."""
    plural, short, spec, status = KINDS[kind]
    status_schema = structural(status)
    # kopf keeps its handler progress under status.kopf; let it through.
    status_schema["x-kubernetes-preserve-unknown-fields"] = True
    columns = [
        {"name": name, "type": kind_, "jsonPath": path}
        for name, kind_, path in PRINTER_COLUMNS[kind]
    ]
    if kind == "Personality":
        columns.append({"name": "Paused", "type": "boolean", "jsonPath": ".spec.paused"})
    columns.append({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["kizuna"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (spec.__doc__ or "").strip(),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": structural(spec),
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def write(directory: Path) -> list[Path]:
    """Write every CRD as ``<plural>.<group>.yaml`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, (plural, *_) in KINDS.items():
        path = directory / f"{plural}.{GROUP}.yaml"
        header = "# Generated by `python -m kizuna.rollout.crds`; edit resources.py instead.\n"
        path.write_text(header + yaml.safe_dump(crd(kind), sort_keys=False, allow_unicode=True))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write(Path(sys.argv[1] if len(sys.argv) > 1 else "charts/kizuna/crds")):
        print(written)
