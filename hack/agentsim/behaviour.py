"""What a scripted agent does, as a typed value parsed from JSON (the keys are documented in agentsim.agent).

Parsing is strict: a misspelt key in a test's annotation or /_sim/config call is an error, not a silently
ignored wish, so a test never passes because the fault it meant to inject was never injected.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

DEFAULT_GREETING = "Hello! I am a scripted agent. What should I work on?"
DEFAULT_HOSTS = ["*"]  # a workspace must run agentapi with --allowed-hosts '*' to be reached by pod IP
UPSTREAM_HOSTS = ["localhost", "127.0.0.1", "::1"]  # agentapi's own default, for tests of that failure

# A fault maps a path ("*" for every AgentAPI path) to the number of requests it still affects;
# None affects every request until the fault is changed.
Faults = dict[str, int | None]
FAULT_KINDS = ("hang", "drop", "fail", "garbage", "slow")  # in precedence order: a request meets one


class BehaviourError(ValueError):
    """The JSON does not describe a behaviour: unknown key, wrong type or impossible value."""


@dataclass(frozen=True)
class Behaviour:
    agent_type: str = "custom"
    greeting: str | None = DEFAULT_GREETING
    startup_seconds: float = 0.0
    init_seconds: float = 0.0
    work_seconds: float = 0.5
    reply: str | list[str] = "Done: {prompt}"
    reply_steps: int = 1
    post_delay_seconds: float = 0.0
    fail_after_accept: bool = False
    fail: Faults = field(default_factory=dict)
    hang: Faults = field(default_factory=dict)
    garbage: Faults = field(default_factory=dict)
    drop: Faults = field(default_factory=dict)
    slow: Faults = field(default_factory=dict)
    slow_seconds: float = 3.0
    down: bool | float = False
    allowed_hosts: list[str] = field(default_factory=lambda: list(DEFAULT_HOSTS))
    log_limit: int = 5000

    @classmethod
    def parse(cls, raw: str | bytes | dict[str, Any] | None, base: Behaviour | None = None) -> Behaviour:
        """A behaviour from JSON text or a decoded object, over `base` (default: the defaults)."""
        return (base or cls()).merged(_decode(raw))

    def merged(self, changes: dict[str, Any]) -> Behaviour:
        """This behaviour with `changes` applied; keys not named keep their value."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise BehaviourError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **{k: _CHECKS[k](k, v) for k, v in changes.items()})

    def dump(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def reply_for(self, prompt: str, turn: int) -> str:
        """The answer to the user's `turn`-th message (from 1): a list has one per turn, the last repeats."""
        template = self.reply if isinstance(self.reply, str) else self.reply[min(turn, len(self.reply)) - 1]
        return template.replace("{prompt}", prompt).replace("{turn}", str(turn))

    def fault_for(self, path: str) -> str | None:
        """The fault a request to `path` meets: the first kind in FAULT_KINDS that applies, used up by one."""
        return next((kind for kind in FAULT_KINDS if take_fault(getattr(self, kind), path)), None)

    def host_allowed(self, host: str) -> bool:
        """agentapi's Host check: the hostname (port ignored, case-insensitive) must be in the list."""
        if "*" in self.allowed_hosts:
            return True
        try:
            name = urlsplit(f"http://{host}").hostname
        except ValueError:
            return False
        return bool(host) and name is not None and name in {h.lower() for h in self.allowed_hosts}


def take_fault(faults: Faults, path: str) -> bool:
    """True when a request to `path` hits the fault; a counted fault is used up one request at a time."""
    for key in (path, "*"):
        if key in faults:
            left = faults[key]
            if left is None:
                return True
            if left <= 1:
                del faults[key]
            else:
                faults[key] = left - 1
            return True
    return False


def _decode(raw: str | bytes | dict[str, Any] | None) -> dict[str, Any]:
    if raw is None or raw == "" or raw == b"":
        return {}
    if isinstance(raw, dict):
        return dict(raw)
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BehaviourError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BehaviourError(f"expected a JSON object, got {type(data).__name__}")
    return data


def _seconds(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise BehaviourError(f"{key}: expected a number of seconds >= 0, got {value!r}")
    return float(value)


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise BehaviourError(f"{key}: expected a string, got {value!r}")
    return value


def _optional_text(key: str, value: Any) -> str | None:
    return None if value is None else _text(key, value)


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise BehaviourError(f"{key}: expected true or false, got {value!r}")
    return value


def _count(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BehaviourError(f"{key}: expected an integer >= 1, got {value!r}")
    return int(value)


def _reply(key: str, value: Any) -> str | list[str]:
    if isinstance(value, list):
        if not value:
            raise BehaviourError(f"{key}: a list of replies must not be empty")
        return [_text(f"{key}[{i}]", v) for i, v in enumerate(value)]
    return _text(key, value)


def _faults(key: str, value: Any) -> Faults:
    """A list of paths (always) or an object {path: count} (the next `count` requests, then healed)."""
    if isinstance(value, list):
        return {_path(key, p): None for p in value}
    if isinstance(value, dict):
        return {_path(key, p): None if n is None else _count(f"{key}[{p}]", n) for p, n in value.items()}
    raise BehaviourError(f"{key}: expected a list of paths or an object {{path: count}}, got {value!r}")


def _path(key: str, value: Any) -> str:
    if not isinstance(value, str) or not (value == "*" or value.startswith("/")):
        raise BehaviourError(f"{key}: expected a path such as /status (or *), got {value!r}")
    return value


def _down(key: str, value: Any) -> bool | float:
    return value if isinstance(value, bool) else _seconds(key, value)


def _hosts(key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise BehaviourError(f"{key}: expected a non-empty list of host names, got {value!r}")
    return [_text(f"{key}[{i}]", h) for i, h in enumerate(value)]


_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "agent_type": _text,
    "greeting": _optional_text,
    "startup_seconds": _seconds,
    "init_seconds": _seconds,
    "work_seconds": _seconds,
    "reply": _reply,
    "reply_steps": _count,
    "post_delay_seconds": _seconds,
    "fail_after_accept": _flag,
    "fail": _faults,
    "hang": _faults,
    "garbage": _faults,
    "drop": _faults,
    "slow": _faults,
    "slow_seconds": _seconds,
    "down": _down,
    "allowed_hosts": _hosts,
    "log_limit": _count,
}
