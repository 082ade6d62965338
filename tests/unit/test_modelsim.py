"""The model stand-in speaks the Messages API as the anthropic SDK reads it: streamed and not, tool use
included, and answers by its script."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import anthropic
import pytest
from aiohttp import web
from modelsim.server import ModelSim, Script

from tests.support import free_port

SCRIPT = {
    "rules": [
        {
            "when": "Write hello.txt",
            "steps": [
                {"tool": "Write", "input": {"file_path": "/workspace/hello.txt", "content": "hi ✓\n"}},
                {"text": "I wrote hello.txt."},
            ],
        }
    ],
    "default": "Fine.",
}


@pytest.fixture(scope="module")
def sim() -> Iterator[tuple[ModelSim, anthropic.Anthropic]]:
    import asyncio

    model = ModelSim(Script.parse(SCRIPT))
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(model.app())
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="sk-ant-fake", max_retries=0)
    yield model, client
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_a_streamed_tool_call_reads_as_the_sdk_reads_the_api(
    sim: tuple[ModelSim, anthropic.Anthropic],
) -> None:
    _, client = sim
    ask = [{"role": "user", "content": "Please Write hello.txt"}]
    with client.messages.stream(model="claude-x", max_tokens=100, messages=ask) as stream:  # type: ignore[arg-type]
        message = stream.get_final_message()
    assert message.stop_reason == "tool_use"
    (block,) = message.content
    assert block.type == "tool_use" and block.name == "Write"
    assert block.input == {"file_path": "/workspace/hello.txt", "content": "hi ✓\n"}


def test_the_request_with_the_tool_result_gets_the_next_step(
    sim: tuple[ModelSim, anthropic.Anthropic],
) -> None:
    model, client = sim
    turns = [
        {"role": "user", "content": [{"type": "text", "text": "Please Write hello.txt"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Write", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "done"}]},
    ]
    message = client.messages.create(model="claude-x", max_tokens=100, messages=turns)  # type: ignore[arg-type]
    assert message.stop_reason == "end_turn"
    assert [b.text for b in message.content if b.type == "text"] == ["I wrote hello.txt."]
    assert model.requests[-1]["body"]["messages"] == turns  # recorded as sent


def test_anything_else_gets_the_default_and_count_tokens_answers(
    sim: tuple[ModelSim, anthropic.Anthropic],
) -> None:
    _, client = sim
    ask = [{"role": "user", "content": "Give this conversation a title"}]
    message = client.messages.create(model="claude-haiku", max_tokens=10, messages=ask)  # type: ignore[arg-type]
    assert [b.text for b in message.content if b.type == "text"] == ["Fine."]
    counted = client.messages.count_tokens(model="claude-x", messages=ask)  # type: ignore[arg-type]
    assert counted.input_tokens > 0


def test_a_script_without_steps_is_refused() -> None:
    with pytest.raises(ValueError, match="needs"):
        Script.parse({"rules": [{"when": "x", "steps": []}]})
