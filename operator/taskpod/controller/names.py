"""Display names for tasks applied without one, for their status."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from taskpod.api.models import Key
from taskpod.core import naming


class Namer:
    """From the prompt at once; or, when an Anthropic key is set, from Anthropic in the background:
    never holding up a reconcile, asked once per task, a few at a time. `answered(key)` is called when
    a name is in, so that the task's next status carries it."""

    def __init__(self, env: Mapping[str, str], answered: Callable[[Key], None], at_once: int = 4) -> None:
        self.env = env
        self.answered = answered
        self._slots = asyncio.Semaphore(at_once)
        self._asked: set[Key] = set()  # once per task, for as long as it lives
        self._asking: dict[Key, asyncio.Task[None]] = {}  # in flight only
        self._names: dict[Key, str] = {}  # answered, not yet in status

    def name(self, key: Key, prompt: str) -> str | None:
        """The display name, or None while Anthropic is asked."""
        if key in self._names:
            return self._names[key]
        if not self.env.get("ANTHROPIC_API_KEY"):
            return naming.display_from_prompt(prompt)
        if key not in self._asked:
            self._asked.add(key)
            self._asking[key] = asyncio.get_running_loop().create_task(self._ask(key, prompt))
        return None

    @property
    def in_flight(self) -> int:
        """Questions to Anthropic not answered yet."""
        return len(self._asking)

    def written(self, key: Key, name: str) -> None:
        """`name` is in the task's status now (unless another answer came in meanwhile)."""
        if self._names.get(key) == name:
            del self._names[key]

    def forget(self, key: Key) -> None:
        self._names.pop(key, None)
        self._asked.discard(key)
        if (asking := self._asking.pop(key, None)) is not None:
            asking.cancel()

    async def _ask(self, key: Key, prompt: str) -> None:
        try:
            async with self._slots:
                self._names[key] = await naming.display_name_for(prompt, self.env)
        finally:
            self._asking.pop(key, None)  # a finished task need not be kept until its Task is deleted
        self.answered(key)
