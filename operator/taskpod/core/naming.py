"""Task names and display names, made from the prompt when the user gives none (as Coder Tasks does).

The chain, for what is missing:
1. With ANTHROPIC_API_KEY set, a small Claude model (ANTHROPIC_MODEL, default DEFAULT_MODEL; at
   ANTHROPIC_BASE_URL when set) suggests both as JSON. It is asked once, without retries, and any failure
   (HTTP error, timeout, malformed JSON, placeholder or invalid values) falls through to the next step.
   The wait is TASKPOD_NAMING_TIMEOUT seconds (default 10).
2. The prompt, sanitised: its first words as a DNS-1035 stem, its first line as the display name.
3. When the prompt leaves no ASCII word to name after (emoji, CJK), a random two-word stem like "brave-otter".

A generated name is the stem plus a random 4-hex-digit suffix ("fix-flaky-login-test-3fa9"). Every child
object is named after the task, so any task name must be a DNS-1035 label of at most MAX_TASK_NAME characters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic_core import PydanticCustomError

log = logging.getLogger("taskpod.core.naming")

# The limit of the StatefulSet of earlier releases (see the Task CRD), kept so that no task becomes invalid.
MAX_TASK_NAME = 52
STEM_MAX = 27  # a generated name is at most 27 + len("-3fa9") = 32
DISPLAY_MAX = 64
DEFAULT_MODEL = "claude-haiku-5-5"
DEFAULT_TIMEOUT = 10.0
PROMPT_SENT_MAX = 4000  # a name needs the gist, not the whole prompt
UNTITLED = "Untitled task"

_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_STEM = re.compile(r"[a-z](?:[a-z0-9-]{0,25}[a-z0-9])?")
# Runs of letters and digits of any script, apostrophes inside a word kept ("don't" is one word).
_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
_ZWJ = "\u200d"  # joins emoji sequences: an invisible format character worth keeping

_ADJECTIVES = (
    "amber", "bold", "brave", "bright", "calm", "clever", "cosy", "eager", "fair", "gentle",
    "glad", "golden", "happy", "humble", "jolly", "keen", "kind", "lively", "lucky", "merry",
    "mild", "nimble", "noble", "proud", "quick", "quiet", "rapid", "shiny", "steady", "swift",
    "tidy", "witty",
)  # fmt: skip
_ANIMALS = (
    "badger", "beaver", "bison", "crane", "dolphin", "eagle", "falcon", "ferret", "finch", "fox",
    "gecko", "heron", "ibex", "koala", "lemur", "lynx", "marten", "moose", "newt", "orca",
    "otter", "owl", "panda", "puffin", "quail", "raven", "robin", "seal", "stoat", "swan",
    "tapir", "walrus", "wren", "yak",
)  # fmt: skip

# Values the model copies from its instruction, or answers when it has nothing better.
_PLACEHOLDERS = frozenset(
    {
        "", "task-name", "task_name", "taskname", "display name", "display_name", "displayname", "name",
        "example", "example-task", "example task", "my-task", "untitled", "unnamed", "task-unnamed",
        "placeholder", "string", "todo", "tbd", "n/a", "none", "null", "...", "…",
        "fix-flaky-login-test", "fix flaky login test",
    }
)  # fmt: skip

_INSTRUCTION = """\
You name tasks for an AI coding agent. Read the task prompt the user sends and reply with JSON only:
{"display_name": "<display name>", "task_name": "<task-name>"}

display_name: a short human-readable summary of the main task (action and subject), at most 64 characters,
in the prompt's language, starting with a capital letter where the script has case.
task_name: the same idea as an identifier of at most 27 characters: lowercase ASCII letters, digits and
hyphens, starting with a letter, not ending with a hyphen.

Example: for "The login test fails about one run in five, please make it reliable" you would reply
{"display_name": "Fix flaky login test", "task_name": "fix-flaky-login-test"}

If the prompt gives nothing to name, reply {"display_name": "", "task_name": ""}."""


@dataclass(frozen=True)
class Names:
    """A task's name and display name; `source` says where the name came from.

    "anthropic", "prompt" or "random" for a generated name, "given" when the caller chose it.
    """

    name: str
    display_name: str
    source: str


def invalid_task_name(name: str) -> str | None:
    """None when `name` is a usable Task name (DNS-1035 label, <= 52 chars); else one sentence saying why."""
    if not name:
        return "task names must not be empty"
    if len(name) > MAX_TASK_NAME:
        return (
            f"task names must be at most {MAX_TASK_NAME} characters "
            "(every child object is named after the task)"
        )
    if _DNS1035.fullmatch(name):
        return None
    if name != name.lower():
        return "task names must be lowercase"
    if not ("a" <= name[0] <= "z"):
        return "task names must start with a lowercase letter (the task's Service name is a DNS-1035 label)"
    if not re.fullmatch(r"[-a-z0-9]*", name):
        return "task names may contain only lowercase letters, digits and hyphens"
    return "task names must end with a letter or a digit"


def name_stem(prompt: str) -> str | None:
    """The prompt's first words as a stem of at most STEM_MAX characters, or None when none is usable.

    Accents are dropped ("Réparer" gives "reparer"), other non-ASCII letters and symbols are skipped, and
    leading words that do not start with a letter are skipped ("2FA login broken" gives "login-broken").
    """
    folded = "".join(
        char for char in unicodedata.normalize("NFKD", prompt.lower()) if not unicodedata.combining(char)
    )
    stem = ""
    for match in _WORD.finditer(folded):
        word = re.sub(r"[^a-z0-9]", "", match.group())
        if not word or (not stem and not word[0].isalpha()):
            continue
        candidate = f"{stem}-{word}" if stem else word
        if len(candidate) > STEM_MAX:
            stem = stem or word[:STEM_MAX]  # one word too long for a cut at a word boundary
            break
        stem = candidate
    return stem or None


def display_from_prompt(prompt: str) -> str | None:
    """The prompt's first non-blank line as a display name, or None for a blank prompt."""
    for line in prompt.splitlines():
        display = _tidy_display(line)
        if display:
            return display
    return None


def random_stem() -> str:
    """A readable two-word stem like "brave-otter"."""
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_ANIMALS)}"


def with_suffix(stem: str) -> str:
    """The stem with a random 4-hex-digit suffix, so that two tasks with the same prompt get two names."""
    return f"{stem}-{secrets.token_hex(2)}"


class _Answer(BaseModel):
    """The model's JSON answer, checked and tidied."""

    model_config = ConfigDict(strict=True, extra="ignore")

    display_name: str
    task_name: str

    @field_validator("display_name", "task_name", mode="before")
    @classmethod
    def _not_placeholder(cls, value: object) -> object:
        if isinstance(value, str) and _is_placeholder(value):
            raise PydanticCustomError("placeholder", "a placeholder, not a name")
        return value

    @field_validator("task_name")
    @classmethod
    def _a_stem(cls, value: str) -> str:
        stem = value.strip().lower()
        if not _STEM.fullmatch(stem):
            raise ValueError(f"not a name stem of at most {STEM_MAX} characters")
        return stem

    @field_validator("display_name")
    @classmethod
    def _a_display_name(cls, value: str) -> str:
        display = _tidy_display(value)
        if not display:
            raise ValueError("blank")
        return display


async def suggest(
    prompt: str,
    *,
    api_key: str,
    model: str = DEFAULT_MODEL,
    base_url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[str, str] | None:
    """(task_name stem, display_name) from Anthropic, or None on any failure (logged, without the key)."""
    # Imported here, not at the top: the SDK costs about 2 s and 30 MiB to import, which the operator
    # and every `kubectl task` command would otherwise pay even when no key is set.
    import anthropic

    try:
        async with asyncio.timeout(timeout):  # the SDK's timeout is per read; this bounds the whole call
            text = await _ask(prompt, api_key=api_key, model=model, base_url=base_url, timeout=timeout)
    except (anthropic.APITimeoutError, TimeoutError):
        kind = "timeout"
    except anthropic.APIConnectionError:
        kind = "connection error"
    except anthropic.APIStatusError as exc:
        kind = f"HTTP {exc.status_code}"
    except Exception as exc:  # any failure falls back to the prompt; the message might quote the request
        kind = type(exc).__name__
    else:
        answer = _read_answer(text)
        if isinstance(answer, _Answer):
            return answer.task_name, answer.display_name
        kind = answer
    log.warning("Anthropic did not name the task (%s); naming it from the prompt", kind)
    return None


async def generate(
    prompt: str,
    *,
    name: str | None = None,
    display_name: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Names:
    """Fill in what is missing of name and display name through the chain; what is given is kept as is.

    `env` defaults to os.environ (ANTHROPIC_API_KEY, ANTHROPIC_MODEL, ANTHROPIC_BASE_URL and
    TASKPOD_NAMING_TIMEOUT are read). Anthropic is asked at most once. A blank prompt raises ValueError.
    """
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    name = name or None
    display_name = display_name if display_name and display_name.strip() else None
    if name is not None and display_name is not None:
        return Names(name, display_name, "given")
    suggested = await _suggest_from_env(prompt, os.environ if env is None else env)
    if suggested is not None:
        stem, generated_display = suggested
        source = "anthropic"
    else:
        prompt_stem = name_stem(prompt)
        stem = prompt_stem or random_stem()
        source = "prompt" if prompt_stem else "random"
        # a prompt of control characters alone has no display name of its own: the stem stands in
        generated_display = display_from_prompt(prompt) or _capitalise(stem.replace("-", " "))
    if name is not None:
        return Names(name, generated_display, "given")
    return Names(with_suffix(stem), display_name or generated_display, source)


def generate_sync(
    prompt: str,
    *,
    name: str | None = None,
    display_name: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Names:
    """generate() for synchronous callers such as the CLI."""
    return asyncio.run(generate(prompt, name=name, display_name=display_name, env=env))


async def display_name_for(prompt: str, env: Mapping[str, str] | None = None) -> str:
    """The display name alone (for status.displayName): always non-empty and at most DISPLAY_MAX."""
    if not prompt.strip():
        return UNTITLED
    suggested = await _suggest_from_env(prompt, os.environ if env is None else env)
    if suggested is not None:
        return suggested[1]
    return display_from_prompt(prompt) or UNTITLED


async def _suggest_from_env(prompt: str, env: Mapping[str, str]) -> tuple[str, str] | None:
    api_key = env.get("ANTHROPIC_API_KEY", "").strip()
    if not api_key:
        return None
    return await suggest(
        prompt,
        api_key=api_key,
        model=env.get("ANTHROPIC_MODEL", "").strip() or DEFAULT_MODEL,
        base_url=env.get("ANTHROPIC_BASE_URL", "").strip() or None,
        timeout=_timeout(env),
    )


def _timeout(env: Mapping[str, str]) -> float:
    try:
        seconds = float(env.get("TASKPOD_NAMING_TIMEOUT", ""))
    except ValueError:
        return DEFAULT_TIMEOUT
    return seconds if 0 < seconds < 600 else DEFAULT_TIMEOUT


async def _ask(prompt: str, *, api_key: str, model: str, base_url: str | None, timeout: float) -> str:
    """The model's text answer; the SDK raises on HTTP errors, timeouts and refused connections."""
    import anthropic
    from anthropic.types import TextBlock

    # No retries: a name is not worth the wait, the prompt is a good enough fallback.
    async with anthropic.AsyncAnthropic(
        api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0
    ) as client:
        message = await client.messages.create(
            model=model,
            max_tokens=256,
            system=_INSTRUCTION,
            messages=[{"role": "user", "content": prompt[:PROMPT_SENT_MAX]}],
        )
    return "".join(block.text for block in message.content if isinstance(block, TextBlock))


def _read_answer(text: str) -> _Answer | str:
    """The model's answer checked, or what is wrong with it."""
    found = _first_json_object(text)
    if found is None:
        return "malformed JSON"
    try:
        return _Answer.model_validate(found)
    except ValidationError as exc:
        placeholder = any(error["type"] == "placeholder" for error in exc.errors())
        return "placeholder answer" if placeholder else "invalid answer"


def _first_json_object(text: str) -> dict[str, object] | None:
    """The first JSON object in `text`, which may wrap it in prose or in a ```json fence."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _is_placeholder(value: str) -> bool:
    folded = " ".join(value.split()).lower()
    templated = folded.startswith(("<", "{{", "[")) and folded.endswith((">", "}}", "]"))
    return templated or folded.strip("\"'`") in _PLACEHOLDERS


def _tidy_display(text: str) -> str:
    """Whitespace collapsed, control characters dropped, capitalised, cut to DISPLAY_MAX with an ellipsis."""
    kept = "".join(char for char in text if _printable(char) or char.isspace())
    return _cut(_capitalise(" ".join(kept.split())), DISPLAY_MAX)


def _printable(char: str) -> bool:
    category = unicodedata.category(char)
    if category == "Cf":  # format characters: invisible, except the ones that build emoji sequences
        return char == _ZWJ or 0xE0020 <= ord(char) <= 0xE007F
    return category not in ("Cc", "Cs")


def _capitalise(text: str) -> str:
    """The first letter in upper case, when it comes before any digit and its script has case."""
    for index, char in enumerate(text):
        if char.isalnum():
            title = char.title()
            if char.islower() and len(title) == 1:  # "ß" would become "Ss"
                return text[:index] + title + text[index + 1 :]
            return text
    return text


def _cut(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, "…" included, at a word boundary when one is not too far back."""
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    if text[limit - 1] != " ":
        space = head.rfind(" ")
        if space >= limit // 2:  # else (CJK, one long word) a hard cut keeps more of the text
            head = head[:space]
    return (head.rstrip(" ,;:") or head.rstrip()) + "…"
