"""The operator's API calls never wait forever: a connection that stops answering fails the call."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from taskpod import kube


@pytest.fixture
def silent_server(tmp_path: Path) -> Iterator[Path]:
    """A kubeconfig for an "API server" that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
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
    yield kubeconfig
    kube._user = None
    kube.api_client.cache_clear()
    listener.close()


def test_a_call_to_an_api_server_that_never_answers_gives_up(
    silent_server: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube, "CALL_TIMEOUT", (1.0, 0.5))
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.HTTPError):  # urllib3's ReadTimeoutError, or its retries' end
        asyncio.run(kube.get_task("team", "fix-login"))
    assert time.monotonic() - started < 30
