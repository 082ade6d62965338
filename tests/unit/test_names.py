"""Display names for tasks applied without one: at once from the prompt, or from Anthropic in the
background, asked once per task."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from taskpod.controller.names import Namer
from taskpod.core import naming

KEY = ("team", "fix-login")


def test_without_a_key_the_name_comes_from_the_prompt_at_once() -> None:
    async def scenario() -> str | None:
        namer = Namer({}, lambda key: None)
        return namer.name(KEY, "Fix the flaky login test")

    assert asyncio.run(scenario()) == "Fix the flaky login test"


def test_with_a_key_anthropic_is_asked_once_in_the_background(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    answered: list[Any] = []

    async def display_name_for(prompt: str, env: Any = None) -> str:
        asked.append(prompt)
        await asyncio.sleep(0)
        return "Repair the login test"

    monkeypatch.setattr(naming, "display_name_for", display_name_for)

    async def scenario() -> list[str | None]:
        namer = Namer({"ANTHROPIC_API_KEY": "sk-test"}, answered.append)
        names = [namer.name(KEY, "Fix it"), namer.name(KEY, "Fix it")]  # while asked: nothing yet
        while not answered:
            await asyncio.sleep(0)
        names.append(namer.name(KEY, "Fix it"))
        assert namer.in_flight == 0  # answered: nothing in flight is kept
        namer.written(KEY, "Something else")  # another name written: this answer stays
        names.append(namer.name(KEY, "Fix it"))
        namer.written(KEY, "Repair the login test")
        namer.forget(KEY)
        return names

    assert asyncio.run(scenario()) == [None, None, "Repair the login test", "Repair the login test"]
    assert asked == ["Fix it"] and answered == [KEY]
