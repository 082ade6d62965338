"""A stand-in for Anthropic's Messages API, as Claude Code calls it: the one double left on a real node.

A real agent (Claude Code in the workspace image) reaches it through ANTHROPIC_BASE_URL with a fake key. It
answers POST /v1/messages, streamed (server-sent events) or not, and count_tokens, from a script:

    {"rules": [{"when": "Write hello.txt",
                "steps": [{"tool": "Write", "input": {"file_path": "/workspace/hello.txt", "content": "hi"}},
                          {"text": "I wrote hello.txt."}]}],
     "default": "OK."}

A request whose first user message contains a rule's `when` is at the step given by how many assistant turns
it already holds: the first asks for the first tool call, the request that carries its result gets the
second step, and so on; past the last step, the last is repeated. So a retried request gets the same answer,
and the stand-in keeps no state per conversation. Every other request (Claude Code's side requests: titles,
topics, summaries) gets `default` as text.

Every request is recorded, for a test to assert what the agent sent: GET /_requests returns them, POST
/_script replaces the script. The events are the anthropic SDK's own types, so their shape is the API's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from anthropic.types import (
    Message,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    TextBlock,
    ToolUseBlock,
    Usage,
)
from anthropic.types.input_json_delta import InputJSONDelta
from anthropic.types.message_delta_usage import MessageDeltaUsage
from anthropic.types.raw_message_delta_event import Delta
from anthropic.types.text_delta import TextDelta
from pydantic import BaseModel

log = logging.getLogger("modelsim")
_ids = itertools.count(1)


@dataclass
class Script:
    rules: list[dict[str, Any]] = field(default_factory=list)
    default: str = "OK."

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Script:
        rules = data.get("rules") or []
        for rule in rules:
            if not isinstance(rule.get("when"), str) or not rule.get("steps"):
                raise ValueError(f"a rule needs `when` (text) and `steps`: {rule}")
        return cls(rules=rules, default=str(data.get("default", "OK.")))

    def step(self, request: dict[str, Any]) -> dict[str, Any]:
        """What to answer `request` with: a {"tool", "input"} or a {"text"} step."""
        messages = request.get("messages") or []
        first = next((m for m in messages if m.get("role") == "user"), None)
        said = _text(first.get("content")) if first else ""
        for rule in self.rules:
            if rule["when"] in said:
                done = sum(1 for m in messages if m.get("role") == "assistant")
                steps = rule["steps"]
                return dict(steps[min(done, len(steps) - 1)])
        return {"text": self.default}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(
        str(b.get("text", "")) for b in content or [] if isinstance(b, dict) and b.get("type") == "text"
    )


def _message(request: dict[str, Any], step: dict[str, Any]) -> Message:
    """The whole answer, as a non-streamed response holds it."""
    if "tool" in step:
        block: TextBlock | ToolUseBlock = ToolUseBlock(
            type="tool_use", id=f"toolu_sim{next(_ids)}", name=step["tool"], input=step.get("input") or {}
        )
        stop = "tool_use"
    else:
        block, stop = TextBlock(type="text", text=str(step.get("text", ""))), "end_turn"
    return Message(
        id=f"msg_sim{next(_ids)}",
        type="message",
        role="assistant",
        model=str(request.get("model") or "claude-sim"),
        content=[block],
        stop_reason=stop,  # type: ignore[arg-type]
        stop_sequence=None,
        usage=Usage(input_tokens=_tokens(request), output_tokens=10),
    )


def _tokens(request: dict[str, Any]) -> int:
    return max(1, len(json.dumps(request.get("messages") or [])) // 4)


def _events(message: Message) -> list[BaseModel]:
    """The server-sent events that stream `message`, as the API sends them."""
    start = message.model_copy(update={"content": [], "stop_reason": None})
    events: list[BaseModel] = [RawMessageStartEvent(type="message_start", message=start)]
    for index, block in enumerate(message.content):
        if isinstance(block, ToolUseBlock):
            empty = block.model_copy(update={"input": {}})
            events.append(
                RawContentBlockStartEvent(type="content_block_start", index=index, content_block=empty)
            )
            partial = json.dumps(block.input)
            delta: InputJSONDelta | TextDelta = InputJSONDelta(type="input_json_delta", partial_json=partial)
        else:
            assert isinstance(block, TextBlock)
            empty_text = TextBlock(type="text", text="")
            events.append(
                RawContentBlockStartEvent(type="content_block_start", index=index, content_block=empty_text)
            )
            delta = TextDelta(type="text_delta", text=block.text)
        events.append(RawContentBlockDeltaEvent(type="content_block_delta", index=index, delta=delta))
        events.append(RawContentBlockStopEvent(type="content_block_stop", index=index))
    events.append(
        RawMessageDeltaEvent(
            type="message_delta",
            delta=Delta(stop_reason=message.stop_reason, stop_sequence=None),
            usage=MessageDeltaUsage(output_tokens=message.usage.output_tokens),
        )
    )
    events.append(RawMessageStopEvent(type="message_stop"))
    return events


class ModelSim:
    def __init__(self, script: Script, record: Path | None = None) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.record = record

    def _keep(self, request: web.Request, body: Any) -> None:
        entry = {"method": request.method, "path": request.path, "query": dict(request.query), "body": body}
        self.requests.append(entry)
        if self.record is not None:
            with self.record.open("a") as f:
                f.write(json.dumps(entry) + "\n")

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self._keep(request, body)
        message = _message(body, self.script.step(body))
        if not body.get("stream"):
            return web.json_response(message.model_dump(mode="json"))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for event in _events(message):
            data = event.model_dump(mode="json")
            await response.write(f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode())
        await response.write_eof()
        return response

    async def count_tokens(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._keep(request, body)
        return web.json_response({"input_tokens": _tokens(body)})

    async def other(self, request: web.Request) -> web.Response:
        body = await request.text()
        self._keep(request, body)
        error = {
            "type": "not_found_error",
            "message": f"the model stand-in has no {request.method} {request.path}",
        }
        return web.json_response({"type": "error", "error": error}, status=404)

    async def get_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests)

    async def set_script(self, request: web.Request) -> web.Response:
        try:
            self.script = Script.parse(await request.json())
        except (ValueError, json.JSONDecodeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"rules": len(self.script.rules)})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        app.router.add_get("/_requests", self.get_requests)
        app.router.add_post("/_script", self.set_script)
        app.router.add_route("*", "/{tail:.*}", self.other)
        return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelsim", description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9099)
    parser.add_argument("--script", type=Path, help="a JSON script (see above); default: answer OK. to all")
    parser.add_argument("--record", type=Path, help="also append every request to this JSON-lines file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    script = Script.parse(json.loads(args.script.read_text())) if args.script else Script()
    web.run_app(ModelSim(script, args.record).app(), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
