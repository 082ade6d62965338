"""The Helm chart (charts/taskpod), on the local control plane: it lints, renders what the API server
accepts, installs, upgrades and uninstalls, refuses bad values with the schema's message, and its RBAC is
enough for a task's whole life and no more.

kwok runs no containers, so the operator never runs from the chart's Deployment: it runs as a local
process with the Deployment's environment and a token of the chart's ServiceAccount, which is what
its RBAC is about. For the same reason `helm test` cannot run here; its steps run as local kubectl
commands with the test hook's ServiceAccount instead.
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.integration.test_operator import children
from tests.support import (
    ROOT,
    Kube,
    Operator,
    create_namespace,
    create_task,
    delete_namespace,
    delivered,
    free_port,
    get_task,
    helm_runner,
    kubectl,
    patch_task,
    phase_is,
    pod_token,
    wait_for,
)

pytestmark = pytest.mark.integration
CHART = ROOT / "charts" / "taskpod"
CRD_FILES = sorted((ROOT / "crds").glob("*.yaml"))
HOOK = "helm.sh/hook"
POD = {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "x", "image": "x"}]}}
DEPLOYMENT = {
    "metadata": {"name": "x"},
    "spec": {
        "selector": {"matchLabels": {"app": "x"}},
        "template": {
            "metadata": {"labels": {"app": "x"}},
            "spec": {"containers": [{"name": "x", "image": "x"}]},
        },
    },
}


# -- helm, as a user runs it ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def helm(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., str]:
    """Run helm against the cluster under test with its own config and cache; fail with its stderr."""
    return helm_runner(kube.kubeconfig, tmp_path_factory.mktemp("helm"))


@pytest.fixture(scope="session")
def kube_version(kube: Kube) -> str:
    """The API server's version: `helm template` checks the chart's kubeVersion against it."""
    return str(client.VersionApi(kube.api).get_code().git_version)


def render(helm: Callable[..., str], kube_version: str, release: str, namespace: str, *args: str) -> str:
    return str(helm("template", release, str(CHART), "-n", namespace, "--kube-version", kube_version, *args))


def documents(manifest: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(manifest) if d]


def values_file(tmp_path: Path, values: dict[str, Any], name: str = "values.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return str(path)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


# -- the chart, offline -----------------------------------------------------------------------------


def everything(watched: list[str]) -> dict[str, Any]:
    """Every optional part on (but the ServiceMonitor: its CRD is not installed here)."""
    return {
        "watch": {"mode": "namespaces", "namespaces": watched},
        "replicas": 2,
        "operator": {
            "agentTransport": "proxy",
            "logLevel": "debug",
            "extraEnv": [{"name": "X", "value": "1"}],
        },
        "anthropic": {"existingSecret": "anthropic", "model": "claude-haiku-5-5"},
        "metrics": {"enabled": True, "serviceMonitor": {"enabled": False}},
        "reports": {"enabled": True},
        "workspace": {"networkPolicy": {"enabled": True}},
        "defaultTemplate": {
            "enabled": True,
            "anthropicSecret": "anthropic",
            "env": [{"name": "ANTHROPIC_BASE_URL", "value": "https://llm-gateway.example.com"}],
            "repository": {"secretRef": {"name": "forge"}, "depth": 0},
            "pod": {"imagePullSecrets": [{"name": "registry"}], "runtimeClassName": "gvisor"},
            "idlePause": "30m",
            "pauseOnFinish": True,
            "deleteAfterFinish": "24h",
        },
        "simulatorTemplate": {"enabled": True, "agent": {"work_seconds": 1}},
        "podLabels": {"team": "platform"},
    }


@pytest.mark.parametrize(
    ("args", "values"),
    [
        ([], {}),
        (["--strict"], {}),
        (["--strict"], {"watch": {"mode": "namespaces", "namespaces": ["a", "b"]}}),
        (["--strict"], everything(["a", "b"]) | {"metrics": {"serviceMonitor": {"enabled": True}}}),
    ],
    ids=["default", "strict", "namespaces-mode", "everything-and-servicemonitor"],
)
def test_the_chart_lints_clean(
    helm: Callable[..., str], tmp_path: Path, args: list[str], values: dict[str, Any]
) -> None:
    out = helm("lint", str(CHART), *args, "-f", values_file(tmp_path, values))
    assert "1 chart(s) linted, 0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


def test_the_charts_crds_are_the_repositorys(
    helm: Callable[..., str], kube_version: str, tmp_path: Path
) -> None:
    """crds/ holds symlinks to the top-level files: helm follows them when rendering and packaging."""
    rendered = render(helm, kube_version, "crds", "default", "--include-crds")
    sources = {
        chunk.split("\n", 1)[0]: chunk.split("\n", 1)[1]
        for chunk in rendered.split("---\n# Source: ")
        if chunk.startswith("taskpod/crds/")
    }
    assert sorted(sources) == [f"taskpod/crds/{f.name}" for f in CRD_FILES]
    for crd in CRD_FILES:
        assert (
            sources[f"taskpod/crds/{crd.name}"] == crd.read_text() + "\n"
        )  # byte for byte, then helm's "\n"

    helm("package", str(CHART), "-d", str(tmp_path))
    with tarfile.open(tmp_path / "taskpod-0.1.0.tgz") as tar:
        for crd in CRD_FILES:
            member = tar.extractfile(f"taskpod/crds/{crd.name}")
            assert member is not None and member.read().decode() == crd.read_text()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": "two"}, "at '/replicas': got string, want integer"),
        ({"watch": {"mode": "some"}}, "at '/watch/mode': value must be one of 'all', 'namespaces'"),
        ({"watch": {"mode": "namespaces"}}, "at '/watch/namespaces': minItems: got 0, want 1"),
        ({"replica": 2}, "additional properties 'replica' not allowed"),
        ({"operator": {"agentTransport": "carrier-pigeon"}}, "at '/operator/agentTransport'"),
        ({"replicas": 2, "leaderElection": {"enabled": False}}, "at '/leaderElection/enabled'"),
        ({"defaultTemplate": {"idlePause": "30 minutes"}}, "at '/defaultTemplate/idlePause'"),
    ],
    ids=[
        "wrong-type",
        "unknown-mode",
        "no-namespaces",
        "unknown-key",
        "unknown-transport",
        "two-leaders",
        "not-a-duration",
    ],
)
def test_bad_values_fail_the_install_naming_the_key(
    kube: Kube,
    helm: Callable[..., str],
    namespace: str,
    tmp_path: Path,
    values: dict[str, Any],
    message: str,
) -> None:
    release = unique("bad")
    err = helm("install", release, str(CHART), "-n", namespace, "-f", values_file(tmp_path, values), ok=False)
    assert "values don't meet the specifications of the schema" in err
    assert message in err, err
    assert release not in helm("list", "-n", namespace, "-q")


# -- rendered manifests against the API server -------------------------------------------------------


@pytest.mark.parametrize("case", ["default", "namespaces", "everything"])
def test_rendered_manifests_pass_a_server_dry_run(
    kube: Kube,
    crds: list[str],
    helm: Callable[..., str],
    kube_version: str,
    namespace: str,
    tmp_path: Path,
    case: str,
) -> None:
    watched = [create_namespace(kube, unique("team")) for _ in range(2)] if case != "default" else []
    try:
        values = {
            "default": {},
            "namespaces": {"watch": {"mode": "namespaces", "namespaces": watched}},
            "everything": everything(watched),
        }[case]
        manifest = render(helm, kube_version, unique("dry"), namespace, "-f", values_file(tmp_path, values))
        docs = documents(manifest)
        kinds = sorted({d["kind"] for d in docs})
        # A Pod (the test hook's) is admitted only if its ServiceAccount exists: those, for real, first.
        accounts = [d for d in docs if d["kind"] == "ServiceAccount"]
        kubectl(kube, "apply", "-f", "-", stdin=yaml.safe_dump_all(accounts))
        assert kubectl(kube, "apply", "--dry-run=server", "-f", "-", stdin=manifest).count(
            "(server dry run)"
        ) == len(docs)
        assert_least_privilege(docs)
        if case == "everything":
            per_namespace = {(d["kind"], d["metadata"].get("namespace")) for d in docs}
            for ns in watched:
                for kind in ("Role", "RoleBinding", "NetworkPolicy", "TaskTemplate"):
                    assert (kind, ns) in per_namespace
            assert {"ServiceMonitor"}.isdisjoint(kinds)
            made = next(d for d in docs if d["kind"] == "TaskTemplate" and d["metadata"]["name"] == "default")
            automation = {k: made["spec"].get(k) for k in ("idlePause", "pauseOnFinish", "deleteAfterFinish")}
            assert automation == {"idlePause": "30m", "pauseOnFinish": True, "deleteAfterFinish": "24h"}
            assert next(d for d in docs if d["kind"] == "Pod")["metadata"]["annotations"][HOOK] == "test"
        else:
            assert {"NetworkPolicy", "TaskTemplate", "Pod"}.isdisjoint(kinds)
    finally:
        for ns in watched:
            delete_namespace(kube, ns)


def assert_least_privilege(docs: list[dict[str, Any]]) -> None:
    """No wildcards and no Secrets in any rule, the test hook's included."""
    for role in (d for d in docs if d["kind"] in ("Role", "ClusterRole")):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), f"{role['metadata']['name']}: {rule}"
            assert "secrets" not in rule["resources"], f"{role['metadata']['name']}: {rule}"


# -- install, upgrade, uninstall ------------------------------------------------------------------------


def test_install_upgrade_uninstall(
    kube: Kube, crds: list[str], helm: Callable[..., str], namespace: str, tmp_path: Path
) -> None:
    release = unique("tp")
    # The CRDs exist already (the crds fixture): helm skips them. --wait: kwok marks the pods Running and
    # Ready (nothing runs in them), so the rollout completes.
    out = helm("install", release, str(CHART), "-n", namespace, "--wait", "--timeout", "90s")
    assert "STATUS: deployed" in out
    assert "kubectl get tasks -n my-team" in out and "pip install taskpod" in out  # NOTES.txt
    name = f"{release}-taskpod"
    deployment = kube.apps.read_namespaced_deployment(name, namespace)
    assert deployment.spec.replicas == 1
    container = deployment.spec.template.spec.containers[0]
    assert container.image == "ghcr.io/taskpod-dev/operator:0.1.0"
    env = {e.name: e.value for e in container.env}
    assert env["TASKPOD_ALL_NAMESPACES"] == "true" and "TASKPOD_NAMESPACES" not in env
    assert env["TASKPOD_REPORT_URL"] == f"http://{name}-reports.{namespace}.svc:8081/report"
    rbac = client.RbacAuthorizationV1Api(kube.api)
    assert rbac.read_cluster_role(name).rules

    # Mode all: what a clusterwide operator lists it may list everywhere; no more. (A clusterwide
    # operator is not started here: it would reconcile every other test's tasks.)
    api = as_service_account(token_kubeconfig(kube, namespace, name, tmp_path / "sa.kubeconfig"))
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    custom.list_cluster_custom_object("taskpod.dev", "v1alpha1", "tasks")
    custom.list_cluster_custom_object("taskpod.dev", "v1alpha1", "tasktemplates")
    core.list_pod_for_all_namespaces()
    client.AppsV1Api(api).list_stateful_set_for_all_namespaces()
    for call in (
        core.list_secret_for_all_namespaces,
        core.list_namespace,
        core.list_config_map_for_all_namespaces,
    ):
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403

    upgrade = ["--reuse-values", "--set", "replicas=2", "--set", "operator.agentGraceSeconds=45"]
    out = helm("upgrade", release, str(CHART), "-n", namespace, *upgrade, "--wait", "--timeout", "90s")
    assert "REVISION: 2" in out
    deployment = kube.apps.read_namespaced_deployment(name, namespace)
    assert deployment.spec.replicas == 2 and deployment.status.updated_replicas == 2
    env = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}
    assert env["TASKPOD_AGENT_GRACE_SECONDS"] == "45"

    helm("uninstall", release, "-n", namespace, "--wait")
    for read in (
        partial(kube.apps.read_namespaced_deployment, name, namespace),
        partial(rbac.read_cluster_role, name),
        partial(kube.core.read_namespaced_service, f"{name}-metrics", namespace),
    ):
        with pytest.raises(ApiException) as err:
            read()
        assert err.value.status == 404
    ext = client.ApiextensionsV1Api(kube.api)
    assert ext.read_custom_resource_definition("tasks.taskpod.dev")  # helm never deletes CRDs


# -- one release, watched by an operator that runs as its ServiceAccount -----------------------------


@dataclass
class Release:
    name: str
    namespace: str  # the release's (the operator's, the Lease's)
    watched: str  # the one namespace it watches (mode namespaces)
    manifest: list[dict[str, Any]]

    @property
    def fullname(self) -> str:
        return f"{self.name}-taskpod"

    def find(self, kind: str, name: str) -> dict[str, Any]:
        return next(d for d in self.manifest if d["kind"] == kind and d["metadata"]["name"] == name)


def install(kube: Kube, helm: Callable[..., str], tmp: Path, prefix: str, **values: Any) -> Release:
    """A release in a fresh namespace that watches another fresh namespace, with the simulator template."""
    name, ops, team = (
        unique(prefix),
        create_namespace(kube, unique(f"{prefix}-ops")),
        unique(f"{prefix}-team"),
    )
    create_namespace(kube, team)
    chosen = {
        "watch": {"mode": "namespaces", "namespaces": [team]},
        "simulatorTemplate": {"enabled": True},
        **values,
    }
    helm("install", name, str(CHART), "-n", ops, "-f", values_file(tmp, chosen, f"{name}.yaml"))
    return Release(name, ops, team, documents(helm("get", "manifest", name, "-n", ops)))


def uninstall(kube: Kube, helm: Callable[..., str], release: Release) -> None:
    helm("uninstall", release.name, "-n", release.namespace, "--wait")
    for ns in (release.namespace, release.watched):
        delete_namespace(kube, ns)


def token_kubeconfig(kube: Kube, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig that acts as the ServiceAccount (a TokenRequest), for the cluster under test."""
    token = kube.core.create_namespaced_service_account_token(
        service_account, namespace, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    ca = Path(kube.api.configuration.ssl_ca_cert).read_bytes()
    settings = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {
                    "server": kube.api.configuration.host,
                    "certificate-authority-data": base64.b64encode(ca).decode(),
                },
            }
        ],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [
            {"name": "c", "context": {"cluster": "c", "user": service_account, "namespace": namespace}}
        ],
        "current-context": "c",
    }
    path.write_text(yaml.safe_dump(settings))
    return path


@dataclass
class ChartOperator:
    operator: Operator
    http: str  # base URL of /metrics, /healthz, /readyz
    report_url: str  # the report endpoint, as a local process serves it

    def forbidden_lines(self) -> list[str]:
        log = self.operator.log.read_text(errors="replace")
        return [line for line in log.splitlines() if "Forbidden" in line or " 403" in line]


def run_as_chart(release: Release, kube: Kube, tmp: Path) -> ChartOperator:
    """The operator as the chart's Deployment runs it: its args and environment (downward API values
    filled in as the kubelet would), and its ServiceAccount's token; local ports for its listeners."""
    container = release.find("Deployment", release.fullname)["spec"]["template"]["spec"]["containers"][0]
    sa = release.find("Deployment", release.fullname)["spec"]["template"]["spec"]["serviceAccountName"]
    fields = {"metadata.name": f"{release.fullname}-0", "metadata.namespace": release.namespace}
    env = {
        e["name"]: e["value"] if "value" in e else fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
        for e in container["env"]
    }
    http, report = free_port(), free_port()
    env["TASKPOD_HTTP_LISTEN"] = f"127.0.0.1:{http}"
    env["TASKPOD_REPORT_LISTEN"] = f"127.0.0.1:{report}"
    kubeconfig = token_kubeconfig(kube, release.namespace, sa, tmp / f"{release.name}.kubeconfig")
    # No --namespace: TASKPOD_NAMESPACES from the chart decides what it watches.
    operator = Operator(kubeconfig, [], tmp / f"{release.name}-operator.log", *container.get("args", []))
    operator.start(env=env)
    return ChartOperator(operator, f"http://127.0.0.1:{http}", f"http://127.0.0.1:{report}/report")


@pytest.fixture(scope="module")
def release(
    kube: Kube, crds: list[str], helm: Callable[..., str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    installed = install(kube, helm, tmp_path_factory.mktemp("release"), "chart")
    yield installed
    uninstall(kube, helm, installed)


@pytest.fixture(scope="module")
def chart_operator(
    kube: Kube, release: Release, simulator: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChartOperator]:
    running = run_as_chart(release, kube, tmp_path_factory.mktemp("chart-operator"))
    yield running
    running.operator.stop()
    print(f"--- operator log (last lines) ---\n{running.operator.tail()}")


def snapshot_taken(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    task = phase_is(kube, namespace, name, "Paused")
    return task if task and (task["status"].get("logSnapshot") or {}).get("messages") else None


@pytest.mark.local_pods
def test_the_charts_rbac_carries_a_task_through_its_life(
    kube: Kube, release: Release, chart_operator: ChartOperator
) -> None:
    ns, name = release.watched, "story"
    create_task(kube, ns, name, prompt="Fix the flaky login test", template="taskpod-sim")
    task = wait_for(partial(delivered, kube, ns, name), 90, "Active with the prompt delivered")
    assert task["status"]["phase"] == "Active"

    # The agent's report: the operator asks the API server whose token it is (a TokenReview).
    token = pod_token(kube, ns, f"{name}-0")
    report = {"state": "complete", "message": "Fixed it", "uri": "https://example.com/pr/1"}
    reply = httpx.post(chart_operator.report_url, json=report, headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 200, reply.text

    patch_task(kube, ns, name, {"paused": True})
    task = wait_for(partial(snapshot_taken, kube, ns, name), 60, "Paused with a snapshot")
    assert task["status"]["logSnapshot"]["configMap"] == f"{name}-snapshot"
    assert json.loads(kube.core.read_namespaced_config_map(f"{name}-snapshot", ns).data["snapshot.json"])

    patch_task(kube, ns, name, {"paused": False})
    wait_for(partial(phase_is, kube, ns, name, "Active"), 60, "Active again")

    client.CustomObjectsApi(kube.api).delete_namespaced_custom_object(
        "taskpod.dev", "v1alpha1", ns, "tasks", name
    )

    def gone() -> bool:
        left = children(kube, ns, name)
        snapshots = [c.metadata.name for c in kube.core.list_namespaced_config_map(ns).items]
        return not any(left.values()) and f"{name}-snapshot" not in snapshots

    wait_for(gone, 90, "the workspace and snapshot to be garbage-collected")

    # The chart's leader election: the Lease in the release namespace, held by the "pod".
    lease = client.CoordinationV1Api(kube.api).read_namespaced_lease("taskpod-operator", release.namespace)
    assert lease.spec.holder_identity == f"{release.fullname}-0"
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(chart_operator.http + path).status_code == 200, path
    assert not chart_operator.forbidden_lines(), chart_operator.forbidden_lines()


def as_service_account(kubeconfig: Path) -> client.ApiClient:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    return client.ApiClient(cfg)


def raw(api: client.ApiClient, method: str, path: str) -> None:
    """A request the typed client has no method for (exec, pod proxy); raises ApiException like it."""
    cfg = api.configuration
    token = cfg.api_key.get("authorization") or cfg.api_key["BearerToken"]  # the key moved in client 37
    token = token if token.startswith("Bearer ") else f"Bearer {token}"
    tls = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    reply = httpx.request(method, cfg.host + path, headers={"Authorization": token}, verify=tls)
    if reply.status_code >= 400:
        raise ApiException(status=reply.status_code, reason=reply.text)


def test_the_charts_rbac_allows_nothing_more(kube: Kube, release: Release, tmp_path: Path) -> None:
    sa = release.find("Deployment", release.fullname)["spec"]["template"]["spec"]["serviceAccountName"]
    api = as_service_account(token_kubeconfig(kube, release.namespace, sa, tmp_path / "sa.kubeconfig"))
    core, apps, custom = client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api)
    team, ops = release.watched, release.namespace
    task = ("taskpod.dev", "v1alpha1")
    allowed: list[Callable[[], object]] = [
        lambda: custom.list_namespaced_custom_object(*task, team, "tasks"),
        lambda: core.list_namespaced_pod(team),
        lambda: core.list_namespaced_persistent_volume_claim(team),
        lambda: apps.list_namespaced_stateful_set(team),  # the upgrade from StatefulSets, at start
        lambda: core.list_node(),  # a lost node makes its tasks Unknown
    ]
    for call in allowed:
        call()
    # deleteAfterFinish: a Task in a watched namespace may be deleted (none of this name: 404, not 403).
    with pytest.raises(ApiException) as gone:
        custom.delete_namespaced_custom_object(*task, team, "tasks", "x")
    assert gone.value.status == 404, gone.value.body
    forbidden: dict[str, Callable[[], object]] = {
        "list secrets": lambda: core.list_namespaced_secret(team),
        "get a secret in its own namespace": lambda: core.read_namespaced_secret("x", ops),
        "create deployments": lambda: apps.create_namespaced_deployment(team, DEPLOYMENT),
        "list tasks in its own namespace": lambda: custom.list_namespaced_custom_object(*task, ops, "tasks"),
        "list tasks elsewhere": lambda: custom.list_namespaced_custom_object(*task, "default", "tasks"),
        "list tasks cluster-wide": lambda: custom.list_cluster_custom_object(*task, "tasks"),
        "delete tasks elsewhere": lambda: custom.delete_namespaced_custom_object(*task, ops, "tasks", "x"),
        "patch a task's spec": lambda: custom.patch_namespaced_custom_object(
            *task, team, "tasks", "x", {"spec": {"paused": True}}
        ),
        "exec into pods": partial(raw, api, "POST", f"/api/v1/namespaces/{team}/pods/x/exec?command=id"),
        "pod proxy (direct transport)": partial(
            raw, api, "GET", f"/api/v1/namespaces/{team}/pods/x:3284/proxy/status"
        ),
        "list configmaps": lambda: core.list_namespaced_config_map(team),  # get only: a snapshot, by name
        "read configmaps in its own namespace": lambda: core.read_namespaced_config_map("x", ops),
        "read a node": lambda: core.read_node("x"),
        "create pods elsewhere": lambda: core.create_namespaced_pod(ops, POD, dry_run="All"),
        "a Lease elsewhere": lambda: client.CoordinationV1Api(api).create_namespaced_lease(
            team, {"metadata": {"name": "taskpod-operator"}, "spec": {}}
        ),
        "another Lease": lambda: client.CoordinationV1Api(api).read_namespaced_lease("kube-x", ops),
    }
    for what, call in forbidden.items():
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403, f"{what}: {err.value.status} {err.value.body}"


@pytest.mark.local_pods
def test_the_helm_test_hook_renders_and_its_steps_pass(
    kube: Kube, helm: Callable[..., str], release: Release, chart_operator: ChartOperator, tmp_path: Path
) -> None:
    """`helm test` needs a running container, which kwok cannot give: the release's test hook passes the
    server's dry run, and each of its containers' kubectl commands runs here, in order, as its
    ServiceAccount, against the operator that runs as the chart's."""
    hook = documents(helm("get", "hooks", release.name, "-n", release.namespace))
    assert all(d["metadata"]["annotations"][HOOK] == "test" for d in hook)
    assert sorted(d["kind"] for d in hook) == ["ConfigMap", "Pod", "Role", "RoleBinding", "ServiceAccount"]
    # The hook's own objects first, as helm creates them before the pod (a lower weight); then the pod,
    # which the server admits only once its ServiceAccount exists.
    kubectl(kube, "apply", "-f", "-", stdin=yaml.safe_dump_all([d for d in hook if d["kind"] != "Pod"]))
    pod = next(d for d in hook if d["kind"] == "Pod")
    assert "(server dry run)" in kubectl(
        kube, "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(pod)
    )

    config_map = next(d for d in hook if d["kind"] == "ConfigMap")
    mounted = tmp_path / "etc-taskpod-test"
    mounted.mkdir()
    for key, text in config_map["data"].items():
        (mounted / key).write_text(text)
    kubeconfig = token_kubeconfig(kube, release.namespace, pod["spec"]["serviceAccountName"], tmp_path / "t")
    steps = pod["spec"]["initContainers"] + pod["spec"]["containers"]
    assert [s["name"] for s in steps] == [
        "clean",
        "create",
        "ready",
        "prompt-delivered",
        "pause",
        "paused",
        "snapshot",
        "delete",
    ]
    for step in steps:
        assert step["image"] == "registry.k8s.io/kubectl:v1.36.3"
        args = [a.replace("/etc/taskpod-test", str(mounted)) for a in step["args"]]
        kubectl(kube, *args, kubeconfig=kubeconfig, timeout=300)  # each step waits up to helmTest.timeout
    assert not chart_operator.forbidden_lines(), chart_operator.forbidden_lines()


@pytest.mark.local_pods
@pytest.mark.pod_proxy
def test_the_proxy_transport_gets_pod_proxy_rights(
    kube: Kube, crds: list[str], helm: Callable[..., str], simulator: Path, tmp_path: Path
) -> None:
    proxied = install(kube, helm, tmp_path, "proxy", operator={"agentTransport": "proxy"})
    running = run_as_chart(proxied, kube, tmp_path)
    try:
        create_task(kube, proxied.watched, "via-proxy", template="taskpod-sim")
        wait_for(partial(delivered, kube, proxied.watched, "via-proxy"), 90, "the prompt delivered via proxy")
        assert get_task(kube, proxied.watched, "via-proxy")["status"]["phase"] == "Active"
        assert not running.forbidden_lines(), running.forbidden_lines()
    finally:
        running.operator.stop()
        print(f"--- operator log (last lines) ---\n{running.operator.tail()}")
        uninstall(kube, helm, proxied)
