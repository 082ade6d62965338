"""The soak's schedule: seeded random operations and faults, a pure function of the seed."""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bench.soak import (
    AGENT_PATHS,
    BEHAVIOURS,
    NAMESPACES,
    SIM,
    TEMPLATES,
)


class Kind(StrEnum):
    CREATE = "create"
    PAUSE = "pause"
    RESUME = "resume"
    SEND = "send"
    EDIT = "edit"
    DELETE = "delete"
    TEMPLATE = "template"  # params.change: env, image, sim, break, heal
    FAULT = "fault"  # an agent's: params.fault is fail, hang, garbage or down
    KILL = "kill"  # SIGKILL the operator, start it again after params.restart_after seconds


WEIGHTS = {
    Kind.PAUSE: 14,
    Kind.RESUME: 14,
    Kind.SEND: 14,
    Kind.EDIT: 6,
    Kind.DELETE: 3,
    Kind.CREATE: 5,
    Kind.TEMPLATE: 4,
    Kind.FAULT: 12,
}
TEMPLATE_CHANGES = {"env": 3, "image": 2, "sim": 3, "break": 1}
AGENT_FAULTS = {"fail": 3, "hang": 2, "garbage": 2, "down": 2}
ALPHABETS = (
    string.ascii_letters + "      ",
    "àéîõüçñßøåÆŒ",
    "αβγδεζηθλμπσωΩ",
    "жзийклмнопрстуфх",
    "修复登录测试用例中的错误并提交",
    "🚀🎉🐍🦀🧪🔥💡🌍",
    "\U0001d518\U0001d52b\U0001d526\U0001d520\U0001d52c\U0001d521\U0001d522",  # 4-byte letters
    "\u200d\u0301\u05d0\u05d1\u0627\u0644",  # a joiner, a combining accent, Hebrew and Arabic
    "\n\t.,;:!?'\"{}<>\\/",
)


@dataclass(frozen=True)
class Op:
    """One operation: when (seconds from the start), what, on which of the tasks it fits (`pick`, a
    fraction: which tasks fit depends on the run) and with what (texts, counts, ...)."""

    at: float
    kind: Kind
    pick: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)


def text(rng: random.Random, tag: str) -> str:
    """A unique text of random Unicode (4-byte characters, joiners, newlines), tagged to stay distinct."""
    length = rng.randint(1000, 3000) if rng.random() < 0.05 else rng.randint(5, 120)
    chars: list[str] = []
    while len(chars) < length:
        alphabet = rng.choice(ALPHABETS)
        chars.extend(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
    return f"[{tag}] {''.join(chars[:length])} 🏁"  # ends in a visible character: agents trim


def schedule(seed: int, seconds: float, tasks: int, rate: float = 1.0, kills: int = 2) -> list[Op]:
    """The whole run's operations, in time order: `tasks` creations in the first 20 s, then on average
    `rate` operations a second, and `kills` operator kills spread over the run. Same seed, same list."""
    rng = random.Random(seed)
    serial = iter(range(1, 10**9))

    def create() -> dict[str, Any]:
        return {
            "prompt": text(rng, f"prompt {next(serial)}"),
            "template": rng.randrange(len(TEMPLATES)),
            "paused": rng.random() < 0.1,
            "same_name": rng.random() < 0.5,
        }

    spread = min(20.0, seconds / 4)
    ops = [Op(round(i * spread / tasks, 3), Kind.CREATE, 0.0, create()) for i in range(tasks)]
    at = spread
    while True:
        at += max(0.1, rng.expovariate(rate))
        if at >= seconds:
            break
        kind = rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
        params: dict[str, Any] = {}
        if kind is Kind.CREATE:
            params = create()
        elif kind is Kind.EDIT:
            params = {"prompt": text(rng, f"prompt {next(serial)}")}
        elif kind is Kind.SEND:
            params = {"text": text(rng, f"send {next(serial)}")}
        elif kind is Kind.DELETE and rng.random() < 0.3:  # and at once a new task of the same name
            params = {"recreate": {**create(), "same_name": True}}
        elif kind is Kind.FAULT:
            fault = rng.choices(list(AGENT_FAULTS), list(AGENT_FAULTS.values()))[0]
            params = {"fault": fault}
            if fault == "down":
                params["seconds"] = round(rng.uniform(1, 12), 1)  # longer than the grace of 5 s at times
            else:
                params.update(path=rng.choice(AGENT_PATHS), count=rng.randint(1, 5))
        elif kind is Kind.TEMPLATE:
            change = rng.choices(list(TEMPLATE_CHANGES), list(TEMPLATE_CHANGES.values()))[0]
            where = {"namespace": rng.randrange(len(NAMESPACES)), "template": rng.randrange(len(TEMPLATES))}
            params = {"change": change, **where}
            if change == "env":
                params["value"] = str(rng.randrange(10**6))
            elif change == "image":
                params["value"] = f"example.invalid/agent:1.{rng.randrange(1000)}"
            elif change == "sim":
                params["value"] = {
                    "work_seconds": rng.choice([0.2, 0.5, 1, 2]),
                    "reply_steps": rng.randint(1, 3),
                }
            else:
                params["value"] = rng.choice(["ImagePullBackOff", "CrashLoopBackOff", "CreateContainerError"])
                heal = at + rng.uniform(20, 90)
                if heal < seconds:  # else it stays broken, and its running tasks may end in Error
                    ops.append(Op(round(heal, 3), Kind.TEMPLATE, 0.0, {**where, "change": "heal"}))
        ops.append(Op(round(at, 3), kind, round(rng.random(), 6), params))
    for _ in range(kills):
        ops.append(
            Op(
                round(rng.uniform(0.1, 0.85) * seconds, 3),
                Kind.KILL,
                0.0,
                {"restart_after": rng.uniform(0, 8)},
            )
        )
    return sorted(ops, key=lambda op: op.at)


def template(name: str) -> dict[str, Any]:
    """A TaskTemplate whose agent the simulator plays as BEHAVIOURS[name] says."""
    pod = {
        "image": "example.invalid/agent:1",
        "env": [{"name": "SOAK_REVISION", "value": "0"}],
        "annotations": {SIM: json.dumps(BEHAVIOURS[name])},
    }
    return {
        "apiVersion": "taskpod.dev/v1alpha1",
        "kind": "TaskTemplate",
        "metadata": {"name": name},
        "spec": {
            "displayName": f"Soak: {name} agent",
            "agent": {"type": "custom"},
            "pod": pod,
            "storage": {"size": "1Gi"},
        },
    }
