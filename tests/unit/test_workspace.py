"""The workspace a Task owns, as the user sees it with kubectl: its volume claim and its pod."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest

from taskpod.api.models import REPOSITORY_PATH_PATTERN, Task, TaskTemplate
from taskpod.core.lifecycle import PodView
from taskpod.core.workspace import (
    Checkout,
    WorkspaceNames,
    checkout,
    checkout_name,
    claim,
    conflict,
    labels,
    merged_env,
    names,
    next_lifetime,
    pod,
    refusal,
    selector,
    spec_hash,
    template_status,
)

LIFETIME = "taskpod.dev/lifetime"
HASH = "taskpod.dev/spec-hash"
OWNER = {
    "apiVersion": "taskpod.dev/v1alpha1",
    "kind": "Task",
    "name": "fix-bug",
    "uid": "0b6e1f2a-1111-4c3d-9e8f-123456789abc",
    "controller": True,
    "blockOwnerDeletion": True,
}
OURS = {"app.kubernetes.io/managed-by": "taskpod", "taskpod.dev/task": "fix-bug"}
WORKSPACE_LABELS = {**OURS, "app.kubernetes.io/name": "taskpod-workspace"}
SECRET_KEY = {"secretKeyRef": {"name": "anthropic", "key": "api-key"}}
RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": 2147483648}}
CONTAINER_SECURITY = {"runAsNonRoot": True, "allowPrivilegeEscalation": False}
POD_SECURITY = {"fsGroup": 1000, "runAsUser": 1000}
TOLERATIONS = [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
TEMPLATE_ENV: list[dict[str, Any]] = [
    {"name": "MODEL", "value": "opus"},
    {"name": "API_KEY", "valueFrom": SECRET_KEY},
]
POD: dict[str, Any] = {
    "image": "ghcr.io/acme/agent:1",
    "imagePullPolicy": "Always",
    "command": ["agentapi", "server"],
    "args": ["--port", "8080", "--", "claude"],
    "env": TEMPLATE_ENV,
    "resources": RESOURCES,
    "securityContext": CONTAINER_SECURITY,
    "podSecurityContext": POD_SECURITY,
    "serviceAccountName": "agent",
    "annotations": {"example.com/team": "core"},
    "labels": {
        "example.com/tier": "agents",
        "taskpod.dev/task": "hijack",
        "app.kubernetes.io/managed-by": "x",
        "app.kubernetes.io/name": "mine",
    },
    "nodeSelector": {"kubernetes.io/arch": "amd64"},
    "tolerations": TOLERATIONS,
}
STORAGE = {"size": "20Gi", "storageClassName": "fast", "mountPath": "/home/agent/work"}
REPORT_URL = "https://taskpod-operator.taskpod-system.svc:8081/report"


def make_task(paused: bool = False, env: list[dict[str, Any]] | None = None) -> Task:
    meta = {"name": "fix-bug", "namespace": "dev", "uid": OWNER["uid"]}
    spec: dict[str, Any] = {"prompt": "Fix the bug", "template": "claude", "paused": paused}
    if env is not None:
        spec["env"] = env
    return Task.model_validate({"metadata": meta, "spec": spec})


def make_template(pod: dict[str, Any] | None = None, storage: dict[str, Any] | None = None) -> TaskTemplate:
    spec = {"agent": {"port": 8080}, "pod": {**POD, **(pod or {})}, "storage": storage or STORAGE}
    return TaskTemplate.model_validate({"metadata": {"name": "claude", "namespace": "dev"}, "spec": spec})


TASK = make_task()
TEMPLATE = make_template()
MINIMAL = TaskTemplate.model_validate(
    {"metadata": {"name": "plain", "namespace": "dev"}, "spec": {"pod": {"image": "agent:2"}}}
)


def build(
    task: Task = TASK, template: TaskTemplate = TEMPLATE, lifetime: int = 3, report_url: str | None = None
) -> dict[str, Any]:
    return pod(task, template, lifetime, report_url)


def container(body: dict[str, Any]) -> dict[str, Any]:
    (agent,) = body["spec"]["containers"]
    return dict(agent)


def volumes(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in body["spec"]["volumes"]}


def test_names_are_those_the_statefulset_gave_so_an_upgraded_task_keeps_its_volume() -> None:
    assert names("fix-bug") == WorkspaceNames(pod="fix-bug-0", claim="workspace-fix-bug-0")
    assert build()["metadata"]["name"] == "fix-bug-0"
    assert claim(TASK, TEMPLATE)["metadata"]["name"] == "workspace-fix-bug-0"


def test_claim_and_pod_identity_and_labels() -> None:
    volume, body = claim(TASK, TEMPLATE), build()
    assert (volume["apiVersion"], volume["kind"]) == ("v1", "PersistentVolumeClaim")
    assert (body["apiVersion"], body["kind"]) == ("v1", "Pod")
    assert volume["metadata"]["namespace"] == body["metadata"]["namespace"] == "dev"
    assert labels("fix-bug") == WORKSPACE_LABELS
    assert selector("fix-bug") == OURS
    assert volume["metadata"]["labels"] == WORKSPACE_LABELS
    # The template's labels are carried over, but ours win: the operator finds its pod by them.
    assert body["metadata"]["labels"] == {**WORKSPACE_LABELS, "example.com/tier": "agents", LIFETIME: "3"}


def test_both_are_owned_by_the_task() -> None:
    assert claim(TASK, TEMPLATE)["metadata"]["ownerReferences"] == [OWNER]
    assert build()["metadata"]["ownerReferences"] == [OWNER]
    assert PodView.parse(build()).owner_uid == OWNER["uid"]


CLAIMS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "size and class": (STORAGE, {"storage": "20Gi", "storageClassName": "fast"}),
    "no class: the cluster default": ({"size": "5Gi"}, {"storage": "5Gi"}),
    "default size": ({"storageClassName": "slow"}, {"storage": "10Gi", "storageClassName": "slow"}),
    "size in bytes": ({"size": 1073741824}, {"storage": "1073741824"}),
}


@pytest.mark.parametrize(("storage", "expected"), CLAIMS.values(), ids=CLAIMS.keys())
def test_the_claim_has_the_template_size_and_class(storage: dict[str, Any], expected: dict[str, Any]) -> None:
    spec = claim(TASK, make_template(storage=storage))["spec"]
    assert spec["accessModes"] == ["ReadWriteOnce"]
    assert spec["resources"] == {"requests": {"storage": expected["storage"]}}
    assert spec.get("storageClassName") == expected.get("storageClassName")
    assert set(spec) <= {"accessModes", "resources", "storageClassName"}


@pytest.mark.parametrize(
    ("template", "mount_path"),
    [(TEMPLATE, "/home/agent/work"), (MINIMAL, "/workspace")],
    ids=["set", "default"],
)
def test_the_pod_mounts_the_claim(template: TaskTemplate, mount_path: str) -> None:
    body = build(template=template)
    assert body["spec"]["volumes"] == [
        {"name": "workspace", "persistentVolumeClaim": {"claimName": "workspace-fix-bug-0"}}
    ]
    assert container(body)["volumeMounts"] == [{"name": "workspace", "mountPath": mount_path}]


def test_the_agent_port_is_named_and_probed() -> None:
    agent = container(build())
    assert agent["ports"] == [{"name": "agentapi", "containerPort": 8080, "protocol": "TCP"}]
    assert agent["readinessProbe"]["httpGet"] == {"path": "/status", "port": "agentapi"}
    assert PodView.parse(build()).agent_port == 8080


def test_the_template_pod_settings_are_carried_over() -> None:
    body = build()
    agent, spec = container(body), body["spec"]
    assert agent["name"] == "agent"
    assert (agent["image"], agent["command"], agent["args"]) == (POD["image"], POD["command"], POD["args"])
    assert agent["imagePullPolicy"] == "Always"
    assert agent["resources"] == RESOURCES
    assert agent["securityContext"] == CONTAINER_SECURITY
    assert spec["securityContext"] == POD_SECURITY
    assert spec["serviceAccountName"] == "agent"
    assert spec["nodeSelector"] == {"kubernetes.io/arch": "amd64"}
    assert spec["tolerations"] == TOLERATIONS
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert body["metadata"]["annotations"]["example.com/team"] == "core"
    for key in ("hostname", "subdomain"):  # the StatefulSet's; no Service resolves them any more
        assert key not in spec


def test_a_minimal_template_leaves_optional_fields_out() -> None:
    body = build(template=MINIMAL)
    agent, spec = container(body), body["spec"]
    assert agent["image"] == "agent:2"
    assert agent["ports"][0]["containerPort"] == 3284
    for key in ("command", "args", "resources", "securityContext", "imagePullPolicy"):
        assert key not in agent
    for key in ("securityContext", "serviceAccountName", "nodeSelector", "tolerations"):
        assert key not in spec
    assert spec["automountServiceAccountToken"] is False
    assert agent["env"] == []
    assert set(body["metadata"]["annotations"]) == {HASH}
    assert body["metadata"]["labels"] == {**WORKSPACE_LABELS, LIFETIME: "3"}


def test_with_a_report_url_the_agent_gets_a_token_for_the_operator_only() -> None:
    body = build(report_url=REPORT_URL)
    agent = container(body)
    token = {"audience": "taskpod", "expirationSeconds": 3600, "path": "token"}
    assert volumes(body)["taskpod-report"] == {
        "name": "taskpod-report",
        "projected": {"sources": [{"serviceAccountToken": token}]},
    }
    assert agent["volumeMounts"][1:] == [
        {"name": "taskpod-report", "mountPath": "/var/run/taskpod", "readOnly": True}
    ]
    assert agent["env"] == [
        *TEMPLATE_ENV,
        {"name": "TASKPOD_REPORT_URL", "value": REPORT_URL},
        {"name": "TASKPOD_REPORT_TOKEN_FILE", "value": "/var/run/taskpod/token"},
    ]
    assert body["spec"]["automountServiceAccountToken"] is False  # the token is the projected one only


def test_without_a_report_url_there_is_no_token() -> None:
    body = build()
    assert list(volumes(body)) == ["workspace"]
    assert not any(e["name"].startswith("TASKPOD_REPORT") for e in container(body)["env"])


@pytest.mark.parametrize("lifetime", [1, 2, 7])
def test_the_pod_carries_its_lifetime_as_a_label(lifetime: int) -> None:
    body = build(lifetime=lifetime)
    assert body["metadata"]["labels"][LIFETIME] == str(lifetime)
    assert LIFETIME not in body["metadata"]["annotations"]
    assert PodView.parse(body).lifetime == lifetime


ENVS: dict[str, tuple[list[dict[str, Any]] | None, list[dict[str, Any]]]] = {
    "template only": (None, TEMPLATE_ENV),
    "task overrides by name": (
        [{"name": "MODEL", "value": "sonnet"}, {"name": "REPO", "value": "acme/app"}],
        [{"name": "MODEL", "value": "sonnet"}, {"name": "API_KEY", "valueFrom": SECRET_KEY},
         {"name": "REPO", "value": "acme/app"}],
    ),
    "task valueFrom replaces a template value": (
        [{"name": "MODEL", "valueFrom": {"configMapKeyRef": {"name": "models", "key": "default"}}}],
        [{"name": "MODEL", "valueFrom": {"configMapKeyRef": {"name": "models", "key": "default"}}},
         {"name": "API_KEY", "valueFrom": SECRET_KEY}],
    ),
}  # fmt: skip


@pytest.mark.parametrize(("task_env", "expected"), ENVS.values(), ids=ENVS.keys())
def test_merged_env(task_env: list[dict[str, Any]] | None, expected: list[dict[str, Any]]) -> None:
    task = make_task(env=task_env)
    assert merged_env(TEMPLATE, task) == expected
    assert container(build(task))["env"] == expected


def view(lifetime: int | None) -> PodView:
    return PodView("fix-bug-0", "Running", lifetime=lifetime)


LIFETIMES: dict[str, tuple[int, PodView | None, int]] = {
    "first pod": (0, None, 1),
    "resumed": (3, None, 4),
    "replaced": (3, view(3), 4),
    "a pod made just before a crash, not recorded": (3, view(4), 5),
    "recorded is newer than the pod": (5, view(2), 6),
    "a pod without a lifetime": (2, view(None), 3),
    "a pod without a lifetime, nothing recorded": (0, view(None), 1),
}


@pytest.mark.parametrize(("recorded", "current", "expected"), LIFETIMES.values(), ids=LIFETIMES.keys())
def test_next_lifetime(recorded: int, current: PodView | None, expected: int) -> None:
    assert next_lifetime(recorded, current) == expected


def test_identical_inputs_give_identical_pods_and_hashes() -> None:
    first, second = build(report_url=REPORT_URL), build(report_url=REPORT_URL)
    assert first == second and spec_hash(first) == spec_hash(second)
    assert first["metadata"]["annotations"][HASH] == spec_hash(first) != ""
    assert PodView.parse(first).spec_hash == spec_hash(first)


def test_building_a_pod_leaves_the_template_as_it_was() -> None:
    template = make_template()
    before = template.model_dump()
    build(template=template, report_url=REPORT_URL)
    assert template.model_dump() == before
    assert HASH not in (template.spec.pod.annotations or {})


SAME_HASH: dict[str, dict[str, Any]] = {
    "another lifetime": {"lifetime": 4},
    "the first lifetime": {"lifetime": 1},
    "storage size (the claim's alone)": {"template": make_template(storage={**STORAGE, "size": "50Gi"})},
    "storage class (the claim's alone)": {
        "template": make_template(storage={**STORAGE, "storageClassName": "x"})
    },
    "paused": {"task": make_task(paused=True)},
}


@pytest.mark.parametrize("change", SAME_HASH.values(), ids=SAME_HASH.keys())
def test_what_the_pod_is_not_made_of_keeps_the_hash(change: dict[str, Any]) -> None:
    assert spec_hash(build(**change)) == spec_hash(build())


HASH_CHANGES: dict[str, dict[str, Any]] = {
    "image": {"template": make_template(pod={"image": "ghcr.io/acme/agent:2"})},
    "template env": {"template": make_template(pod={"env": [{"name": "MODEL", "value": "haiku"}]})},
    "task env": {"task": make_task(env=[{"name": "REPO", "value": "acme/app"}])},
    "template label": {"template": make_template(pod={"labels": {"example.com/tier": "other"}})},
    "template annotation": {"template": make_template(pod={"annotations": {"example.com/team": "ops"}})},
    "mount path": {"template": make_template(storage={**STORAGE, "mountPath": "/src"})},
    "report url": {"report_url": REPORT_URL},
}


@pytest.mark.parametrize("change", HASH_CHANGES.values(), ids=HASH_CHANGES.keys())
def test_a_changed_input_changes_the_hash(change: dict[str, Any]) -> None:
    assert spec_hash(build(**change)) != spec_hash(build())


@pytest.mark.parametrize(
    "obj",
    [build(), build(template=MINIMAL, report_url=REPORT_URL), claim(TASK, TEMPLATE), claim(TASK, MINIMAL)],
    ids=["pod", "minimal pod, report", "claim", "minimal claim"],
)
def test_everything_is_plain_json(obj: dict[str, Any]) -> None:
    assert json.loads(json.dumps(obj)) == obj


# -- a repository ----------------------------------------------------------------------------------

REPO = "https://git.example.com/acme/shop.git"


def with_repos(
    template_repo: dict[str, Any] | None, task_repo: dict[str, Any] | None
) -> tuple[Task, TaskTemplate]:
    task = TASK.model_copy(update={"spec": TASK.spec.model_copy(update={"repository": None})})
    raw_task = task.dump()
    if task_repo is not None:
        raw_task["spec"]["repository"] = task_repo
    raw_template = TEMPLATE.dump()
    if template_repo is not None:
        raw_template["spec"]["repository"] = template_repo
    return Task.model_validate(raw_task), TaskTemplate.model_validate(raw_template)


def clone_step(body: dict[str, Any]) -> dict[str, Any]:
    (init,) = body["spec"]["initContainers"]
    return dict(init)


def clone_env(body: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in clone_step(body)["env"] if e["name"].startswith("TASKPOD_")}


CHECKOUTS: dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None, Checkout | None]] = {
    "none": (None, None, None),
    "the template's, with defaults": (
        {"url": REPO},
        None,
        Checkout(url=REPO, branch="taskpod/fix-bug", path="shop", depth=1),
    ),
    "the task's alone": (
        None,
        {"url": "git@github.com:acme/api", "ref": "v2.1", "depth": 0},
        Checkout(url="git@github.com:acme/api", branch="taskpod/fix-bug", path="api", depth=0, ref="v2.1"),
    ),
    "the task's fields over the template's": (
        {"url": REPO, "ref": "main", "secretRef": {"name": "forge"}, "path": "src/shop"},
        {"url": "https://git.example.com/acme/web", "branch": "fix/login"},
        Checkout(
            url="https://git.example.com/acme/web",
            branch="fix/login",
            path="src/shop",
            depth=1,
            ref="main",
            secret="forge",
        ),
    ),
}


@pytest.mark.parametrize(("template_repo", "task_repo", "expected"), CHECKOUTS.values(), ids=CHECKOUTS.keys())
def test_the_checkout_is_the_templates_repository_with_the_tasks_fields_over_it(
    template_repo: dict[str, Any] | None, task_repo: dict[str, Any] | None, expected: Checkout | None
) -> None:
    task, template = with_repos(template_repo, task_repo)
    assert checkout(task, template) == expected
    assert refusal(task, template) is None


def test_a_repository_with_no_url_is_refused_with_the_reason() -> None:
    task, template = with_repos({"secretRef": {"name": "forge"}}, {"branch": "fix/login"})
    assert refusal(task, template) == (
        "The repository has no url: the task's and template claude's repository sets none."
    )
    with pytest.raises(ValueError, match="has no url"):
        build(task, template)


NAMES = {
    "https://git.example.com/acme/shop.git": "shop",
    "https://git.example.com/acme/shop/": "shop",
    "git@github.com:acme/api.git": "api",
    "git@github.com:api": "api",
    "ssh://git@host:2222/srv/repos/ünïcode.git": "n-code",
    "https://host/.git": "repo",
    "https://host/--x": "x",
}


@pytest.mark.parametrize(("url", "expected"), NAMES.items())
def test_the_checkout_is_named_as_git_clone_would_name_it(url: str, expected: str) -> None:
    assert checkout_name(url) == expected
    assert re.fullmatch(REPOSITORY_PATH_PATTERN, checkout_name(url))


def test_without_a_repository_there_is_no_clone_step_and_the_agent_starts_in_the_volume() -> None:
    body = build()
    assert "initContainers" not in body["spec"]
    assert "workingDir" not in container(body)


def test_the_clone_step_runs_before_the_agent_and_the_agent_starts_in_the_checkout() -> None:
    task, template = with_repos({"url": REPO, "ref": "release/1.2"}, None)
    body = build(task, template, report_url=REPORT_URL)
    step = clone_step(body)
    assert step["name"] == "clone"
    assert step["command"][:2] == ["sh", "-c"] and "git" in step["command"][2]
    # The same image, user and resources as the agent: the checkout is the agent's own.
    for field in ("image", "imagePullPolicy", "securityContext", "resources"):
        assert step[field] == container(body)[field]
    assert clone_env(body) == {
        "TASKPOD_REPO_URL": REPO,
        "TASKPOD_REPO_BRANCH": "taskpod/fix-bug",
        "TASKPOD_REPO_DIR": "/home/agent/work/shop",
        "TASKPOD_REPO_DEPTH": "1",
        "TASKPOD_REPO_REF": "release/1.2",
    }
    assert step["volumeMounts"] == [{"name": "workspace", "mountPath": "/home/agent/work"}]
    assert container(body)["workingDir"] == "/home/agent/work/shop"
    assert {"name": "TASKPOD_CHECKOUT", "value": "/home/agent/work/shop"} in container(body)["env"]
    # Its git state is reported once more as the pod stops (a pause), by the image's reporter if it has one.
    (hook,) = [container(body)["lifecycle"]["preStop"]["exec"]["command"]]
    assert hook[:2] == ["sh", "-c"] and "taskpod-git-state once" in hook[2]
    assert "lifecycle" not in container(build(task, template))  # no report endpoint: no one to tell
    # The template's variables (a proxy, GIT_* settings) reach the clone; the report token does not.
    names_ = [e["name"] for e in step["env"]]
    assert names_[:2] == ["MODEL", "API_KEY"]
    assert not any(n.startswith("TASKPOD_REPORT") for n in names_)
    # The operator shows git's own words when it fails: the kubelet keeps them as its termination message.
    assert step["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_the_credentials_secret_is_mounted_in_the_clone_step_only() -> None:
    task, template = with_repos({"url": REPO, "secretRef": {"name": "forge-token"}}, None)
    body = build(task, template)
    assert volumes(body)["taskpod-git-credentials"] == {
        "name": "taskpod-git-credentials",
        # Optional: a missing Secret is the clone step's error, named, not a pod that never starts.
        "secret": {"secretName": "forge-token", "defaultMode": 0o444, "optional": True},
    }
    mount = {"name": "taskpod-git-credentials", "mountPath": "/var/run/taskpod/git", "readOnly": True}
    assert mount in clone_step(body)["volumeMounts"]
    assert clone_env(body)["TASKPOD_GIT_CREDENTIALS"] == "/var/run/taskpod/git"
    assert clone_env(body)["TASKPOD_GIT_SECRET"] == "forge-token"
    agent = container(body)
    assert all(m["name"] != "taskpod-git-credentials" for m in agent["volumeMounts"])
    assert all("GIT_CREDENTIALS" not in e["name"] for e in agent["env"])


def test_the_clone_step_is_seen_by_the_pod_view() -> None:
    task, template = with_repos({"url": REPO}, None)
    view = PodView.parse(build(task, template))
    assert view.clone is not None and view.clone.url == REPO
    assert PodView.parse(build()).clone is None


def test_with_push_the_agent_gets_the_credentials_through_gits_helper_and_nothing_else() -> None:
    task, template = with_repos({"url": REPO, "secretRef": {"name": "forge"}, "push": True}, None)
    agent = container(build(task, template, report_url=REPORT_URL))
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["TASKPOD_PUSH"] == "true"
    assert {k: env[k] for k in ("GIT_CONFIG_KEY_1", "TASKPOD_GIT_CREDENTIALS")} == {
        "GIT_CONFIG_KEY_1": "credential.helper",
        "TASKPOD_GIT_CREDENTIALS": "/var/run/taskpod/git",
    }
    assert "$c/password" in env["GIT_CONFIG_VALUE_1"]  # read when git asks: no secret in the pod spec
    assert {
        "name": "taskpod-git-credentials",
        "mountPath": "/var/run/taskpod/git",
        "readOnly": True,
    } in agent["volumeMounts"]
    # Without push, or without a Secret, the agent has none of it.
    for repo in ({"url": REPO, "secretRef": {"name": "forge"}}, {"url": REPO, "push": True}):
        agent = container(build(*with_repos(repo, None), report_url=REPORT_URL))
        names_ = {e["name"] for e in agent["env"]}
        assert not names_ & {"TASKPOD_GIT_CREDENTIALS", "GIT_CONFIG_COUNT", "GIT_SSH_COMMAND"}
        assert ("TASKPOD_PUSH" in names_) == bool(repo.get("push"))


# -- what a Pod takes, merged with taskpod's own parts ------------------------------------------------

CACHE = {"name": "cache", "emptyDir": {}}
PROXY = {"name": "proxy", "image": "envoy:1", "ports": [{"containerPort": 15001}]}
DEPS = {"name": "deps", "image": "node:22", "command": ["npm", "ci"]}
POD_EXTRAS: dict[str, Any] = {
    "volumes": [CACHE],
    "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
    "envFrom": [{"secretRef": {"name": "team-env"}}],
    "initContainers": [DEPS],
    "sidecars": [PROXY],
    "imagePullSecrets": [{"name": "registry"}],
    "runtimeClassName": "gvisor",
    "affinity": {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}
    },
    "priorityClassName": "agents",
    "hostAliases": [{"ip": "10.0.0.9", "hostnames": ["forge.internal"]}],
    "dnsConfig": {"options": [{"name": "ndots", "value": "2"}]},
    "topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}
    ],
}


def test_what_a_pod_takes_is_merged_with_taskpods_own_parts_which_come_first() -> None:
    task, _ = with_repos(None, None)
    raw = make_template(pod=POD_EXTRAS).dump()
    template = TaskTemplate.model_validate({**raw, "spec": {**raw["spec"], "repository": {"url": REPO}}})
    body = build(task, template, report_url=REPORT_URL)
    spec = body["spec"]
    assert [v["name"] for v in spec["volumes"]] == ["workspace", "cache", "taskpod-report"]
    agent = container(body)
    assert [m["name"] for m in agent["volumeMounts"]] == ["workspace", "cache", "taskpod-report"]
    assert agent["envFrom"] == [{"secretRef": {"name": "team-env"}}]
    # Sidecars first (a proxy the clone may need), as native sidecars; then the clone; then the template's
    # init containers, which find the checkout.
    assert [(c["name"], c.get("restartPolicy")) for c in spec["initContainers"]] == [
        ("proxy", "Always"),
        ("clone", None),
        ("deps", None),
    ]
    for field in ("imagePullSecrets", "runtimeClassName", "affinity", "priorityClassName", "hostAliases"):
        assert spec[field] == POD_EXTRAS[field], field
    assert spec["dnsConfig"] == POD_EXTRAS["dnsConfig"]
    assert spec["topologySpreadConstraints"] == POD_EXTRAS["topologySpreadConstraints"]
    assert [c["name"] for c in spec["containers"]] == ["agent"]
    assert refusal(task, template) is None


OWN_VOLUME = {"volumes": [{"name": "workspace", "emptyDir": {}}]}
REPORT_VOLUME = {"volumes": [{"name": "taskpod-report", "emptyDir": {}}]}
CONFLICTS: dict[str, tuple[dict[str, Any], str]] = {
    "our volume's name": (OWN_VOLUME, "spec.pod.volumes: the volume name workspace"),
    "the report token's": (REPORT_VOLUME, "taskpod-report is taskpod's own"),
    "the agent's name for an init container": (
        {"initContainers": [{**DEPS, "name": "agent"}]}, "spec.pod.initContainers: the container name agent"
    ),
    "the clone's name for a sidecar": (
        {"sidecars": [{**PROXY, "name": "clone"}]}, "spec.pod.sidecars: the container name clone"
    ),
    "a mount of no volume": (
        {"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, "nope is not one of spec.pod.volumes"
    ),
    "a mount of the workspace": (
        {"volumeMounts": [{"name": "workspace", "mountPath": "/x"}]}, "workspace is not one of"
    ),
    "a mount where the workspace is": (
        {"volumes": [CACHE], "volumeMounts": [{"name": "cache", "mountPath": "/home/agent/work"}]},
        "/home/agent/work is where the workspace volume is",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("extras", "says"), CONFLICTS.values(), ids=CONFLICTS.keys())
def test_a_template_that_would_shadow_taskpods_parts_is_refused_naming_the_field(
    extras: dict[str, Any], says: str
) -> None:
    template = make_template(pod=extras)
    assert says in (conflict(template) or "")
    assert (refusal(TASK, template) or "").startswith("TaskTemplate claude cannot be used: spec.pod.")


NOW_ = dt.datetime(2026, 12, 1, 6, 0, tzinfo=dt.UTC)


def test_a_templates_ready_condition_says_whether_tasks_can_use_it_and_is_written_only_on_change() -> None:
    bad = make_template(pod={"volumeMounts": [{"name": "nope", "mountPath": "/x"}]})
    status = template_status(bad, NOW_)
    assert status is not None
    (ready,) = status["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "Conflict")
    assert (
        ready["message"] == "Tasks cannot use it: spec.pod.volumeMounts: nope is not one of spec.pod.volumes."
    )
    stored = TaskTemplate.model_validate({**bad.dump(), "status": status})
    assert template_status(stored, NOW_ + dt.timedelta(minutes=1)) is None  # said already: no write

    fixed = TaskTemplate.model_validate({**make_template().dump(), "status": status})
    (ready,) = (template_status(fixed, NOW_ + dt.timedelta(minutes=2)) or {})["conditions"]
    assert (ready["status"], ready["reason"], ready["message"]) == ("True", "Accepted", "Tasks can use it.")
    assert ready["lastTransitionTime"] == "2026-12-01T06:02:00Z"
