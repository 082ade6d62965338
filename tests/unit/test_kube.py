"""The operator's API calls: they never wait forever, and what they apply reaches the API server whole."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.config import kube_config

from localkube import pki
from taskpod import kube
from taskpod.api.models import storable


def _use_server(tmp_path: Path, port: int) -> None:
    """Act as the user of a kubeconfig for a plain-HTTP "API server" on this port, with token t."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""
    )
    kube.use_kubeconfig(str(kubeconfig))


@pytest.fixture
def silent_server(tmp_path: Path) -> Iterator[None]:
    """An "API server" that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    _use_server(tmp_path, listener.getsockname()[1])
    yield
    kube._user = None
    kube.connection.cache_clear()
    listener.close()


async def _closing(call: Awaitable[Any]) -> Any:
    try:
        return await call
    finally:
        await kube.close()


class HeldServer:
    """An "API server" that holds each request until `release` is set, counting those it holds at once,
    and answers every one with `status` and `body`."""

    def __init__(self, status: int = 200, body: dict[str, Any] | None = None) -> None:
        self.status, self.body = status, body or {"kind": "Task"}
        self.held = self.most = 0
        self.release = asyncio.Event()
        self.requests: list[web.Request] = []
        self.bodies: list[bytes] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        self.bodies.append(await request.read())
        self.held += 1
        self.most = max(self.most, self.held)
        await self.release.wait()
        self.held -= 1
        return web.json_response(self.body, status=self.status)

    async def __aenter__(self) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return int(self.runner.addresses[0][1])

    async def __aexit__(self, *_: Any) -> None:
        await kube.close()
        await self.runner.cleanup()


@pytest.fixture
def own_kubeconfig() -> Iterator[None]:
    yield
    kube._user = None
    kube.connection.cache_clear()


def test_calls_run_at_once_up_to_the_connection_limit_and_no_further(
    tmp_path: Path, own_kubeconfig: None
) -> None:
    """No threads: every reconcile's call is in flight at once, up to API_CONNECTIONS; the rest wait for
    a connection (no pool timeout) rather than fail or open more."""
    server = HeldServer()

    async def scenario() -> None:
        async with server as port:
            _use_server(tmp_path, port)
            calls = asyncio.gather(*(kube.get_task("team", f"t{i}") for i in range(kube.API_CONNECTIONS + 8)))
            while server.held < kube.API_CONNECTIONS:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # time for any more to arrive, were the limit not kept
            assert server.most == kube.API_CONNECTIONS
            server.release.set()
            assert all(answer == {"kind": "Task"} for answer in await calls)

    asyncio.run(scenario())
    assert len(server.requests) == kube.API_CONNECTIONS + 8


def test_a_write_carries_the_token_the_field_manager_and_its_body(
    tmp_path: Path, own_kubeconfig: None
) -> None:
    server = HeldServer()
    server.release.set()

    async def scenario() -> dict[str, Any]:
        async with server as port:
            _use_server(tmp_path, port)
            return await kube.patch_task_status("team", "fix-login", {"message": "ü 🚀"})

    assert asyncio.run(scenario()) == {"kind": "Task"}
    (request,) = server.requests
    assert request.method == "PATCH"
    assert request.path == "/apis/taskpod.dev/v1alpha1/namespaces/team/tasks/fix-login/status"
    assert request.headers["Authorization"] == "Bearer t"
    assert request.headers["Content-Type"] == kube.MERGE
    assert request.query["fieldManager"] == "taskpod"
    assert json.loads(server.bodies[0]) == {"status": {"message": "ü 🚀"}}


def test_an_operator_whose_kubeconfig_user_has_a_token_file_sends_it_once_it_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own_kubeconfig: None
) -> None:
    """Outside a cluster, a tokenFile user's token is read by the kubernetes package. While the file is
    missing no call goes as system:anonymous: it fails, naming the file, and the next call reads it."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    server = HeldServer()
    server.release.set()
    token = tmp_path / "token"

    async def scenario() -> None:
        async with server as port:
            kubeconfig = tmp_path / "kubeconfig"
            kubeconfig.write_text(
                f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{tokenFile: "{token}"}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""
            )
            monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
            # The package reads KUBECONFIG when first imported (Kopf's login asks it for the default).
            monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
            kube.connection.cache_clear()
            with pytest.raises(OSError, match="token"):  # the package names the file it could not read
                await kube.get_task("team", "fix-login")
            token.write_text("from-the-file\n")  # as `echo $TOKEN > file` leaves it
            assert await kube.get_task("team", "fix-login") == {"kind": "Task"}

    asyncio.run(scenario())
    (request,) = server.requests  # the first call never left
    assert request.headers["Authorization"] == "Bearer from-the-file"
    assert kube.login().token == "from-the-file"  # and Kopf's, the same


def test_a_refusal_is_an_api_exception_with_the_api_servers_sentence(
    tmp_path: Path, own_kubeconfig: None
) -> None:
    status = {"kind": "Status", "message": 'tasks "x" is forbidden: no', "reason": "Forbidden", "code": 403}
    server = HeldServer(403, status)
    server.release.set()

    async def scenario() -> None:
        async with server as port:
            _use_server(tmp_path, port)
            await kube.get_task("team", "x")

    with pytest.raises(kube.ApiException) as refused:
        asyncio.run(scenario())
    assert refused.value.status == 403
    assert kube.api_message(refused.value) == 'tasks "x" is forbidden: no'


def test_a_call_to_an_api_server_that_never_answers_gives_up(
    silent_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube, "CALL_TIMEOUT", (1.0, 0.5))
    started = time.monotonic()
    with pytest.raises(TimeoutError):  # aiohttp's ServerTimeoutError: no answer within the read timeout
        asyncio.run(_closing(kube.get_task("team", "fix-login")))
    assert time.monotonic() - started < 30


def test_a_lease_call_to_an_api_server_that_never_answers_gives_up_within_its_bound(
    silent_server: None,
) -> None:
    """The leader election's thread must learn within its own bound that a renewal did not go through,
    whatever the calls' read timeout: it steps down before a standby may take over."""
    leases = kube.Leases(timeout=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            leases.read("taskpod-system", "taskpod-operator")
    finally:
        leases.close()
    assert time.monotonic() - started < 5


@given(st.text(st.one_of(st.characters(), st.characters(categories=["Cs"]))))
def test_an_apply_body_reads_back_whole_as_yaml(text: str) -> None:
    """The API server reads an apply body as YAML: any text must come back as sent (a lone surrogate, which
    no UTF-8 text can hold, as U+FFFD). PyYAML stands in for its reader here; test_properties.py asks the
    API server itself."""
    body = kube.apply_body({"data": {"text": text}})
    assert yaml.safe_load(body.decode()) == {"data": {"text": storable(text)}}


def test_an_apply_body_escapes_what_yaml_would_refuse_or_fold() -> None:
    body = kube.apply_body({"a": "🚀 \x7f\x85\u2028\ufeff"}).decode()
    assert body == '{"a":"🚀 \\u007f\\u0085\\u2028\\ufeff"}'  # the emoji raw, not as a surrogate pair


def test_agents_through_the_proxy_get_the_token_as_it_is_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent's follower lives as long as its pod, longer than an in-cluster token: each request through
    the API server's proxy carries the service account's token as the kubelet last rotated it, not the one
    of the start."""
    server = HeldServer()
    server.release.set()
    token = tmp_path / "token"
    token.write_text("t\n")
    monkeypatch.setattr(kube, "TOKEN_REREAD", 0.0)  # the file is read again at every request

    async def scenario() -> None:
        async with server as port:
            headers = kube._TokenFile(token)
            monkeypatch.setattr(
                kube,
                "connection",
                lambda: kube.Connection(f"http://127.0.0.1:{port}", ssl.create_default_context(), headers),
            )
            transport = kube.agent_transport(via_proxy=True)
            assert transport.server == f"http://127.0.0.1:{port}"
            agent = transport.client("team", "p", "10.244.0.7", 3284)
            try:
                await agent.messages()
                token.write_text("rotated")
                await agent.messages()
            finally:
                await transport.aclose()

    server.body = {"messages": []}
    asyncio.run(scenario())
    assert [r.path for r in server.requests] == ["/api/v1/namespaces/team/pods/p:3284/proxy/messages"] * 2
    assert [r.headers["Authorization"] for r in server.requests] == ["Bearer t", "Bearer rotated"]


def test_the_service_account_token_is_read_again_only_after_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a file read per call: the token is read again once TOKEN_REREAD seconds have passed."""
    now = [1000.0]
    monkeypatch.setattr("taskpod.kube.time.monotonic", lambda: now[0])
    token = tmp_path / "token"
    token.write_text("first\n")
    headers = kube._TokenFile(token)
    assert headers() == {"Authorization": "Bearer first"}
    token.write_text("second")
    now[0] += kube.TOKEN_REREAD - 1
    assert headers() == {"Authorization": "Bearer first"}
    now[0] += 1
    assert headers() == {"Authorization": "Bearer second"}


def test_an_api_server_known_by_its_tls_server_name_is_reached_for_calls_and_agents_alike(
    tmp_path: Path, own_kubeconfig: None
) -> None:
    """A kubeconfig may reach the API server at an address its certificate does not name, and say which
    name to check instead (tls-server-name). Our calls and the agents behind its pod proxy both go there."""
    ca = pki.make_ca(tmp_path)
    serving = pki.issue(ca, tmp_path, "serving", "kube-apiserver", hosts=("kubernetes.internal",))
    user = pki.issue(ca, tmp_path, "user", "someone")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(serving.cert, serving.key)

    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"messages": []} if request.path.endswith("/messages") else {"kind": "Task"})

    async def scenario() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
        port = runner.addresses[0][1]
        kubeconfig = pki.write_kubeconfig(tmp_path / "kubeconfig", f"https://127.0.0.1:{port}", ca, user)
        config = yaml.safe_load(kubeconfig.read_text())
        config["clusters"][0]["cluster"]["tls-server-name"] = "kubernetes.internal"
        kubeconfig.write_text(yaml.safe_dump(config))
        kube.use_kubeconfig(str(kubeconfig))
        transport = kube.agent_transport(via_proxy=True)
        try:
            assert (await kube.get_task("team", "fix-login"))["kind"] == "Task"
            assert await transport.client("team", "fix-login-0", "10.244.0.7", 3284).messages() == []
        finally:
            await transport.aclose()
            await kube.close()
            await runner.cleanup()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("host", "server"), [("10.96.0.1", "https://10.96.0.1:443"), ("fd00::1", "https://[fd00::1]:443")]
)
def test_in_a_cluster_the_service_account_and_the_service_address_are_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str, server: str
) -> None:
    """As client-go's in-cluster configuration: the kubernetes Service's address from the environment
    (an IPv6 one bracketed), the mounted token and CA; and elsewhere, nothing from it."""
    monkeypatch.setattr(kube, "SERVICE_ACCOUNT", tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert kube._in_cluster() is None  # no token mounted: not in a pod
    (tmp_path / "token").write_text("sa-token\n")
    (tmp_path / "ca.crt").write_text("")
    info = kube._in_cluster()
    assert info is not None
    assert (info.server, info.token, info.ca_path) == (server, "sa-token", str(tmp_path / "ca.crt"))
    assert kube.login() == info
