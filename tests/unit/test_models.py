"""The pydantic models agree with the CRD schemas the API server enforces: fields, types, limits, defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from crdschema import QUANTITY_PATTERN
from pydantic import BaseModel, ValidationError

from taskpod.api.models import Task, TaskSpec, TaskStatus, TaskTemplateSpec, TaskTemplateStatus

CRDS = Path(__file__).resolve().parents[2] / "crds"
LIMITS = ("minLength", "maxLength", "minimum", "maximum", "pattern")


def crd_schema(filename: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / filename).read_text())
    (version,) = crd["spec"]["versions"]
    return dict(version["schema"]["openAPIV3Schema"])


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Follow $ref and drop the `null` branch pydantic adds for optional fields."""
    if "$ref" in schema:
        schema = {**defs[schema["$ref"].split("/")[-1]], **{k: v for k, v in schema.items() if k != "$ref"}}
    if "anyOf" in schema:
        branches = [_resolve(b, defs) for b in schema["anyOf"] if b.get("type") != "null"]
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        if len(branches) == 1:
            return {**branches[0], **rest}
        if sorted(b.get("type", "") for b in branches) == ["integer", "string"]:
            return {**rest, "type": "int-or-string"}
        raise AssertionError(f"unexpected union {branches}")
    return schema


def _kind(crd: dict[str, Any]) -> str:
    if crd.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    return str(crd.get("type"))


def _free_form(model: dict[str, Any]) -> bool:
    return (
        model.get("type") == "object"
        and "properties" not in model
        and model.get("additionalProperties", True) is True
    )


def compare(crd: dict[str, Any], model: dict[str, Any], defs: dict[str, Any], path: str) -> list[str]:
    model = _resolve(model, defs)
    problems: list[str] = []
    if _kind(crd) != model.get("type"):
        return [f"{path}: CRD type {_kind(crd)}, model type {model.get('type')}"]
    if crd.get("format") == "date-time" and model.get("format") != "date-time":
        problems.append(f"{path}: CRD says date-time, model does not")
    if crd.get("enum") != model.get("enum"):
        problems.append(f"{path}: enum {crd.get('enum')} vs {model.get('enum')}")
    for limit in LIMITS:
        if limit == "pattern" and crd.get(limit) == QUANTITY_PATTERN and limit not in model:
            continue  # the model passes a quantity through as int | str; the API server checked its form
        if crd.get(limit) != model.get(limit):
            problems.append(f"{path}: {limit} {crd.get(limit)} vs {model.get(limit)}")
    if "default" in crd and crd["default"] != {} and crd["default"] != model.get("default"):
        problems.append(f"{path}: default {crd['default']!r} vs {model.get('default')!r}")
    if crd.get("type") == "array":
        problems += compare(crd["items"], model["items"], defs, f"{path}[]")
    elif crd.get("type") == "object" and _free_form(model):
        pass  # the model passes it through as a dict (a Kubernetes type the CRD spells out, say)
    elif crd.get("type") == "object" and "properties" in crd:
        props = model.get("properties", {})
        if set(crd["properties"]) != set(props):
            problems.append(f"{path}: fields {sorted(crd['properties'])} vs {sorted(props)}")
        if set(crd.get("required", [])) != set(model.get("required", [])):
            problems.append(f"{path}: required {crd.get('required', [])} vs {model.get('required', [])}")
        for name in set(crd["properties"]) & set(props):
            problems += compare(crd["properties"][name], props[name], defs, f"{path}.{name}")
    elif crd.get("type") == "object":
        if "properties" in model:
            problems.append(f"{path}: free-form in the CRD, structured in the model")
        if "additionalProperties" in crd and isinstance(model.get("additionalProperties"), dict):
            problems += compare(
                crd["additionalProperties"], model["additionalProperties"], defs, f"{path}{{}}"
            )
    return problems


@pytest.mark.parametrize(
    ("filename", "field", "model"),
    [
        ("taskpod.dev_tasks.yaml", "spec", TaskSpec),
        ("taskpod.dev_tasks.yaml", "status", TaskStatus),
        ("taskpod.dev_tasktemplates.yaml", "spec", TaskTemplateSpec),
        ("taskpod.dev_tasktemplates.yaml", "status", TaskTemplateStatus),
    ],
)
def test_model_agrees_with_crd(filename: str, field: str, model: type[BaseModel]) -> None:
    schema = model.model_json_schema(by_alias=True)
    problems = compare(crd_schema(filename)["properties"][field], schema, schema.get("$defs", {}), field)
    assert problems == []


def test_the_comparison_catches_a_disagreement() -> None:
    crd = {"type": "object", "required": ["a"], "properties": {"a": {"type": "string", "maxLength": 5}}}

    class Wrong(BaseModel):
        a: str | None = None

    problems = compare(crd, Wrong.model_json_schema(), {}, "x")
    assert set(problems) == {
        "x.a: maxLength 5 vs None",
        "x: required ['a'] vs []",
    }


def test_a_model_may_pass_a_typed_object_through_as_a_dict() -> None:
    crd = {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}}},
    }

    class PassThrough(BaseModel):
        a: dict[str, Any] | None = None

    class Mistyped(BaseModel):
        a: dict[str, str] | None = None

    assert compare(crd, PassThrough.model_json_schema(), {}, "x") == []
    assert compare(crd, Mistyped.model_json_schema(), {}, "x") == ["x.a: fields ['b'] vs []"]


def test_every_crd_field_has_a_description() -> None:
    def missing(schema: dict[str, Any], path: str) -> list[str]:
        out = []
        for name, prop in schema.get("properties", {}).items():
            if name != "metadata" and not prop.get("description"):
                out.append(f"{path}.{name}")
            out += missing(prop, f"{path}.{name}")
        if "items" in schema:
            out += missing(schema["items"], f"{path}[]")
        return out

    for filename in ("taskpod.dev_tasks.yaml", "taskpod.dev_tasktemplates.yaml"):
        assert missing(crd_schema(filename), filename) == []


def test_a_task_body_parses_with_defaults() -> None:
    task = Task.model_validate(
        {
            "metadata": {"name": "fix-login-3f2a", "namespace": "team", "generation": 2},
            "spec": {"prompt": "Fix the flaky login test"},
        }
    )
    assert task.spec.paused is False
    assert task.spec.template == "default"
    assert task.status.phase is None


def test_the_model_rejects_what_the_api_server_rejects() -> None:
    with pytest.raises(ValidationError):
        TaskSpec.model_validate({"prompt": ""})
    with pytest.raises(ValidationError):
        TaskSpec.model_validate({"prompt": "x", "displayName": "d" * 65})
