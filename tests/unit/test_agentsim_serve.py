"""`python -m agentsim serve` (images/agent-sim's entrypoint): one scripted agent in its own process,
started as the image starts it, without the kubernetes client the image does not install.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support import ROOT, free_port

# `python -m agentsim` with the kubernetes client made unimportable, as in images/agent-sim.
WITHOUT_KUBERNETES = (
    "import runpy, sys; sys.modules['kubernetes'] = None; "
    "runpy.run_module('agentsim', run_name='__main__', alter_sys=True)"
)


def serve(*args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WITHOUT_KUBERNETES, "serve", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT / "hack"), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextmanager
def served(*args: str, **env: str) -> Iterator[httpx.Client]:
    """The agent on 127.0.0.1 at a free port, a client once it answers; SIGTERM must end it cleanly."""
    port = free_port()
    process = serve("--host", "127.0.0.1", "--port", str(port), *args, **env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            deadline = time.monotonic() + 15
            while True:
                assert process.poll() is None, f"serve exited: {process.communicate()[1]}"
                try:
                    http.get("/status")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "serve did not answer in 15 s"
                    time.sleep(0.05)
            yield http
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0, process.communicate()[1]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.communicate()


def until_stable(http: httpx.Client) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while (status := http.get("/status").json())["status"] != "stable":
        assert time.monotonic() < deadline, "the agent never went stable"
        time.sleep(0.02)
    return dict(status)


def test_serve_answers_as_agentapi(tmp_path: Path) -> None:
    state = tmp_path / ".taskpod" / "agentapi-state.json"
    behaviour = {"greeting": "ready", "work_seconds": 0.1, "reply": "did {prompt}"}
    with served("--type", "claude", "--state-file", str(state), SIM_AGENT=json.dumps(behaviour)) as http:
        status = until_stable(http)
        assert status == {
            "$schema": f"{http.base_url}/schemas/StatusResponseBody.json",
            "status": "stable",
            "agent_type": "claude",
        }
        assert [m["content"] for m in http.get("/messages").json()["messages"]] == ["ready"]
        sent = http.post("/message", json={"content": "the task", "type": "user"})
        assert sent.status_code == 200 and sent.json()["ok"] is True
        until_stable(http)
        messages = http.get("/messages").json()["messages"]
        assert [(m["role"], m["content"]) for m in messages] == [
            ("agent", "ready"),
            ("user", "the task"),
            ("agent", "did the task"),
        ]
    assert len(json.loads(state.read_text())["messages"]) == 3


def test_a_restarted_agent_remembers_its_conversation(tmp_path: Path) -> None:
    state = tmp_path / "agentapi-state.json"
    with served("--state-file", str(state), "--behaviour", '{"work_seconds": 0}') as http:
        http.post("/message", json={"content": "first", "type": "user"})
        until_stable(http)
    with served("--state-file", str(state)) as http:
        contents = [m["content"] for m in http.get("/messages").json()["messages"]]
        assert contents[1:] == ["first", "Done: first"]


def test_the_behaviour_flag_wins_over_the_environment() -> None:
    flag, env = '{"agent_type": "aider"}', '{"agent_type": "goose"}'
    with served("--behaviour", flag, SIM_AGENT=env) as http:
        assert http.get("/status").json()["agent_type"] == "aider"


def test_a_bad_behaviour_is_refused_with_the_reason() -> None:
    process = serve("--port", "0", SIM_AGENT='{"greting": "typo"}')
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    assert "unknown key(s) greting" in stderr
