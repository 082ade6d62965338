"""Type the TaskTemplate CRD's Pod-like fields with Kubernetes' own schemas: python hack/crdschema.py.

The source is Kubernetes' OpenAPI v3 for core/v1, from the k8s.io/kubernetes Go module that localkube
builds (in the Go module cache), or from a live API server of that version (--kubeconfig). Each field in
CRDS gets the schema of its Kubernetes type, converted to a CRD structural schema as controller-gen
converts it, written into the CRD file in place: the rest of the file, and each field's own `description`
and `default`, stay as written. --check only says whether the file is up to date.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from localkube import binaries
from localkube.binaries import KUBERNETES_VERSION

Schema = dict[str, Any]

CRD_DIR = Path(__file__).resolve().parents[1] / "crds"
OPENAPI_FILE = "api/openapi-spec/v3/api__v1_openapi.json"
OPENAPI_PATH = "/openapi/v3/api/v1"
HEADER = (
    f"# The Pod-like fields' schemas are Kubernetes {KUBERNETES_VERSION}'s own; regenerate them with "
    "`python hack/crdschema.py`."
)
HEADER_MARK = "# The Pod-like fields' schemas are Kubernetes"

# Field (under openAPIV3Schema; `[]` is the items, `{}` the values of a map) -> its type in Kubernetes.
CORE = "io.k8s.api.core.v1."
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
TEMPLATE_FIELDS = {
    "spec.pod.env[].valueFrom": CORE + "EnvVarSource",
    "spec.pod.resources.requests{}": QUANTITY,
    "spec.pod.resources.limits{}": QUANTITY,
    "spec.pod.securityContext": CORE + "SecurityContext",
    "spec.pod.podSecurityContext": CORE + "PodSecurityContext",
    "spec.pod.tolerations[]": CORE + "Toleration",
    "spec.pod.volumes[]": CORE + "Volume",
    "spec.pod.volumeMounts[]": CORE + "VolumeMount",
    "spec.pod.envFrom[]": CORE + "EnvFromSource",
    "spec.pod.initContainers[]": CORE + "Container",
    "spec.pod.sidecars[]": CORE + "Container",
    "spec.pod.imagePullSecrets[]": CORE + "LocalObjectReference",
    "spec.pod.affinity": CORE + "Affinity",
    "spec.pod.hostAliases[]": CORE + "HostAlias",
    "spec.pod.dnsConfig": CORE + "PodDNSConfig",
    "spec.pod.topologySpreadConstraints[]": CORE + "TopologySpreadConstraint",
    "spec.storage.size": QUANTITY,
}
# Each CRD file -> its fields typed from Kubernetes.
CRDS = {
    CRD_DIR / "taskpod.dev_tasktemplates.yaml": TEMPLATE_FIELDS,
    CRD_DIR / "taskpod.dev_tasks.yaml": {"spec.env[].valueFrom": CORE + "EnvVarSource"},
}

# controller-gen's forms of the types a CRD cannot reference.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)"
    r"|(\.[0-9]+))))?$"
)
INT_OR_STRING_FORM: Schema = {
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "x-kubernetes-int-or-string": True,
}
SCALARS: dict[str, Schema] = {
    QUANTITY: {**INT_OR_STRING_FORM, "pattern": QUANTITY_PATTERN},
    INT_OR_STRING: INT_OR_STRING_FORM,
}

KEPT = {"type", "format", "enum", "required", "description", "x-kubernetes-list-type"}
KEPT |= {"x-kubernetes-list-map-keys", "x-kubernetes-map-type"}
# Defaults would change objects; the rest is for strategic merge patch, which custom resources lack.
DROPPED = {"default", "x-kubernetes-patch-strategy", "x-kubernetes-patch-merge-key", "x-kubernetes-unions"}
WIDTH = 110  # the file's line length, as far as YAML can fold
HAND_WRITTEN = ("description", "default")  # a field's own, kept from the CRD file
ORDER = [
    "type", "format", "enum", "default", "anyOf", "pattern", "x-kubernetes-int-or-string", "description",
    "required", "items", "properties", "additionalProperties", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
]  # fmt: skip


def structural(
    node: Schema,
    schemas: dict[str, Schema],
    where: str,
    map_keys: frozenset[str] = frozenset(),
    keep_default: bool = False,
) -> Schema:
    """`node` as a CRD structural schema: references inlined, what CRDs refuse or would apply dropped.
    `map_keys`: when `node` is a list's item, the properties that key the list; their defaults stay (the
    API server requires a map key to be required or defaulted, as a Container port's protocol is)."""
    if ref := _reference(node, where):
        if ref in SCALARS:
            description = node.get("description") or schemas[ref].get("description")
            return _ordered({**SCALARS[ref], "description": description})
        # The field's own description says more than its type's.
        node = {**schemas[ref], **{k: v for k, v in node.items() if k not in ("$ref", "allOf")}}
    out: Schema = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {
                name: structural(p, schemas, f"{where}.{name}", keep_default=name in map_keys)
                for name, p in value.items()
            }
        elif key == "items":
            keys = frozenset(node.get("x-kubernetes-list-map-keys") or ())
            out[key] = structural(value, schemas, f"{where}[]", map_keys=keys)
        elif key == "additionalProperties" and isinstance(value, dict):
            out[key] = structural(value, schemas, f"{where}{{}}")
        elif key in KEPT or (key == "default" and keep_default):
            out[key] = value
        elif key not in DROPPED:
            raise ValueError(f"{where}: no CRD equivalent for {key}: {value!r}")
    return _ordered(out)


def _reference(node: Schema, where: str) -> str | None:
    """The type `node` refers to, by `$ref` or by an `allOf` of one `$ref` (how OpenAPI v3 adds siblings)."""
    refs = [node["$ref"]] if "$ref" in node else [part.get("$ref") for part in node.get("allOf", [])]
    if not refs:
        return None
    if len(refs) != 1 or not isinstance(refs[0], str):
        raise ValueError(f"{where}: cannot inline allOf {node['allOf']!r}")
    return refs[0].rsplit("/", 1)[-1]


def _ordered(schema: Schema) -> Schema:
    return dict(sorted(schema.items(), key=lambda item: ORDER.index(item[0])))


def field_schema(type_name: str, schemas: dict[str, Schema], field: str) -> Schema:
    """The schema a field of `type_name` gets, without a description (the CRD file's own says more)."""
    schema = structural({"$ref": f"#/components/schemas/{type_name}"}, schemas, field)
    schema.pop("description", None)
    return schema


def generate(text: str, openapi: Schema, fields: dict[str, str]) -> str:
    """The CRD file `text` with every field in `fields` typed from `openapi`, and the header line."""
    schemas = openapi["components"]["schemas"]
    for field, type_name in fields.items():
        schema = field_schema(type_name, schemas, field)
        text = _splice(text, _keys(field), schema)
        written = _at(yaml.safe_load(text), _keys(field))
        if {k: v for k, v in written.items() if k not in HAND_WRITTEN} != schema:
            raise AssertionError(f"{field}: the YAML written does not read back as the schema")
    return _with_header(text)


def _at(crd: Schema, keys: list[str]) -> Schema:
    (version,) = crd["spec"]["versions"]
    node: Schema = version["schema"]["openAPIV3Schema"]
    for key in keys:
        node = node[key]
    return node


# -- The CRD file as text, so that comments and hand-written style survive --------------------------

KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[^\s:#'\"-][^:]*):(?: |$)")


def _keys(field: str) -> list[str]:
    """`spec.pod.env[]` -> the YAML keys under openAPIV3Schema: properties, spec, ..., env, items."""
    keys = []
    for name in field.split("."):
        base = name.removesuffix("[]").removesuffix("{}")
        keys += ["properties", base]
        keys += ["items"] if name.endswith("[]") else ["additionalProperties"] if name.endswith("{}") else []
    return keys


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content(line: str) -> bool:
    return bool(line.strip()) and not line.lstrip().startswith("#")


def _block_end(lines: list[str], start: int) -> int:
    """The line after the block that the key on line `start` opens."""
    end = start + 1
    while end < len(lines) and (not _content(lines[end]) or _indent(lines[end]) > _indent(lines[start])):
        end += 1
    return end


def _children(lines: list[str], start: int) -> dict[str, tuple[int, int]]:
    """The keys of the mapping under the key on line `start`, each with its lines' range."""
    end = _block_end(lines, start)
    rows = [i for i in range(start + 1, end) if _content(lines[i])]
    if not rows:
        return {}
    heads = [
        (i, m["key"])
        for i in rows
        if (m := KEY_LINE.match(lines[i])) and len(m["indent"]) == _indent(lines[rows[0]])
    ]
    return {key: (i, heads[n + 1][0] if n + 1 < len(heads) else end) for n, (i, key) in enumerate(heads)}


def _splice(text: str, keys: list[str], schema: Schema) -> str:
    """Replace the schema at `keys` with `schema`, keeping the field's own description and default."""
    lines = text.splitlines(keepends=True)
    (line,) = [i for i, s in enumerate(lines) if KEY_LINE.match(s) and s.strip() == "openAPIV3Schema:"]
    for key in keys:
        line = _children(lines, line)[key][0]
    children = _children(lines, line)
    indent = " " * (_indent(lines[line]) + 2)
    parts = {k: lines[a:b] for k, (a, b) in children.items() if k in HAND_WRITTEN}
    parts |= {k: _dump({k: v}, indent) for k, v in schema.items() if k not in parts}
    body = [s for k in sorted(parts, key=ORDER.index) for s in parts[k]]
    end = _block_end(lines, line)
    return "".join(lines[: line + 1] + body + lines[end:])


class _Dumper(yaml.SafeDumper):
    """Block style, except lists of scalars in flow style ([a, b]) and multi-line text folded; no anchors
    (a schema met twice, as a Container's quantities are, is written out each time)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    # Folding would change lines that start with a space, so those stay literal.
    style = None if "\n" not in value else "|" if re.search(r"\n[ \t]", value) else ">"
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.Node:
    flow = all(not isinstance(v, dict | list) for v in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(list, _represent_list)


def _dump(value: Schema, indent: str) -> list[str]:
    text = yaml.dump(
        value, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=WIDTH - len(indent)
    )
    return [indent + s if s.strip() else s for s in text.splitlines(keepends=True)]


def _with_header(text: str) -> str:
    """The header line, after the file's first comment line; replaces an older one."""
    first, rest = text.split("\n", 1)
    rest = rest.split("\n", 1)[1] if rest.startswith(HEADER_MARK) else rest
    return f"{first}\n{HEADER}\n{rest}"


# -- Where Kubernetes' OpenAPI comes from ------------------------------------------------------------


def module_openapi() -> Path:
    """Where the k8s.io/kubernetes module localkube builds keeps core/v1's OpenAPI (present or not)."""
    cache = os.environ.get("GOMODCACHE")
    if not cache and (go := shutil.which("go")):
        cache = subprocess.run([go, "env", "GOMODCACHE"], capture_output=True, text=True).stdout.strip()
    base = Path(cache) if cache else Path(os.environ.get("GOPATH") or Path.home() / "go") / "pkg" / "mod"
    return base / f"k8s.io/kubernetes@{KUBERNETES_VERSION}" / OPENAPI_FILE


def server_openapi(kubeconfig: Path) -> Schema:
    """core/v1's OpenAPI as a live API server of KUBERNETES_VERSION serves it (read with kubectl)."""
    kubectl = shutil.which("kubectl") or str(binaries.ensure("kubectl"))

    def get(path: str) -> Schema:
        cmd = [kubectl, "--kubeconfig", str(kubeconfig), "get", "--raw", path]
        got: Schema = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        return got

    version = get("/version")["gitVersion"]
    if version != KUBERNETES_VERSION:
        raise SystemExit(
            f"the API server runs Kubernetes {version}; the schemas must be {KUBERNETES_VERSION}'s"
        )
    openapi: Schema = _without_enums(get(OPENAPI_PATH))
    return openapi


def _without_enums(node: Any) -> Any:
    """The document as Kubernetes' static spec has it: the API server adds enums (and lists them in the
    descriptions) that name the usual values, not all valid ones (a toleration's effect may be "")."""
    if isinstance(node, list):
        return [_without_enums(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _without_enums(v) for k, v in node.items() if k != "enum"}
    if isinstance(out.get("description"), str):
        out["description"] = out["description"].split("\n\nPossible enum values:")[0]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crdschema", description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", type=Path, help="read the OpenAPI from this cluster's API server")
    parser.add_argument("--check", action="store_true", help="only say whether the CRD file is up to date")
    args = parser.parse_args(argv)

    source = module_openapi()
    if args.kubeconfig:
        openapi = server_openapi(args.kubeconfig)
    elif source.exists():
        openapi = json.loads(source.read_text())
    else:
        parser.error(f"{source} is absent: build localkube (make binaries) or pass --kubeconfig")
    stale = []
    for crd_file, fields in CRDS.items():
        old = crd_file.read_text()
        new = generate(old, openapi, fields)
        if args.check:
            print(
                f"{crd_file.name} is "
                + ("up to date" if new == old else "out of date: run python hack/crdschema.py")
            )
            stale += [crd_file] if new != old else []
            continue
        crd_file.write_text(new)
        print(f"wrote {crd_file} ({len(old)} -> {len(new)} bytes), from Kubernetes {KUBERNETES_VERSION}")
    return int(bool(stale))


if __name__ == "__main__":
    sys.exit(main())
