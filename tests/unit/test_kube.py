"""The operator's API calls: they never wait forever, and what they apply reaches the API server whole."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
import yaml
from hypothesis import given
from hypothesis import strategies as st

from taskpod import kube
from taskpod.api.models import storable


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
