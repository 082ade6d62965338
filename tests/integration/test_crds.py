"""The Task and TaskTemplate CRDs as a user meets them: the examples apply as they are, bad input is refused
with the field named, a running task's prompt is locked, status is a subresource, and kubectl explains and
lists tasks. Everything here is enforced by the API server alone; no operator runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from bench.writes import task_crd
from tests.support import ROOT, Kube, kubectl, wait_for

pytestmark = pytest.mark.integration

GROUP, VERSION = "taskpod.dev", "v1alpha1"
EXAMPLES = ROOT / "examples"
MERGE_PATCH = "application/merge-patch+json"
PROMPT_LOCKED = "the task must be paused to change its prompt"

Write = Callable[[client.CustomObjectsApi, str], object]


def task(name: str = "fix-login", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Task",
        "metadata": {"name": name},
        "spec": {"prompt": "Fix the flaky login test", **spec},
    }


def template(name: str = "default", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TaskTemplate",
        "metadata": {"name": name},
        "spec": {"pod": {"image": "example.invalid/workspace:1"}, **spec},
    }


def create(plural: str, body: dict[str, Any]) -> Write:
    return lambda api, ns: api.create_namespaced_custom_object(GROUP, VERSION, ns, plural, body)


def set_task_status(status: dict[str, Any]) -> Write:
    """Create a valid task, then write `status` to its status subresource (what the operator does)."""

    def write(api: client.CustomObjectsApi, ns: str) -> object:
        api.create_namespaced_custom_object(GROUP, VERSION, ns, "tasks", task())
        return api.patch_namespaced_custom_object_status(
            GROUP, VERSION, ns, "tasks", "fix-login", {"status": status}, _content_type=MERGE_PATCH
        )

    return write


def read_task(api: client.CustomObjectsApi, ns: str, name: str = "fix-login") -> dict[str, Any]:
    obj: dict[str, Any] = api.get_namespaced_custom_object(GROUP, VERSION, ns, "tasks", name)
    return obj


def patch_task(api: client.CustomObjectsApi, ns: str, patch: dict[str, Any]) -> object:
    return api.patch_namespaced_custom_object(
        GROUP, VERSION, ns, "tasks", "fix-login", patch, _content_type=MERGE_PATCH
    )


def test_the_examples_apply_and_the_api_server_fills_in_defaults(
    kube: Kube, crds: list[str], namespace: str
) -> None:
    out = kubectl(kube, "apply", "-n", namespace, "-f", str(EXAMPLES))
    assert "task.taskpod.dev/fix-flaky-login created" in out
    assert "tasktemplate.taskpod.dev/default created" in out

    api = client.CustomObjectsApi(kube.api)
    spec = read_task(api, namespace, "fix-flaky-login")["spec"]
    assert spec["prompt"] == "Fix the flaky login test in tests/test_auth.py"
    assert spec["displayName"] == "Fix flaky login test"
    assert spec["paused"] is False
    assert spec["template"] == "default"

    tmpl = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "tasktemplates", "default")["spec"]
    assert tmpl["agent"] == {"type": "claude", "port": 3284}
    assert tmpl["pod"]["image"] == "ghcr.io/taskpod-dev/workspace:0.1.0"
    assert tmpl["storage"] == {"size": "5Gi", "mountPath": "/workspace"}


@pytest.mark.parametrize(
    ("write", "field", "complaint"),
    [
        (create("tasks", task(prompt="")), "spec.prompt", "should be at least 1 chars long"),
        (create("tasks", task(prompt=" \n\t ")), "spec.prompt", "the prompt is empty"),
        (create("tasks", task(name="a" * 53)), "metadata.name", "at most 52 characters"),
        (create("tasks", task(name="2fa-login")), "metadata.name", "must start with a letter"),
        (create("tasks", task(displayName="x" * 65)), "spec.displayName", "may not be more than 64"),
        (create("tasks", task(paused="yes")), "spec.paused", "must be of type boolean"),
        (create("tasks", {**task(), "spec": {"displayName": "No prompt"}}), "spec.prompt", "Required value"),
        (create("tasks", task(template="Bad_Name")), "spec.template", "should match"),
        (set_task_status({"phase": "Running"}), "status.phase", "Unsupported value"),
        (
            create("tasktemplates", template(agent={"port": 70000})),
            "spec.agent.port",
            "less than or equal to",
        ),
        (create("tasktemplates", template(pod={})), "spec.pod.image", "Required value"),
        (
            create("tasks", task(repository={"url": "https://me:ghp_t0ken@forge.example/x.git"})),
            "spec.repository.url",
            "should match",
        ),
        (create("tasks", task(repository={"url": "/srv/git/x.git"})), "spec.repository.url", "should match"),
        (
            create("tasktemplates", template(repository={"url": "git@forge:x", "path": "../etc"})),
            "spec.repository.path",
            "should match",
        ),
        (create("tasks", task(repository={"ref": "-f"})), "spec.repository.ref", "should match"),
        (create("tasks", task(repository={"depth": -1})), "spec.repository.depth", "greater than or equal"),
        (
            create("tasks", task(repository={"secretRef": {"name": "Forge Token"}})),
            "spec.repository.secretRef.name",
            "should match",
        ),
    ],
    ids=[
        "empty-prompt",
        "blank-prompt",
        "name-too-long-for-the-workspace",
        "name-not-a-dns-label",
        "display-name-too-long",
        "paused-not-a-boolean",
        "missing-prompt",
        "template-not-a-name",
        "unknown-phase",
        "agent-port-out-of-range",
        "template-without-image",
        "repository-url-with-a-token",
        "repository-url-a-path",
        "repository-path-out-of-the-volume",
        "repository-ref-an-option",
        "repository-depth-negative",
        "repository-secret-not-a-name",
    ],
)
def test_invalid_input_is_rejected_naming_the_field(
    kube: Kube, crds: list[str], namespace: str, write: Write, field: str, complaint: str
) -> None:
    with pytest.raises(ApiException) as err:
        write(client.CustomObjectsApi(kube.api), namespace)
    assert err.value.status == 422, err.value.body
    assert field in err.value.body
    assert complaint in err.value.body, err.value.body


def test_a_52_character_name_is_accepted(kube: Kube, crds: list[str], namespace: str) -> None:
    api = client.CustomObjectsApi(kube.api)
    name = "a" * 50 + "-1"
    create("tasks", task(name=name))(api, namespace)
    assert read_task(api, namespace, name)["metadata"]["name"] == name


def test_the_prompt_can_change_only_while_paused(kube: Kube, crds: list[str], namespace: str) -> None:
    api = client.CustomObjectsApi(kube.api)
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, "tasks", task())

    # A running task keeps its prompt.
    with pytest.raises(ApiException) as err:
        patch_task(api, namespace, {"spec": {"prompt": "Fix the signup test instead"}})
    assert err.value.status == 422
    assert PROMPT_LOCKED in err.value.body and "spec.prompt" in err.value.body

    # Pause it first; then the prompt can change.
    patch_task(api, namespace, {"spec": {"paused": True}})
    patch_task(api, namespace, {"spec": {"prompt": "Fix the signup test instead"}})
    assert read_task(api, namespace)["spec"]["prompt"] == "Fix the signup test instead"

    # Changing it while resuming in the same edit is still a change to a running task.
    with pytest.raises(ApiException) as err:
        patch_task(api, namespace, {"spec": {"prompt": "Fix both tests", "paused": False}})
    assert err.value.status == 422
    assert PROMPT_LOCKED in err.value.body
    assert read_task(api, namespace)["spec"] == {
        "prompt": "Fix the signup test instead",
        "paused": True,
        "template": "default",
    }


URLS = [
    "https://github.com/acme/shop.git",
    "http://10.244.0.1:8080/shop.git",
    "ssh://git@forge.example.com:2222/acme/shop.git",
    "git@github.com:acme/shop.git",
    "git://forge.example.com/shop",
    "https://forge.example.com/gröup/ünïcode-repo",
]


def test_the_repository_example_applies(kube: Kube, crds: list[str], namespace: str) -> None:
    out = kubectl(kube, "apply", "-n", namespace, "-f", str(EXAMPLES / "repository"))
    assert "task.taskpod.dev/fix-login-in-shop created" in out
    spec = read_task(client.CustomObjectsApi(kube.api), namespace, "fix-login-in-shop")["spec"]
    assert spec["repository"]["url"] == "https://github.com/acme/shop.git"
    assert spec["repository"]["secretRef"] == {"name": "forge"}


def test_repositories_are_accepted_and_cannot_change_after_creation(
    kube: Kube, crds: list[str], namespace: str
) -> None:
    api = client.CustomObjectsApi(kube.api)
    for i, url in enumerate(URLS):
        repo = {"url": url, "ref": "release/v1.2+build", "branch": "taskpod/fix_login-2", "path": "src/shop"}
        create("tasks", task(f"repo-{i}", repository={**repo, "depth": 0, "secretRef": {"name": "forge"}}))(
            api, namespace
        )
        assert read_task(api, namespace, f"repo-{i}")["spec"]["repository"]["url"] == url
    create("tasktemplates", template(repository={"secretRef": {"name": "forge"}}))(api, namespace)

    create("tasks", task(repository={"url": URLS[0]}))(api, namespace)
    for change in ({"url": URLS[1]}, {"branch": "other"}, None):
        with pytest.raises(ApiException) as err:
            patch_task(api, namespace, {"spec": {"paused": True, "repository": change}})
        assert err.value.status == 422
        assert "the repository cannot be changed" in err.value.body, err.value.body
    # A task made without one cannot have one added either (its workspace may exist already).
    create("tasks", task("plain"))(api, namespace)
    with pytest.raises(ApiException) as err:
        api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "tasks", "plain", {"spec": {"repository": {"url": URLS[0]}}},
            _content_type=MERGE_PATCH,
        )  # fmt: skip
    assert "the repository cannot be changed" in err.value.body


def test_status_is_a_subresource(kube: Kube, crds: list[str], namespace: str) -> None:
    api = client.CustomObjectsApi(kube.api)
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, "tasks", task())

    # Writing status through the main resource is silently dropped (the rest of the patch applies).
    patch_task(api, namespace, {"metadata": {"labels": {"team": "auth"}}, "status": {"phase": "Active"}})
    obj = read_task(api, namespace)
    assert obj["metadata"]["labels"] == {"team": "auth"}
    assert "status" not in obj

    # Writing it through /status works, and cannot change the spec.
    api.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        "tasks",
        "fix-login",
        {"spec": {"paused": True}, "status": {"phase": "Active", "message": "The agent is up."}},
        _content_type=MERGE_PATCH,
    )
    obj = read_task(api, namespace)
    assert obj["status"] == {"phase": "Active", "message": "The agent is up."}
    assert obj["spec"]["paused"] is False


def test_kubectl_explains_and_lists_tasks(kube: Kube, crds: list[str], namespace: str) -> None:
    kubectl(kube, "apply", "-n", namespace, "-f", str(EXAMPLES))

    # The schema's descriptions are published (OpenAPI can lag the CRD's establishment by a moment).
    explained = wait_for(
        lambda: "stops the workspace pod" in kubectl(kube, "explain", "task.spec.paused"),
        30,
        "kubectl explain to show the Task schema",
    )
    assert explained
    explanation = kubectl(kube, "explain", "task.spec.paused")
    assert "FIELD: paused <boolean>" in explanation
    assert "false (the default) runs the workspace" in " ".join(explanation.split())

    listing = kubectl(kube, "get", "tasks", "-n", namespace)
    header, *rows = listing.splitlines()
    assert header.split() == ["NAME", "STATUS", "STATE", "STATE", "CHANGED", "MESSAGE", "AGE"]
    assert [row.split()[0] for row in rows] == ["fix-flaky-login"]

    # The short name and the category reach the same objects.
    assert "fix-flaky-login" in kubectl(kube, "get", "tk", "-n", namespace)
    everything = kubectl(kube, "get", "taskpod", "-n", namespace)
    assert "task.taskpod.dev/fix-flaky-login" in everything
    assert "tasktemplate.taskpod.dev/default" in everything


# -- The template's Pod-like fields, typed with Kubernetes' own schemas (hack/crdschema.py) ----------

IMAGE = "example.invalid/workspace:1"


def pod(**fields: Any) -> dict[str, Any]:
    return {"image": IMAGE, **fields}


def kubectl_refuses(kube: Kube, namespace: str, manifest: dict[str, Any]) -> str:
    """Apply `manifest` with kubectl as a user would (field validation Strict), which must fail: its error."""
    with pytest.raises(AssertionError) as err:
        kubectl(kube, "apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(manifest))
    return str(err.value)


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ({"storage": {"size": "lots"}}, "spec.storage.size in body should match '^(\\+|-)?"),
        (
            {"pod": pod(resources={"requests": {"cpu": "lots"}})},
            'spec.pod.resources.requests.cpu: Invalid value: "lots"',
        ),
        (
            {"pod": pod(resources={"limits": {"memory": "1 GiB"}})},
            'spec.pod.resources.limits.memory: Invalid value: "1 GiB"',
        ),
        (
            {"pod": pod(securityContext={"runAsUser": "root"})},
            "spec.pod.securityContext.runAsUser in body must be of type integer",
        ),
        (
            {"pod": pod(podSecurityContext={"fsGroup": "x"})},
            "spec.pod.podSecurityContext.fsGroup in body must be of type integer",
        ),
        (
            {
                "pod": pod(
                    tolerations=[{"key": "dedicated", "effect": "NoExecute", "tolerationSeconds": "300"}]
                )
            },
            "spec.pod.tolerations[0].tolerationSeconds in body must be of type integer",
        ),
        (
            {
                "pod": pod(
                    env=[{"name": "TOKEN", "valueFrom": {"secretKeyRf": {"name": "agent", "key": "t"}}}]
                )
            },
            'unknown field "spec.pod.env[0].valueFrom.secretKeyRf"',
        ),
        (
            {"pod": pod(securityContext={"capabilities": {"drop": ["ALL"]}, "runAsNonRot": True})},
            'unknown field "spec.pod.securityContext.runAsNonRot"',
        ),
        (
            {"pod": pod(env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "agent"}}}])},
            "spec.pod.env[0].valueFrom.secretKeyRef.key: Required value",
        ),
        ({"pod": pod(volumes=[{"name": "workspace", "emptyDir": {}}])}, "spec.pod.volumes: Invalid value"),
        ({"pod": pod(sidecars=[{"name": "agent", "image": "x:1"}])}, "the container names agent and clone"),
        (
            {"pod": pod(initContainers=[{"name": "clone", "image": "x:1"}])},
            "spec.pod.initContainers: Invalid",
        ),
        (
            {"pod": pod(volumeMounts=[{"name": "workspace", "mountPath": "/w"}])},
            "the workspace volume is mounted by taskpod",
        ),
        (
            {"pod": pod(sidecars=[{"name": "proxy", "image": "x:1", "ports": [{"containerPort": "80"}]}])},
            "spec.pod.sidecars[0].ports[0].containerPort",
        ),
        (
            {"pod": pod(volumes=[{"name": "cache", "emptyDir": {}, "hostPth": {}}])},
            'unknown field "spec.pod.volumes[0].hostPth"',
        ),
        (
            {"pod": pod(volumes=[{"name": "c", "emptyDir": {}}, {"name": "c", "emptyDir": {}}])},
            "spec.pod.volumes[1]: Duplicate value",
        ),
        ({"pod": pod(runtimeClassName="gVisor Sandbox")}, "spec.pod.runtimeClassName in body should match"),
    ],
    ids=[
        "storage-size-not-a-quantity",
        "cpu-request-not-a-quantity",
        "memory-limit-with-a-space",
        "run-as-user-not-an-integer",
        "fs-group-not-an-integer",
        "toleration-seconds-not-an-integer",
        "value-from-unknown-key",
        "security-context-unknown-key",
        "secret-key-ref-without-key",
        "a-volume-named-like-ours",
        "a-sidecar-named-like-the-agent",
        "an-init-container-named-like-the-clone",
        "a-mount-of-our-volume",
        "a-sidecar-port-not-an-integer",
        "a-volume-with-an-unknown-key",
        "two-volumes-of-one-name",
        "a-runtime-class-not-a-name",
    ],
)
def test_kubectl_refuses_a_template_whose_pod_fields_kubernetes_would_refuse(
    kube: Kube, crds: list[str], namespace: str, spec: dict[str, Any], complaint: str
) -> None:
    error = kubectl_refuses(kube, namespace, template("bad", **spec))
    assert complaint in error, error
    with pytest.raises(ApiException) as err:
        client.CustomObjectsApi(kube.api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "tasktemplates", "bad"
        )
    assert err.value.status == 404


def test_a_template_using_every_pod_field_is_accepted_and_reads_back_unchanged(
    kube: Kube, crds: list[str], namespace: str
) -> None:
    spec = {
        "pod": pod(
            env=[
                {"name": "MODE", "value": "review"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "agent-secrets", "key": "token"}}},
                {
                    "name": "CPUS",
                    "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}},
                },
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ],
            resources={"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": 2, "memory": "4Gi"}},
            securityContext={
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": False,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            podSecurityContext={
                "fsGroup": 1000,
                "fsGroupChangePolicy": "OnRootMismatch",
                "supplementalGroups": [2000],
                "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/agent.json"},
            },
            tolerations=[
                {"key": "dedicated", "operator": "Equal", "value": "agents", "effect": "NoSchedule"},
                {
                    "key": "node.kubernetes.io/unreachable",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
                {"operator": "Exists", "effect": ""},  # valid in a Pod: every effect
            ],
            volumes=[
                {"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}},
                {"name": "ca", "configMap": {"name": "ca"}},
            ],
            volumeMounts=[
                {"name": "cache", "mountPath": "/cache"},
                {"name": "ca", "mountPath": "/etc/ca", "readOnly": True},
            ],
            envFrom=[
                {"secretRef": {"name": "team-env"}},
                {"configMapRef": {"name": "team"}, "prefix": "TEAM_"},
            ],
            initContainers=[
                {
                    "name": "deps",
                    "image": "node:22",
                    "command": ["npm", "ci"],
                    "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"}],
                }
            ],
            sidecars=[
                {"name": "proxy", "image": "envoy:1", "ports": [{"containerPort": 15001, "protocol": "TCP"}]}
            ],
            imagePullSecrets=[{"name": "registry"}],
            runtimeClassName="gvisor",
            affinity={
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["agents"]}]}
                        ]
                    }
                }
            },
            priorityClassName="agents",
            hostAliases=[{"ip": "10.0.0.9", "hostnames": ["forge.internal"]}],
            dnsConfig={"options": [{"name": "ndots", "value": "2"}]},
            topologySpreadConstraints=[
                {
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                }
            ],
        ),
        "storage": {"size": "20Gi"},
    }
    out = kubectl(kube, "apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(template("full", **spec)))
    assert "tasktemplate.taskpod.dev/full created" in out

    api = client.CustomObjectsApi(kube.api)
    stored = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "tasktemplates", "full")["spec"]
    assert stored["pod"] == spec["pod"]
    assert stored["storage"] == {"size": "20Gi", "mountPath": "/workspace"}


def test_kubectl_explains_the_pod_fields_kubernetes_defines(kube: Kube, crds: list[str]) -> None:
    explain = "tasktemplate.spec.pod.securityContext.runAsUser"
    explained = wait_for(
        lambda: "FIELD: runAsUser <integer>" in kubectl(kube, "explain", explain),
        30,
        "kubectl explain to show the TaskTemplate's securityContext",
    )
    assert explained
    assert "The UID to run the entrypoint" in " ".join(kubectl(kube, "explain", explain).split())


# -- The status as one field to the API server's field manager ----------------------------------------


def test_a_status_written_before_it_was_one_field_shrinks_at_its_next_write(
    kube: Kube, crds: list[str], namespace: str
) -> None:
    """The operator is the status's one writer, so the CRD marks the status atomic: the API server tracks
    it as one field in managedFields, not leaf by leaf, which makes every Task write cheaper. A Task whose
    status an earlier release wrote (each leaf tracked) keeps working after the upgrade: the operator's
    next status write replaces the leaves by one field, and the user's server-side apply still goes
    through without a conflict. Run on a copy of the Task CRD under another group, so that the shared
    cluster's own CRD stays as shipped."""
    group = "upgrade.test.taskpod.dev"
    shipped = task_crd(group)
    status_schema = shipped["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status_schema.get("x-kubernetes-map-type") == "atomic"
    earlier = task_crd(group, atomic_status=False)  # as earlier releases had it
    ext = client.ApiextensionsV1Api(kube.api)
    api = client.CustomObjectsApi(kube.api)

    def install(crd: dict[str, Any]) -> None:
        kubectl(kube, "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=yaml.safe_dump(crd))
        kubectl(kube, "wait", "--for=condition=Established", "--timeout=60s", f"crd/tasks.{group}")

    def write_status(phase: str) -> dict[str, Any]:
        status = {
            "phase": phase,
            "message": "The agent is up." if phase == "Active" else "The workspace pod is stopped.",
            "workspace": {"claim": "workspace-fix-login-0", "lifetime": 1},
            "conditions": [
                {
                    "type": "Ready",
                    "status": str(phase == "Active"),
                    "reason": phase,
                    "message": "",
                    "lastTransitionTime": "2026-12-02T08:00:00Z",
                }
            ],
        }
        return dict(
            api.patch_namespaced_custom_object_status(
                group,
                VERSION,
                namespace,
                "tasks",
                "fix-login",
                {"status": status},
                field_manager="taskpod",
                _content_type=MERGE_PATCH,
            )
        )

    def operators_fields(obj: dict[str, Any]) -> dict[str, Any]:
        (entry,) = [m for m in obj["metadata"]["managedFields"] if m["manager"] == "taskpod"]
        return dict(entry["fieldsV1"])

    def user_applies(paused: bool) -> dict[str, Any]:
        manifest = task(paused=paused) | {"apiVersion": f"{group}/{VERSION}"}
        out = kubectl(
            kube,
            "apply",
            "--server-side",
            "-n",
            namespace,
            "-o",
            "json",
            "-f",
            "-",
            stdin=yaml.safe_dump(manifest),
        )
        return dict(yaml.safe_load(out))

    try:
        install(earlier)
        wait_for(lambda: user_applies(paused=False), 30, "the earlier CRD to be served")
        before = write_status("Active")
        assert set(operators_fields(before)["f:status"]) >= {"f:phase", "f:message", "f:workspace"}

        install(shipped)

        # The API server takes up a changed schema within moments: write until the status is one field.
        def one_field() -> dict[str, Any] | None:
            obj = write_status("Paused")
            return obj if operators_fields(obj) == {"f:status": {}} else None

        after = wait_for(
            one_field,
            30,
            "the status to be one field to the field manager",
            explain=lambda: operators_fields(write_status("Paused")),
        )
        assert after["status"]["phase"] == "Paused"
        assert after["status"]["workspace"] == {"claim": "workspace-fix-login-0", "lifetime": 1}
        assert len(str(after["metadata"]["managedFields"])) < len(str(before["metadata"]["managedFields"]))

        applied = user_applies(paused=True)  # the user's own manifest, as before the upgrade
        assert applied["spec"]["paused"] is True
        assert applied["status"]["phase"] == "Paused"
    finally:
        ext.delete_custom_resource_definition(f"tasks.{group}")
