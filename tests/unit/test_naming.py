"""Task names and display names: the Anthropic suggestion, the sanitised prompt, the random fallback.

The Anthropic cases run the real SDK against a local server that speaks the Messages API, so what is
sent (key, model, prompt) and every way an answer can fail are seen from the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from taskpod.core.naming import (
    DEFAULT_MODEL,
    DISPLAY_MAX,
    MAX_TASK_NAME,
    STEM_MAX,
    Names,
    display_from_prompt,
    display_name_for,
    generate,
    generate_sync,
    invalid_task_name,
    name_stem,
    random_stem,
    with_suffix,
)

KEY = "sk-test-secret-5f0c9a7e31d24b68"
PROMPT = "Fix the flaky login test in CI, it fails one run in five"
GOOD = json.dumps({"display_name": "Repair the flaky login test", "task_name": "repair-login-test"})
SUFFIXED = re.compile(r"(?P<stem>.+)-[0-9a-f]{4}")
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")


@dataclass
class Received:
    headers: dict[str, str]  # names in lower case
    body: dict[str, Any]

    @property
    def key(self) -> str | None:
        """The API key as sent: SDK 2.14 sends it as a bearer token, the API also takes `x-api-key`."""
        bearer = self.headers.get("authorization", "").removeprefix("Bearer ")
        return self.headers.get("x-api-key") or bearer or None


@dataclass
class FakeAnthropic:
    """A local `POST /v1/messages`: after `delay` seconds, answers `text` or fails with `status`."""

    text: str = GOOD
    status: int = 200
    delay: float = 0.0
    requests: list[Received] = field(default_factory=list)
    _release: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)

    async def _messages(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(Received({key.lower(): value for key, value in request.headers.items()}, body))
        if self.delay:
            with contextlib.suppress(TimeoutError):  # released early when the test is over
                await asyncio.wait_for(self._release.wait(), self.delay)
        if self.status != 200:
            error = {"type": "error", "error": {"type": "api_error", "message": "the fake says no"}}
            return web.json_response(error, status=self.status)
        return web.json_response(
            {
                "id": "msg_01test",
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": [{"type": "text", "text": self.text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 42, "output_tokens": 17},
            }
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        """Serves on a free port of 127.0.0.1; yields the base URL."""
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        try:
            yield f"http://{host}:{port}"
        finally:
            self._release.set()
            await runner.cleanup()


def generate_against(
    fake: FakeAnthropic,
    prompt: str = PROMPT,
    *,
    name: str | None = None,
    display_name: str | None = None,
    **env: str,
) -> Names:
    """generate() with a key, pointed at the fake server; `env` adds or overrides variables."""

    async def scenario() -> Names:
        async with fake.running() as url:
            environ = {"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": url, **env}
            return await generate(prompt, name=name, display_name=display_name, env=environ)

    return asyncio.run(scenario())


def assert_valid(names: Names) -> None:
    assert invalid_task_name(names.name) is None, names
    assert len(names.name) <= STEM_MAX + 5, names
    assert SUFFIXED.fullmatch(names.name), names
    assert_valid_display(names.display_name)


def assert_valid_display(display: str) -> None:
    assert 0 < len(display) <= DISPLAY_MAX, display
    assert display == display.strip() and "\n" not in display, display
    assert all(unicodedata.category(char) not in ("Cc", "Cs") for char in display), display
    first = next((char for char in display if char.isalnum()), "")
    assert not (first.islower() and len(first.title()) == 1), f"not capitalised: {display!r}"


# --- Anthropic ----------------------------------------------------------------------------------------


def test_a_good_answer_names_the_task(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake = FakeAnthropic()
    names = generate_against(fake)
    assert_valid(names)
    assert names.source == "anthropic"
    assert SUFFIXED.fullmatch(names.name)["stem"] == "repair-login-test"  # type: ignore[index]
    assert names.display_name == "Repair the flaky login test"
    assert len(fake.requests) == 1
    assert fake.requests[0].key == KEY  # sent to the server, never logged
    assert KEY not in caplog.text


def test_the_model_and_the_prompt_reach_the_server() -> None:
    fake = FakeAnthropic()
    generate_against(fake, ANTHROPIC_MODEL="claude-test-model")
    body = fake.requests[0].body
    assert body["model"] == "claude-test-model"
    assert body["messages"] == [{"role": "user", "content": PROMPT}]
    assert "JSON" in body["system"]

    fake = FakeAnthropic()
    generate_against(fake, "x" + "y" * 10_000)
    sent = fake.requests[0].body
    assert sent["model"] == DEFAULT_MODEL
    assert sent["messages"][0]["content"] == "x" + "y" * 3999  # the first 4000 characters only


@pytest.mark.parametrize(
    "text",
    [
        f"Sure! Here are the names you asked for:\n{GOOD}\nGood luck with the test.",
        f"```json\n{GOOD}\n```",
        json.dumps({"task_name": " Repair-Login-Test ", "display_name": "  repair the flaky\nlogin test "}),
    ],
    ids=["wrapped-in-prose", "fenced", "untidy"],
)
def test_answers_around_the_json_are_read(text: str) -> None:
    names = generate_against(FakeAnthropic(text=text))
    assert_valid(names)
    assert names.source == "anthropic"
    assert names.name.startswith("repair-login-test-")
    assert names.display_name == "Repair the flaky login test"


@pytest.mark.parametrize(
    ("fake", "kind"),
    [
        pytest.param(
            FakeAnthropic(text='{"display_name": "Display Name", "task_name": "task-name"}'),
            "placeholder answer",
            id="instruction-values",
        ),
        pytest.param(
            FakeAnthropic(text='{"display_name": "<display_name>", "task_name": "<task_name>"}'),
            "placeholder answer",
            id="template",
        ),
        pytest.param(
            FakeAnthropic(text='{"display_name": "", "task_name": ""}'), "placeholder answer", id="empty"
        ),
        pytest.param(
            FakeAnthropic(text='{"display_name": "Example", "task_name": "example"}'),
            "placeholder answer",
            id="example",
        ),
        pytest.param(
            FakeAnthropic(text='{"display_name": "Fix the login test", "task_name": "fix-lo'),
            "malformed JSON",
            id="cut-short",
        ),
        pytest.param(
            FakeAnthropic(text="I would call it fix-login-test."), "malformed JSON", id="prose-only"
        ),
        pytest.param(
            FakeAnthropic(text='{"display_name": "Fix it", "task_name": "Fix_it!"}'),
            "invalid answer",
            id="bad-characters",
        ),
        pytest.param(
            FakeAnthropic(text='{"display_name": "Fix it", "task_name": "2fa-fix"}'),
            "invalid answer",
            id="leading-digit",
        ),
        pytest.param(
            FakeAnthropic(text='{"display_name": "Fix it", "task_name": "fix-it-"}'),
            "invalid answer",
            id="trailing-hyphen",
        ),
        pytest.param(
            FakeAnthropic(text='{"display_name": "Fix it", "task_name": "a' + "b" * 27 + '"}'),
            "invalid answer",
            id="too-long",
        ),
        pytest.param(
            FakeAnthropic(text='{"display_name": "Fix it", "task_name": 42}'), "invalid answer", id="number"
        ),
        pytest.param(FakeAnthropic(text='{"display_name": "Fix it"}'), "invalid answer", id="missing"),
        pytest.param(FakeAnthropic(status=500), "HTTP 500", id="http-500"),
        pytest.param(FakeAnthropic(status=429), "HTTP 429", id="http-429"),
        pytest.param(FakeAnthropic(status=401), "HTTP 401", id="http-401"),
        pytest.param(FakeAnthropic(delay=5.0), "timeout", id="timeout"),  # TASKPOD_NAMING_TIMEOUT is 2
    ],
)
def test_any_failure_falls_back_to_the_prompt(
    fake: FakeAnthropic, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    names = generate_against(fake, TASKPOD_NAMING_TIMEOUT="2")
    assert_valid(names)
    assert names.source == "prompt"
    assert names.name.startswith(f"{name_stem(PROMPT)}-")
    assert names.display_name == display_from_prompt(PROMPT)
    assert len(fake.requests) == 1  # asked once, no retries
    assert fake.requests[0].key == KEY
    assert KEY not in caplog.text
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert [message for message in warnings if f"({kind})" in message], warnings


def test_a_refused_connection_falls_back_to_the_prompt(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario() -> Names:
        fake = FakeAnthropic()
        async with fake.running() as url:
            pass  # the port is free again: nothing listens there
        return await generate(PROMPT, env={"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": url})

    names = asyncio.run(scenario())
    assert_valid(names)
    assert names.source == "prompt"
    assert "(connection error)" in caplog.text
    assert KEY not in caplog.text


def test_without_a_key_nothing_is_sent() -> None:
    async def scenario(fake: FakeAnthropic) -> list[Names]:
        async with fake.running() as url:
            return [
                await generate(PROMPT, env={"ANTHROPIC_BASE_URL": url}),
                await generate(PROMPT, env={"ANTHROPIC_API_KEY": "  ", "ANTHROPIC_BASE_URL": url}),
                await generate("修复登录测试 🚀", env={"ANTHROPIC_BASE_URL": url}),
            ]

    fake = FakeAnthropic()
    from_prompt, blank_key, random_name = asyncio.run(scenario(fake))
    assert fake.requests == []
    for names in (from_prompt, blank_key, random_name):
        assert_valid(names)
    assert from_prompt.source == blank_key.source == "prompt"
    assert from_prompt.name.startswith("fix-the-flaky-login-test-")
    assert random_name.source == "random"
    assert random_name.display_name == "修复登录测试 🚀"


def test_the_environment_is_read_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(fake: FakeAnthropic) -> Names:
        async with fake.running() as url:
            monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
            monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
            monkeypatch.delenv("ANTHROPIC_MODEL", raising=False)
            return await generate(PROMPT)

    fake = FakeAnthropic()
    names = asyncio.run(scenario(fake))
    assert names.source == "anthropic"
    assert len(fake.requests) == 1


def test_what_is_given_is_kept() -> None:
    fake = FakeAnthropic()
    both = generate_against(fake, name="my-own-name", display_name="My own display")
    assert both == Names("my-own-name", "My own display", "given")
    assert fake.requests == []  # nothing to ask

    name_only = generate_against(FakeAnthropic(), name="my-own-name")
    assert name_only == Names("my-own-name", "Repair the flaky login test", "given")

    display_only = generate_against(FakeAnthropic(), display_name="kept as typed")
    assert display_only.display_name == "kept as typed"
    assert display_only.name.startswith("repair-login-test-")
    assert display_only.source == "anthropic"

    offline = generate_sync(PROMPT, display_name="Kept", env={})
    assert offline.display_name == "Kept" and offline.source == "prompt"


def test_display_name_for_the_status() -> None:
    async def scenario(fake: FakeAnthropic) -> str:
        async with fake.running() as url:
            return await display_name_for(PROMPT, {"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": url})

    assert asyncio.run(scenario(FakeAnthropic())) == "Repair the flaky login test"
    assert asyncio.run(scenario(FakeAnthropic(status=500))) == display_from_prompt(PROMPT)
    assert asyncio.run(display_name_for("fix it", {})) == "Fix it"
    assert asyncio.run(display_name_for(" \n ", {})) == "Untitled task"


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t\n"])
def test_an_empty_prompt_is_refused(prompt: str) -> None:
    with pytest.raises(ValueError, match="the prompt is empty"):
        generate_sync(prompt, env={})


# --- the sanitised prompt -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "stem"),
    [
        ("Fix the flaky login test in CI please", "fix-the-flaky-login-test-in"),  # 27: cut at a word
        ("Fix the flaky login tests in CI please", "fix-the-flaky-login-tests"),
        ("Hello, World!  It's... FINE?", "hello-world-its-fine"),
        ("snake_case and CamelCase -- v1.2.3 (#42)", "snake-case-and-camelcase-v1"),
        ("2FA login broken", "login-broken"),  # leading words must start with a letter
        ("-- 404: page not found", "page-not-found"),
        ("Réparer le test de connexion 🚀", "reparer-le-test-de"),  # accents dropped, "connexion" cut
        ("ünïcödé handling", "unicode-handling"),
        ("Straße ändern", "strae-andern"),  # ß has no ASCII form: dropped
        ("修复 login 测试", "login"),
        ("first line\nsecond line", "first-line-second-line"),
        ("Supercalifragilisticexpialidociously broken", "supercalifragilisticexpiali"),  # one word: hard cut
        ("修复登录测试 🚀", None),
        ("🚀🔥✨", None),
        ("42 1337 !!!", None),
    ],
)
def test_name_stems(prompt: str, stem: str | None) -> None:
    assert name_stem(prompt) == stem
    if stem is not None:
        assert len(stem) <= STEM_MAX
        assert invalid_task_name(stem) is None


@pytest.mark.parametrize(
    ("prompt", "display"),
    [
        ("fix the login test", "Fix the login test"),
        ("  fix   the\tlogin  test  \nand then the rest", "Fix the login test"),
        ("\n\n   \nfirst real line\nsecond", "First real line"),
        ("修复登录测试 🚀", "修复登录测试 🚀"),
        ("ünïcödé everywhere", "Ünïcödé everywhere"),
        ("🚀 launch it", "🚀 Launch it"),
        ('"quoted" start', '"Quoted" start'),
        ("2fa is broken", "2fa is broken"),  # a digit first: nothing to capitalise
        ("ßtraße", "ßtraße"),  # its capital is two letters: left alone
        ("\ufeffbom\x00 and\x1b controls", "Bom and controls"),
        ("👩\u200d💻 pair on it", "👩\u200d💻 Pair on it"),  # the joiner of an emoji sequence is kept
        (" \n\t ", None),
    ],
)
def test_display_names(prompt: str, display: str | None) -> None:
    assert display_from_prompt(prompt) == display


def test_a_long_display_name_is_cut_at_a_word_with_an_ellipsis() -> None:
    prompt = "Refactor the session handling so that every request carries its own context object"
    display = display_from_prompt(prompt)
    assert display == "Refactor the session handling so that every request carries its…"
    assert len(display) <= DISPLAY_MAX
    assert prompt.startswith(display.removesuffix("…") + " ")

    exact = "Word " * 12 + "abc"  # 63 characters, then more
    assert display_from_prompt(exact + " more") == exact + "…"


def test_a_display_name_without_spaces_is_cut_hard() -> None:
    assert display_from_prompt("修" * 100) == "修" * 63 + "…"
    assert display_from_prompt("A " + "修" * 100) == "A " + "修" * 61 + "…"  # a far-back space is no boundary


def test_random_stems_are_readable_and_valid() -> None:
    stems = {random_stem() for _ in range(200)}
    assert len(stems) > 20
    for stem in stems:
        assert re.fullmatch(r"[a-z]+-[a-z]+", stem), stem
        assert len(stem) <= STEM_MAX
        assert SUFFIXED.fullmatch(with_suffix(stem))


def test_random_prompts_always_give_valid_names() -> None:
    rng = random.Random(20261128)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        " \t\n\r  ",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\u2019…",
        "éèêëàâäîïôöùûüçñßÉÀÖÜİıǆﬁ①²",
        "修复登录测试日本語한국어Привет мирمرحبا",
        "🚀🔥✨👩\u200d💻🇫🇷\ufe0f",
        "\x00\x01\x1b\x7f\u200b\ufeff\u0301\u0308\U000e0067",
    ]
    for _ in range(200):
        weights = [rng.random() for _ in pools]
        length = rng.choice([1, 3, 10, 40, 100, 1000, 5000])
        prompt = "".join(rng.choice(rng.choices(pools, weights)[0]) for _ in range(length))
        if not prompt.strip():
            continue
        names = generate_sync(prompt, env={})
        assert_valid(names)
        assert names.source in ("prompt", "random")


# --- Kubernetes name limits ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("a" * MAX_TASK_NAME, None),
        ("fix-login-test-3fa9", None),
        ("a", None),
        ("a" * (MAX_TASK_NAME + 1), "at most 52 characters"),
        ("Fix-login", "lowercase"),
        ("2fa-login", "start with a lowercase letter"),
        ("-login", "start with a lowercase letter"),
        ("login-", "end with a letter or a digit"),
        ("fix.login", "only lowercase letters, digits and hyphens"),
        ("fix_login", "only lowercase letters, digits and hyphens"),
        ("réparer", "only lowercase letters, digits and hyphens"),
        ("", "must not be empty"),
    ],
)
def test_invalid_task_names(name: str, reason: str | None) -> None:
    found = invalid_task_name(name)
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found


def children(name: str) -> dict[str, str]:
    """What the operator names after a task, and the StatefulSet's pod label with the longest hash."""
    return {
        "statefulset": name,
        "service": name,
        "pod": f"{name}-0",
        "pvc": f"workspace-{name}-0",
        "configmap": f"{name}-snapshot",
        "task-label": name,
        "revision-label": f"{name}-{'f' * 10}",
    }


def test_every_child_of_the_longest_task_name_fits_kubernetes() -> None:
    names = children("a" + "b" * (MAX_TASK_NAME - 2) + "9")
    assert invalid_task_name(names["service"]) is None
    assert len(names["service"]) <= 63 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", names["service"])
    assert len(names["pod"]) <= 63 and DNS1123_LABEL.fullmatch(names["pod"])  # also its hostname
    for kind in ("statefulset", "pvc", "configmap"):
        assert len(names[kind]) <= 253 and DNS1123_SUBDOMAIN.fullmatch(names[kind]), kind
    for kind in ("task-label", "revision-label"):
        assert len(names[kind]) <= 63 and LABEL_VALUE.fullmatch(names[kind]), kind

    # one character more, and the StatefulSet's revision label no longer fits
    assert len(children("a" * (MAX_TASK_NAME + 1))["revision-label"]) > 63
