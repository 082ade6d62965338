"""Property-based tests through the real API server: an adversary's inputs, not the author's.

Hypothesis makes Tasks, TaskTemplates and agent conversations out of any Unicode (4-byte characters,
control characters, lone surrogates), maximum lengths and any field values, applies them to the control
plane, and pauses and resumes them. The property, for every input: the API server refuses it naming the
field, or the task ends in a phase with a message; and a pause always scales the workspace down.

`make test` runs a bounded number of examples (profile "ci"); `make properties` runs many more
(HYPOTHESIS_PROFILE=long). A failure prints the smallest input that shows it.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from taskpod import kube as taskkube
from taskpod.api.models import Task, TaskTemplate, storable
from taskpod.core import workspace
from taskpod.core.agentstate import summary
from taskpod.core.snapshots import tidy
from tests.support import (
    SIM,
    Kube,
    Operator,
    agent_messages,
    agent_url,
    delivered,
    get_task,
    patch_task,
    sim_config,
    tasks_api,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.local_pods]
GROUP = ("taskpod.dev", "v1alpha1")
PHASES = {"Pending", "Initializing", "Active", "Paused", "Error", "Unknown"}
SETTLED = {"Active", "Paused", "Error", "Unknown"}
_serial = itertools.count()

# -- what an adversary types -------------------------------------------------------------------------

# Any character, lone surrogates included now and then: the Python client sends them as JSON escapes
# that the API server turns into U+FFFD.
CHARACTERS = st.one_of(st.characters(), st.characters(categories=["Cs"]))
ANY_TEXT = st.text(CHARACTERS, max_size=80)
ASTRAL = st.characters(min_codepoint=0x10000)  # 4-byte characters in UTF-8: emoji and the like
LONG = st.builds(
    lambda ch, n: ch * n, st.one_of(st.characters(), ASTRAL), st.sampled_from([1, 64, 65, 65536, 65537])
)
# Valid-looking inputs are drawn more often than junk, so that most examples reach the operator.
PROMPTS = st.one_of(
    ANY_TEXT.filter(str.strip), st.text(ASTRAL, min_size=1, max_size=20), LONG, ANY_TEXT, st.just("   ")
)
ENV_NAMES = st.one_of(
    st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,20}\Z"), st.from_regex(r"\A[ -<>-~]{1,20}\Z"), ANY_TEXT
)
ENV = st.lists(
    st.fixed_dictionaries({"name": ENV_NAMES}, optional={"value": st.one_of(ANY_TEXT, LONG)}), max_size=3
)
TEMPLATE_NAMES = st.one_of(st.just("default"), st.sampled_from(["missing", "Not.A_Name", "a" * 254]))
VALID_NAMES = st.from_regex(r"\A[a-z][a-z0-9-]{0,50}[a-z0-9]\Z")
TASK_NAMES = st.one_of(
    VALID_NAMES, VALID_NAMES, VALID_NAMES, st.from_regex(r"\A[a-z][a-z0-9-]{50,60}\Z"), ANY_TEXT
)
# Lifecycle automation's durations: ones that cannot fire within a test (or turn it off), and anything else,
# which the API server must refuse naming the field.
DURATIONS = st.one_of(
    st.sampled_from(["30m", "1h30m", "24h", "0", "0s", "30", "1d", "-5m", "5 m", "", "9" * 30]), ANY_TEXT
)
AUTOMATION = {
    "idlePause": DURATIONS,
    "deleteAfterFinish": DURATIONS,
    "pauseOnFinish": st.one_of(st.booleans(), st.booleans(), ANY_TEXT, st.integers()),
}
TASK_SPECS = st.fixed_dictionaries(
    {"prompt": PROMPTS},
    optional={
        "displayName": st.one_of(ANY_TEXT, LONG),
        "env": ENV,
        "template": st.one_of(st.just("default"), st.just("default"), TEMPLATE_NAMES),
        "paused": st.booleans(),
        **AUTOMATION,
    },
)
# Values JSON can carry: no NaN and no infinity, which no client can send (json.dumps writes `Infinity`,
# and the API server refuses the body before reading a field; CI drew one by chance).
JSON_VALUES = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), ANY_TEXT
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(ANY_TEXT, inner, max_size=3)),
    max_leaves=6,
)
QUANTITIES = st.one_of(
    st.sampled_from(["1Gi", "500m", "2", "0", "lots", "1 GiB", "-1", "1e3", ""]), ANY_TEXT, st.integers()
)
OBJECTS = partial(st.dictionaries, values=JSON_VALUES, max_size=2)  # keys known or not, values of any type
RESOURCES = st.fixed_dictionaries(
    {},
    optional={
        "requests": st.dictionaries(st.sampled_from(["cpu", "memory", "bad key!"]), QUANTITIES, max_size=2),
        "limits": st.dictionaries(st.sampled_from(["cpu", "memory"]), QUANTITIES, max_size=2),
    },
)
POD = st.fixed_dictionaries(
    {"image": st.one_of(st.just("agent:1"), ANY_TEXT)},
    optional={
        "imagePullPolicy": st.sampled_from(["Always", "Never", "IfNotPresent", "Sometimes"]),
        "command": st.lists(ANY_TEXT, max_size=2),
        "env": ENV,
        "resources": RESOURCES,
        "securityContext": OBJECTS(st.sampled_from(["runAsUser", "runAsNonRoot", "capabilities", "made-up"])),
        "podSecurityContext": OBJECTS(st.sampled_from(["fsGroup", "runAsGroup", "x"])),
        "serviceAccountName": st.one_of(st.just("default"), ANY_TEXT),
        "annotations": st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=2),
        "labels": st.dictionaries(st.one_of(st.just("taskpod.dev/task"), ANY_TEXT), ANY_TEXT, max_size=2),
        "nodeSelector": st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=1),
        "tolerations": st.lists(OBJECTS(st.sampled_from(["key", "operator", "effect", "x"])), max_size=2),
    },
)
STORAGE = st.fixed_dictionaries(
    {},
    optional={
        "size": QUANTITIES,
        "storageClassName": st.one_of(st.just("standard"), ANY_TEXT),
        "mountPath": st.one_of(st.just("/workspace"), ANY_TEXT),
    },
)
AGENT = st.fixed_dictionaries({}, optional={"type": ANY_TEXT, "port": st.integers(-1, 70000)})
TEMPLATE_SPECS = st.fixed_dictionaries(
    {"pod": POD}, optional={"displayName": ANY_TEXT, "agent": AGENT, "storage": STORAGE, **AUTOMATION}
)


# -- what the property checks ------------------------------------------------------------------------


def unique(name: str) -> str:
    """A name no earlier example used, keeping the drawn name's length and, for a valid one, validity."""
    tag = f"p{next(_serial):03d}"
    return tag + name[len(tag) :] if re.fullmatch(r"[a-z][a-z0-9-]*", name) and len(name) > len(tag) else name


def refused_naming_a_field(exc: ApiException) -> str:
    """The API server's refusal, which must say which field is wrong."""
    assert exc.status in (400, 422), f"not a refusal of the input: {exc.status} {exc.body}"
    message = taskkube.api_message(exc)
    assert re.search(r"\b(spec|metadata)(\.|\[|\b)", message), f"the refusal names no field: {message}"
    # "<nil>" is how the API server names no field (a validation rule without a fieldPath, say). Its own
    # such lines name the field in their text ('"spec.storage.size" must validate at least one schema'),
    # or say that some rules were not checked, which is fine.
    for item in re.finditer(r"<nil>: Invalid value: (.{0,200})", message):
        said = item.group(1)
        assert said.startswith("null: some validation rules") or re.search(r"(spec|metadata)\.", said), (
            message
        )
    return message


def create(kube: Kube, namespace: str, plural: str, name: str, spec: dict[str, Any]) -> bool:
    """Create the object; False when the API server refuses it (having checked that it names the field)."""
    kind = "Task" if plural == "tasks" else "TaskTemplate"
    body = {"apiVersion": "/".join(GROUP), "kind": kind, "metadata": {"name": name}, "spec": spec}
    try:
        tasks_api(kube).create_namespaced_custom_object(*GROUP, namespace, plural, body)
    except ApiException as exc:
        why = refused_naming_a_field(exc)
        if currently_in_test_context():
            event(f"{kind} refused: {why.split(' is invalid: ')[-1][:40]}")
        return False
    if currently_in_test_context():
        event(f"{kind} created")
    return True


def told(kube: Kube, namespace: str, name: str, phases: set[str] = PHASES) -> dict[str, Any] | None:
    """The task once its status has a phase (one of `phases`) and a message for its current spec."""
    task = get_task(kube, namespace, name)
    status = task.get("status") or {}
    current = status.get("observedGeneration") == task["metadata"]["generation"]
    return task if current and status.get("phase") in phases and status.get("message") else None


def running_pods(kube: Kube, namespace: str, name: str) -> list[str]:
    """The task's own workspace pods that are not on their way out. Examples reuse names (shrinking
    does, often), and a deleted namesake's pod may still await garbage collection: not this task's (the
    operator never adopts it), so it does not count."""
    uid = get_task(kube, namespace, name)["metadata"]["uid"]
    pods = kube.core.list_namespaced_pod(namespace, label_selector=f"taskpod.dev/task={name}").items
    return [
        p.metadata.name
        for p in pods
        if p.metadata.deletion_timestamp is None and uid in [o.uid for o in p.metadata.owner_references or []]
    ]


def live_through_pause_and_resume(kube: Kube, namespace: str, name: str) -> None:
    """The task has a phase and a message; a pause stops its workspace pod and ends Paused; a resume
    gives it a phase and a message again."""
    explain = partial(get_task, kube, namespace, name)
    wait_for(
        partial(told, kube, namespace, name, SETTLED | {"Pending", "Initializing"}),
        60,
        "a phase",
        explain=explain,
    )
    patch_task(kube, namespace, name, {"paused": True})
    wait_for(partial(told, kube, namespace, name, {"Paused"}), 60, "Paused", explain=explain)
    assert running_pods(kube, namespace, name) == [], "a paused task's workspace still runs"
    patch_task(kube, namespace, name, {"paused": False})
    wait_for(partial(told, kube, namespace, name), 60, "a phase after resume", explain=explain)
    tasks_api(kube).delete_namespaced_custom_object(*GROUP, namespace, "tasks", name)


@pytest.fixture
def sim_template(kube: Kube, namespace: str) -> None:
    body = {"pod": {"image": "agent:1", "annotations": {SIM: json.dumps({"work_seconds": 0.1})}}}
    assert create(kube, namespace, "tasktemplates", "default", body)


# -- the properties ----------------------------------------------------------------------------------


@given(text=st.text(CHARACTERS, max_size=300))
def test_any_text_survives_a_server_side_apply(
    kube: Kube, namespace: str, user_credentials: None, text: str
) -> None:
    """What the operator applies (workspaces, snapshots) comes back as it went, whatever the text."""
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "any-text", "namespace": namespace, "annotations": {"note": text}},
        "data": {"text": text},
    }
    applied = taskkube.run(taskkube.apply(configmap))
    assert applied["data"].get("text", "") == storable(text)
    assert applied["metadata"]["annotations"].get("note", "") == storable(text)


@given(name=TASK_NAMES, spec=TASK_SPECS)
def test_any_task_is_refused_by_name_or_gets_a_phase_and_pauses(
    kube: Kube,
    namespace: str,
    simulator: object,
    operator: Operator,
    sim_template: None,
    name: str,
    spec: dict[str, Any],
) -> None:
    name = unique(name)
    if create(kube, namespace, "tasks", name, spec):
        live_through_pause_and_resume(kube, namespace, name)


@given(template=TEMPLATE_SPECS, prompt=PROMPTS)
def test_any_template_is_refused_by_name_or_its_task_gets_a_phase_and_pauses(
    kube: Kube, namespace: str, simulator: object, operator: Operator, template: dict[str, Any], prompt: str
) -> None:
    name = unique("tpl-task")
    template["pod"].setdefault("annotations", {})[SIM] = json.dumps({"work_seconds": 0.1})
    if not create(kube, namespace, "tasktemplates", name, template):
        return
    if create(kube, namespace, "tasks", name, {"prompt": prompt, "template": name}):
        live_through_pause_and_resume(kube, namespace, name)


@given(greeting=ANY_TEXT, reply=st.one_of(ANY_TEXT, LONG), said=ANY_TEXT)
def test_any_conversation_is_followed_and_kept_by_a_pause(
    kube: Kube, namespace: str, simulator: object, operator: Operator, greeting: str, reply: str, said: str
) -> None:
    """Whatever the agent says, the task follows it and a pause keeps it: lone surrogates included, which
    AgentAPI (in Go) never sends but an agent's JSON can carry; they are kept as U+FFFD."""
    name = unique("talk-task")
    behaviour = {"greeting": greeting, "work_seconds": 0.1}
    template = {"pod": {"image": "agent:1", "annotations": {SIM: json.dumps(behaviour)}}}
    assert create(kube, namespace, "tasktemplates", name, template)
    assert create(kube, namespace, "tasks", name, {"prompt": "Say something", "template": name})
    explain = partial(get_task, kube, namespace, name)
    wait_for(partial(delivered, kube, namespace, name), 60, "delivered", explain=explain)
    # A reply of any size (more than a pod annotation holds), to a second message, then a word of its own.
    sim_config(kube, namespace, name, reply=reply)
    wait_for(lambda: len(agent_messages(kube, namespace, name)) >= 3, 30, "the prompt answered")
    url = agent_url(kube, namespace, name)
    httpx.post(f"{url}/message", json={"content": "Again", "type": "user"}, timeout=5).raise_for_status()
    wait_for(lambda: len(agent_messages(kube, namespace, name)) >= 5, 30, "the second message answered")
    sim_config(kube, namespace, name, append_messages=[{"role": "agent", "content": said}])
    if words := summary(storable(said)):  # the STATE's message: its first line, if it has one
        shown = partial(told, kube, namespace, name, {"Active"})
        wait_for(
            lambda: (t := shown()) and t["status"].get("state", {}).get("message") == words,
            30,
            "the task to show what the agent said",
            explain=explain,
        )
    conversation = [storable(m["content"]) for m in agent_messages(kube, namespace, name)]
    patch_task(kube, namespace, name, {"paused": True})
    task = wait_for(partial(told, kube, namespace, name, {"Paused"}), 60, "Paused", explain=explain)
    assert running_pods(kube, namespace, name) == []
    kept = json.loads(
        kube.core.read_namespaced_config_map(f"{name}-snapshot", namespace).data["snapshot.json"]
    )
    texts = [m["content"] for m in kept["data"]["messages"]]
    assert task["status"]["logSnapshot"]["messages"] == len(texts)
    # The newest messages, whole but for a terminal screen's padding (see snapshots.tidy), unless one alone
    # is over 56 KiB (then its tail, after a marker).
    for original, kept_text in zip(conversation[-len(texts) :], texts, strict=True):
        if kept_text.startswith("[taskpod: message truncated"):
            assert tidy(original).endswith(kept_text.split("]\n", 1)[1])
        else:
            assert kept_text == tidy(original)
    tasks_api(kube).delete_namespaced_custom_object(*GROUP, namespace, "tasks", name)


# -- what a Pod takes, merged with taskpod's own parts -------------------------------------------------

# Names an adversary would try: taskpod's own, valid ones, and ones Kubernetes refuses.
PART_NAMES = st.sampled_from(
    [
        "cache",
        "data",
        "proxy",
        "workspace",
        "taskpod-report",
        "taskpod-git-credentials",
        "agent",
        "clone",
        "Bad_Name",
    ]
)
MOUNT_PATHS = st.sampled_from(
    ["/cache", "/data", "/workspace", "/workspace/sub", "relative", "/var/run/taskpod"]
)
EXTRA_VOLUMES = st.lists(
    st.fixed_dictionaries(
        {"name": PART_NAMES},
        optional={
            "emptyDir": st.just({}),
            "configMap": st.fixed_dictionaries({"name": st.just("team-config")}),
        },
    ),
    max_size=3,
)
EXTRA_CONTAINERS = st.lists(
    st.fixed_dictionaries(
        {"name": PART_NAMES, "image": st.sampled_from(["busybox:1", "busybox:1", ""])},
        optional={
            "volumeMounts": st.lists(
                st.fixed_dictionaries({"name": PART_NAMES, "mountPath": MOUNT_PATHS}), max_size=1
            )
        },
    ),
    max_size=2,
)
POD_EXTRAS = st.fixed_dictionaries(
    {"image": st.just("agent:1")},
    optional={
        "volumes": EXTRA_VOLUMES,
        "volumeMounts": st.lists(
            st.fixed_dictionaries({"name": PART_NAMES, "mountPath": MOUNT_PATHS}), max_size=3
        ),
        "envFrom": st.lists(
            st.fixed_dictionaries({"secretRef": st.fixed_dictionaries({"name": PART_NAMES})}), max_size=2
        ),
        "initContainers": EXTRA_CONTAINERS,
        "sidecars": EXTRA_CONTAINERS,
        "imagePullSecrets": st.lists(st.fixed_dictionaries({"name": PART_NAMES}), max_size=2),
        "runtimeClassName": st.sampled_from(["taskpod-fuzz", "Bad Name"]),
        "priorityClassName": st.sampled_from(["taskpod-fuzz"]),
        "hostAliases": st.lists(
            st.fixed_dictionaries(
                {"ip": st.sampled_from(["10.0.0.9", "not-an-ip"]), "hostnames": st.just(["forge.internal"])}
            ),
            max_size=2,
        ),
        "dnsConfig": st.fixed_dictionaries({"options": st.just([{"name": "ndots", "value": "2"}])}),
        "topologySpreadConstraints": st.lists(
            st.fixed_dictionaries(
                {
                    "maxSkew": st.integers(-1, 2),
                    "topologyKey": st.just("zone"),
                    "whenUnsatisfiable": st.sampled_from(["ScheduleAnyway", "Never"]),
                }
            ),
            max_size=1,
        ),
    },
)


@pytest.fixture(scope="module")
def runtime_and_priority(kube: Kube) -> Iterator[None]:
    """The RuntimeClass and PriorityClass that the drawn templates may name (both cluster-scoped)."""
    runtime = {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": "taskpod-fuzz"},
        "handler": "runc",
    }
    priority = {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": "taskpod-fuzz"},
        "value": 10,
    }
    for create_it, body in (
        (client.NodeV1Api(kube.api).create_runtime_class, runtime),
        (client.SchedulingV1Api(kube.api).create_priority_class, priority),
    ):
        try:
            create_it(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
    yield
    client.NodeV1Api(kube.api).delete_runtime_class("taskpod-fuzz")
    client.SchedulingV1Api(kube.api).delete_priority_class("taskpod-fuzz")


@given(pod=POD_EXTRAS, with_repository=st.booleans())
def test_any_pod_template_is_refused_naming_the_field_or_merges_into_a_pod_the_api_server_takes(
    kube: Kube,
    namespace: str,
    crds: list[str],
    runtime_and_priority: None,
    pod: dict[str, Any],
    with_repository: bool,
) -> None:
    """A template's pod fields merged with taskpod's own parts (workspace.pod): the API server refuses the
    template naming the field, or the merged pod is one it takes (a server-side dry run), or it refuses
    that pod naming the field (the task then shows that refusal as its Error). Never does a template
    shadow taskpod's own volumes or containers: the CRD refuses that, and the operator would too."""
    name = unique("merge-tpl")
    spec: dict[str, Any] = {"pod": pod}
    if with_repository:
        spec["repository"] = {
            "url": "https://forge.example/acme/shop.git",
            "secretRef": {"name": "forge"},
            "push": True,
        }
    if not create(kube, namespace, "tasktemplates", name, spec):
        return
    stored = tasks_api(kube).get_namespaced_custom_object(*GROUP, namespace, "tasktemplates", name)
    template = TaskTemplate.model_validate(stored)
    found = workspace.conflict(template)
    if found is not None:  # what a rule could not check cheaply: its tasks' Error names the field
        assert found.startswith("spec.pod.volumeMounts: "), (
            f"the CRD took a template that shadows ours: {found}"
        )
        event("template refused by the operator")
        return
    task = Task.model_validate(
        {"metadata": {"name": "merge", "namespace": namespace, "uid": "u1"}, "spec": {"prompt": "Do it"}}
    )
    body = workspace.pod(task, template, 1, "https://taskpod.example/report")
    body["metadata"]["ownerReferences"] = []  # no such Task: the dry run would look for it
    names = [v["name"] for v in body["spec"]["volumes"]]
    assert len(names) == len(set(names))
    try:
        kube.core.create_namespaced_pod(namespace, body, dry_run="All")
        event("merged pod taken")
    except ApiException as exc:
        why = refused_naming_a_field(exc)
        event(f"merged pod refused: {why.split(' is invalid: ')[-1][:40]}")
