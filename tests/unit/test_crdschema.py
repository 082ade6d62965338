"""hack/crdschema.py: Kubernetes' OpenAPI types become CRD structural schemas, written into the CRD file in
place, and the TaskTemplate CRD holds exactly what the generator writes."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from crdschema import (
    CORE,
    CRDS,
    QUANTITY,
    QUANTITY_PATTERN,
    TEMPLATE_FIELDS,
    generate,
    module_openapi,
    structural,
)

REF = "#/components/schemas/"
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"


def openapi(**types: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI v3 document with the given core/v1 types, plus the scalars Kubernetes defines."""
    schemas = {CORE + name: schema for name, schema in types.items()}
    schemas[QUANTITY] = {"description": "A quantity.", "oneOf": [{"type": "string"}, {"type": "number"}]}
    schemas[INT_OR_STRING] = {
        "description": "An int or a string.",
        "type": "string",
        "format": "int-or-string",
    }
    return {"components": {"schemas": schemas}}


def test_the_crd_files_are_what_the_generator_writes() -> None:
    source = module_openapi()
    if not source.exists():
        pytest.skip(f"Kubernetes' OpenAPI is not on this machine ({source}): make binaries fetches it")
    openapi_doc = json.loads(source.read_text())
    for crd_file, fields in CRDS.items():
        text = crd_file.read_text()
        assert generate(text, openapi_doc, fields) == text, f"{crd_file.name}: run python hack/crdschema.py"


def test_references_are_inlined_and_what_a_crd_refuses_is_dropped() -> None:
    doc = openapi(
        Probe={
            "description": "A probe.",
            "type": "object",
            "required": ["port"],
            "properties": {
                "port": {"allOf": [{"$ref": REF + INT_OR_STRING}], "description": "The port."},
                "limit": {"$ref": REF + QUANTITY},
                "handler": {
                    "allOf": [{"$ref": REF + CORE + "Handler"}],
                    "default": {},
                    "description": "How.",
                },
                "args": {
                    "type": "array",
                    "items": {"type": "string", "default": ""},
                    "x-kubernetes-list-type": "atomic",
                    "x-kubernetes-patch-strategy": "merge",
                },
            },
            "x-kubernetes-unions": [{"discriminator": "type"}],
        },
        Handler={"description": "A handler.", "type": "object", "properties": {"path": {"type": "string"}}},
    )
    schemas = doc["components"]["schemas"]
    assert structural({"$ref": REF + CORE + "Probe"}, schemas, "probe") == {
        "type": "object",
        "description": "A probe.",
        "required": ["port"],
        "properties": {
            "port": {
                "anyOf": [{"type": "integer"}, {"type": "string"}],
                "x-kubernetes-int-or-string": True,
                "description": "The port.",
            },
            "limit": {
                "anyOf": [{"type": "integer"}, {"type": "string"}],
                "pattern": QUANTITY_PATTERN,
                "x-kubernetes-int-or-string": True,
                "description": "A quantity.",  # the type's, as the field has none of its own
            },
            "handler": {"type": "object", "description": "How.", "properties": {"path": {"type": "string"}}},
            "args": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "atomic"},
        },
    }


def test_what_has_no_crd_equivalent_is_refused_naming_the_field() -> None:
    schemas = openapi(Odd={"type": "object", "properties": {"x": {"oneOf": [{"type": "string"}]}}})
    with pytest.raises(ValueError, match=r"odd\.x: no CRD equivalent for oneOf"):
        structural({"$ref": REF + CORE + "Odd"}, schemas["components"]["schemas"], "odd")


SMALL_CRD = """\
# A CRD with every generated field in its loose form.
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
spec:
  versions:
  - name: v1alpha1
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              pod:
                type: object
                properties:
                  env:
                    type: array
                    items:
                      type: object
                      properties:
                        valueFrom:
                          type: object
                          description: >-
                            Where the value comes from,
                            as in a Pod.
                          x-kubernetes-preserve-unknown-fields: true
                  resources:
                    type: object
                    properties:
                      requests:
                        type: object
                        additionalProperties:
                          x-kubernetes-int-or-string: true
                      limits:
                        type: object
                        additionalProperties:
                          x-kubernetes-int-or-string: true
                  securityContext:
                    type: object
                    x-kubernetes-preserve-unknown-fields: true
                  podSecurityContext:
                    type: object
                    x-kubernetes-preserve-unknown-fields: true
                  tolerations:
                    type: array
                    items:
                      type: object
                      x-kubernetes-preserve-unknown-fields: true
              storage:
                type: object
                properties:
                  size:
                    default: 10Gi
                    x-kubernetes-int-or-string: true
                    description: The volume size.  # ours
                  mountPath:
                    type: string
"""

USER = {"type": "object", "description": "A user.", "properties": {"uid": {"type": "integer"}}}


# The fields of the small CRD below: the first ones typed (the later ones go the same way).
SMALL_FIELDS = {
    field: kind
    for field, kind in TEMPLATE_FIELDS.items()
    if kind.rsplit(".", 1)[-1]
    in ("EnvVarSource", "SecurityContext", "PodSecurityContext", "Toleration", "Quantity")
}


def test_the_fields_are_typed_in_place_and_the_rest_of_the_file_stays_as_written() -> None:
    doc = openapi(EnvVarSource=USER, SecurityContext=USER, PodSecurityContext=USER, Toleration=USER)
    out = generate(SMALL_CRD, doc, SMALL_FIELDS)

    lines = out.splitlines()
    assert lines[0] == "# A CRD with every generated field in its loose form."
    assert lines[1].startswith("# The Pod-like fields' schemas are Kubernetes v")
    assert "python hack/crdschema.py" in lines[1]
    # The fields' own descriptions and defaults stay, as written.
    assert (
        "                          description: >-\n                            Where the value comes from,"
        in out
    )
    assert "                    description: The volume size.  # ours\n" in out
    assert "x-kubernetes-preserve-unknown-fields" not in out

    spec = yaml.safe_load(out)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    pod = spec["properties"]["pod"]["properties"]
    typed = {"type": "object", "properties": {"uid": {"type": "integer"}}}
    assert pod["env"]["items"]["properties"]["valueFrom"] == {
        **typed,
        "description": "Where the value comes from, as in a Pod.",
    }
    assert pod["securityContext"] == pod["podSecurityContext"] == pod["tolerations"]["items"] == typed
    quantity = {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": QUANTITY_PATTERN,
        "x-kubernetes-int-or-string": True,
    }
    assert pod["resources"]["properties"]["requests"]["additionalProperties"] == quantity
    assert spec["properties"]["storage"]["properties"]["size"] == {
        **quantity,
        "default": "10Gi",
        "description": "The volume size.",
    }
    assert spec["properties"]["storage"]["properties"]["mountPath"] == {"type": "string"}

    assert generate(out, doc, SMALL_FIELDS) == out  # a second run changes nothing
