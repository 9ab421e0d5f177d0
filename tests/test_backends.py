"""Model servers behind the balancer: real HTTP to fake OpenAI-compatible servers on 127.0.0.1, first
the balancer on its own (fast, no model), then the whole bot with its in-process model as the fallback."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from bot.__main__ import start
from bot.config import BackendSpec, BotSettings, ConfigError, load, parse_model_backends
from bot.models import backends
from bot.models.backends import FAILURES_TO_OPEN, BackendFailed, Balancer, RemoteBackend
from bot.models.registry import MANIFEST, Registry
from bot.models.runtime import GenerationSettings
from bot.server import RunningServer
from tests.fakes.openai_server import FakeModelServer
from tests.support import ORDER_A, ORDER_Q, make_settings, post
from tests.test_streaming import sse_chat

VERSION = "v0001"  # the starter model's version: what the A/B pick wants
PROMPT = [{"role": "user", "content": ORDER_Q}]
MakeServer = Callable[..., Awaitable[FakeModelServer]]


def answer_of(name: str) -> str:
    return f"Hello from {name}, your order ships today. Thank you."


@pytest.fixture
async def fake() -> AsyncIterator[MakeServer]:
    """Starts fake model servers (`fake(name, **options)`), all stopped after the test."""
    servers: list[FakeModelServer] = []

    async def make(name: str, model: str = VERSION, **options: float) -> FakeModelServer:
        server = FakeModelServer(model, answer_of(name), **options)
        servers.append(server)
        await server.start()
        return server

    yield make
    for server in servers:
        await server.stop()


def remote(name: str, server: FakeModelServer, weight: float = 1.0, probe_s: float = 60.0) -> RemoteBackend:
    return RemoteBackend(name, server.url, weight, GenerationSettings(), probe_s)


async def balancer(backends: list[RemoteBackend], fallback: RemoteBackend, timeout_s: float = 5.0) -> Balancer:
    started = Balancer(backends, fallback, timeout_s)
    await started.start()
    return started


def counted(backend: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("bot_backend_requests_total", {"backend": backend, "outcome": outcome}) or 0.0


# --- configuration ----------------------------------------------------------------------------------


def test_backends_are_parsed_in_one_place() -> None:
    assert parse_model_backends("gpu=http://gpu-1:8000/v1*4, local ,http://cpu-2:8080/v1/*0.5") == [
        BackendSpec("gpu", "http://gpu-1:8000/v1", 4.0),
        BackendSpec("local", "", 1.0),
        BackendSpec("cpu-2:8080", "http://cpu-2:8080/v1", 0.5),
    ]
    assert parse_model_backends("") == []


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("gpu=ftp://gpu-1/v1", "'gpu=ftp://gpu-1/v1': expected [name=]http(s)://host:port/v1[*weight]"),
        ("gpu=http://gpu-1/v1*0", "the weight after * must be a number above 0"),
        ("gpu=http://gpu-1/v1*four", "the weight after * must be a number above 0"),
        ("a=http://gpu-1/v1,a=http://gpu-2/v1", "a: listed twice"),
        ("local,local*2", "local: listed twice"),
        ("local=http://gpu-1/v1", "the name 'local' is the in-process model's"),
    ],
)
def test_a_bad_backend_entry_stops_start_up_with_one_line(
    value: str, says: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("BOT_MODEL_BACKENDS", value)
    with pytest.raises(ConfigError) as stopped:
        load(BotSettings)
    message = str(stopped.value)
    assert message.startswith("config error: BOT_MODEL_BACKENDS: ") and says in message and "\n" not in message


# --- the balancer on its own -------------------------------------------------------------------------


async def test_one_answer_at_a_time_follows_the_weights_exactly(fake: MakeServer) -> None:
    heavy, light, spare = await fake("heavy"), await fake("light"), await fake("spare")
    chooser = await balancer([remote("w-heavy", heavy, 3), remote("w-light", light, 1)], remote("w-spare", spare))
    try:
        answers = [await chooser.generate(PROMPT, VERSION) for _ in range(40)]
    finally:
        await chooser.close()
    assert Counter(a.backend for a in answers) == {"w-heavy": 30, "w-light": 10}
    assert {a.text for a in answers} == {answer_of("heavy"), answer_of("light")}
    assert (len(heavy.requests), len(light.requests), len(spare.requests)) == (30, 10, 0)
    assert heavy.requests[0]["model"] == VERSION and heavy.requests[0]["stream"] is True


async def test_answers_in_flight_spread_by_weight(fake: MakeServer) -> None:
    """40 answers at once from servers of equal speed: the fewest in flight per weight wins each pick."""
    heavy, light = await fake("heavy", chunk_delay=0.02), await fake("light", chunk_delay=0.02)
    spare = await fake("spare")
    chooser = await balancer([remote("c-heavy", heavy, 3), remote("c-light", light, 1)], remote("c-spare", spare))
    try:
        answers = await asyncio.gather(*(chooser.generate(PROMPT, VERSION) for _ in range(40)))
    finally:
        await chooser.close()
    shares = Counter(a.backend for a in answers)
    assert abs(shares["c-heavy"] - 30) <= 2 and abs(shares["c-light"] - 10) <= 2 and not spare.requests


async def test_a_failing_server_opens_its_circuit_and_a_probe_closes_it(fake: MakeServer) -> None:
    flaky, steady, spare = await fake("flaky"), await fake("steady"), await fake("spare")
    flaky_backend = remote("flaky", flaky, weight=10, probe_s=0.3)  # first choice whenever it is up
    chooser = await balancer([flaky_backend, remote("steady", steady)], remote("spare-1", spare))

    async def probed_back() -> None:
        await asyncio.sleep(0.35)
        await chooser.generate(PROMPT, VERSION)  # the probe is due: this starts it in the background
        for _ in range(50):
            if not flaky_backend.open:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the probe did not close the circuit")

    try:
        flaky.mode = "fail"
        answers = [await chooser.generate(PROMPT, VERSION) for _ in range(8)]
        # Every answer came (from the steady one); the flaky one was asked until its circuit opened.
        assert {a.text for a in answers} == {answer_of("steady")}
        assert len(flaky.requests) == FAILURES_TO_OPEN and flaky_backend.open
        assert counted("flaky", "server_error") == FAILURES_TO_OPEN and counted("steady", "ok") == 8
        await asyncio.sleep(0.35)
        await chooser.generate(PROMPT, VERSION)
        await asyncio.sleep(0.1)
        assert flaky_backend.open  # still failing: its probe failed too
        flaky.mode = "ok"
        await probed_back()
        # Half-open: the first answer after a probe decides; a failure opens the circuit again at once.
        flaky.mode = "fail"
        assert (await chooser.generate(PROMPT, VERSION)).text == answer_of("steady") and flaky_backend.open
        flaky.mode = "ok"
        await probed_back()
        assert (await chooser.generate(PROMPT, VERSION)).text == answer_of("flaky")
    finally:
        await chooser.close()


@pytest.mark.parametrize(
    ("mode", "outcome"),
    [
        ("fail", "server_error"),
        ("rate_limit", "rate_limited"),
        ("malformed", "malformed"),
        ("truncated", "truncated"),
        ("interrupted", "truncated"),
        ("hang", "timeout"),
        ("wrong_model", "unknown_model"),
        ("stopped", "refused"),
    ],
)
async def test_a_misbehaving_server_is_counted_and_another_answers_in_time(
    fake: MakeServer, mode: str, outcome: str
) -> None:
    bad, good, spare = await fake("bad"), await fake("good"), await fake("spare")
    name = f"bad-{mode}"
    chooser = await balancer(
        [remote(name, bad, weight=10), remote(f"good-{mode}", good)], remote("spare-2", spare), 2.0
    )
    try:
        if mode == "stopped":
            await bad.stop()
        else:
            bad.mode = mode
        began = time.monotonic()
        answer = await chooser.generate(PROMPT, VERSION)
        seconds = time.monotonic() - began
        assert answer.text == answer_of("good") and answer.backend == f"good-{mode}"
        assert counted(name, outcome) == 1
        # A hang costs half the time left (another server still has the rest); the others cost nothing.
        assert (0.9 < seconds < 1.5) if mode == "hang" else seconds < 0.5
        asked = len(bad.requests)
        await chooser.generate(PROMPT, VERSION)
        if mode == "rate_limit":  # Retry-After: 1 s, so the next one goes elsewhere
            assert len(bad.requests) == asked
        if mode == "wrong_model":  # no longer taken for serving that version, until a probe lists it
            assert len(bad.requests) == asked and VERSION not in chooser.backends[0].versions  # type: ignore[attr-defined]
    finally:
        await chooser.close()


async def test_when_every_server_hangs_the_error_comes_by_the_deadline(fake: MakeServer) -> None:
    one, two = await fake("one"), await fake("two")
    chooser = await balancer([remote("hang-1", one)], remote("hang-2", two), timeout_s=1.0)
    one.mode = two.mode = "hang"
    began = time.monotonic()
    try:
        with pytest.raises((BackendFailed, asyncio.TimeoutError)):
            await chooser.generate(PROMPT, VERSION)
    finally:
        await chooser.close()
    assert time.monotonic() - began < 1.1


async def test_a_stream_is_shown_as_it_arrives_and_can_be_stopped(fake: MakeServer) -> None:
    server, spare = await fake("streamer", chunk_delay=0.01), await fake("spare")
    chooser = await balancer([remote("streamer", server)], remote("spare-3", spare))
    seen: list[str] = []

    def on_text(text: str) -> bool:
        seen.append(text)
        return len(seen) < 3  # the customer left after three pieces

    try:
        answer = await chooser.generate(PROMPT, VERSION, on_text)
    finally:
        await chooser.close()
    assert seen == ["Hello", "Hello from", "Hello from streamer,"] and answer.text == "Hello from streamer,"


async def test_the_server_serving_the_wanted_version_answers(fake: MakeServer) -> None:
    old, new, spare = await fake("old", model="v0001"), await fake("new", model="v0002"), await fake("spare")
    chooser = await balancer([remote("old", old), remote("new", new)], remote("spare-4", spare))
    try:
        assert {(await chooser.generate(PROMPT, "v0002")).backend for _ in range(4)} == {"new"}
        assert {(await chooser.generate(PROMPT, "v0001")).backend for _ in range(4)} == {"old"}
    finally:
        await chooser.close()


# --- the whole bot -------------------------------------------------------------------------------------


def bot_settings(data_dir: Path, backends: str) -> BotSettings:
    # No answer cache and no rate limit: every question reaches a backend.
    return make_settings(data_dir, model_backends=backends, model_timeout_s=4.0, cache_size=0, user_rate_limit=0)


async def ask(server: RunningServer, conversation: str, user: str = "u1", text: str = ORDER_Q) -> dict[str, Any]:
    status, reply = await post(server, "/chat", {"conversation_id": conversation, "user_id": user, "text": text})
    assert status == 200, reply
    return reply


async def test_the_bot_answers_while_one_server_is_slow_one_failing_one_healthy(
    fake: MakeServer, data_dir: Path
) -> None:
    slow, failing, healthy = await fake("slow", chunk_delay=0.03), await fake("failing"), await fake("healthy")
    urls = f"slow={slow.url},failing={failing.url},healthy={healthy.url}"
    server = await start(bot_settings(data_dir, urls), {})
    try:
        failing.mode = "fail"
        replies = [await ask(server, f"c{i}") for i in range(12)]
        stream = await sse_answer(server)
        turns = await server.bot.store.turns()
    finally:
        await server.stop()
    # No customer saw a failure: every answer is a server's, stored with the version that made it.
    assert {r["outcome"] for r in replies} == {"answered"}
    assert {r["answer"] for r in replies} == {answer_of("slow"), answer_of("healthy")}
    assert len(failing.requests) == FAILURES_TO_OPEN and len(slow.requests) + len(healthy.requests) == 13
    assert {(t.model_version, t.variant) for t in turns} == {(VERSION, "current")}
    assert stream["answer"] in (answer_of("slow"), answer_of("healthy"))


async def sse_answer(server: RunningServer) -> dict[str, Any]:
    """One answer over POST /chat with stream=true: its partials grow and end in the final answer."""
    events = await sse_chat(server, ORDER_Q, conversation="streamed")
    partials = [data["text"] for name, data in events if name == "partial"]
    [final] = [data for name, data in events if name == "answer"]
    assert partials and all(final["answer"].startswith(p) for p in partials)
    return final


async def test_with_every_server_down_the_local_model_answers(fake: MakeServer, data_dir: Path) -> None:
    failing, gone = await fake("failing"), await fake("gone")
    server = await start(bot_settings(data_dir, f"failing={failing.url},gone={gone.url}"), {})
    try:
        failing.mode = "fail"
        await gone.stop()
        reply = await ask(server, "c1")
        stored = await server.bot.store.turn(reply["turn_id"])
    finally:
        await server.stop()
    assert reply["answer"] == ORDER_A and reply["outcome"] == "answered" and reply["model_version"] == VERSION
    assert stored is not None and stored.model_version == VERSION
    assert counted("failing", "server_error") >= 1 and counted("gone", "refused") >= 1


async def test_a_version_no_backend_serves_is_answered_locally_with_its_own(fake: MakeServer, data_dir: Path) -> None:
    """E.g. the registry swapped models between the A/B pick and the answer: what answers is stored."""
    server = await start(bot_settings(data_dir, f"gpu={(await fake('gpu')).url}"), {})
    try:
        answer = await server.bot.backends.generate(PROMPT, "v0009")
    finally:
        await server.stop()
    assert (answer.text, answer.version, answer.backend) == (ORDER_A, VERSION, "local")


def candidate_copy(data_dir: Path, share: float) -> None:
    """v0002, a copy of the starter, on trial for `share` of the users."""
    shutil.copytree(data_dir / "models" / VERSION, data_dir / "models" / "v0002")
    manifest = data_dir / "models" / "v0002" / MANIFEST
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"version": "v0002"}))
    Registry(data_dir).set_candidate("v0002", share)


async def test_ab_variants_go_to_the_servers_of_their_versions(fake: MakeServer, data_dir: Path) -> None:
    candidate_copy(data_dir, 0.5)
    old, new = await fake("old", model=VERSION), await fake("new", model="v0002")
    server = await start(bot_settings(data_dir, f"old={old.url},new={new.url}"), {})
    try:
        replies = [await ask(server, f"c{i}", user=f"user-{i}") for i in range(16)]
        turns = await server.bot.store.turns()
    finally:
        await server.stop()
    by_version = {VERSION: answer_of("old"), "v0002": answer_of("new")}
    assert all(r["answer"] == by_version[r["model_version"]] for r in replies)
    assert {t.variant for t in turns if t.model_version == "v0002"} == {"candidate"}
    assert {t.variant for t in turns if t.model_version == VERSION} == {"current"}
    assert old.requests and new.requests  # both variants were drawn


async def test_an_answer_is_stored_with_the_version_that_made_it(fake: MakeServer, data_dir: Path) -> None:
    """The pick wants the candidate, but the trial ends before the answer (as a hot swap would end it) and no
    server serves v0002: the in-process model answers with its current version, and that is what is stored."""
    candidate_copy(data_dir, 1.0)
    settings = bot_settings(data_dir, f"gpu={(await fake('gpu')).url}").model_copy(update={"cache_size": 16})
    server = await start(settings, {})
    models = server.bot.models
    picked: list[str] = []

    def end_trial(step: str, seconds: float, turn: object) -> None:
        if step == "build_context":
            picked.append(models.version_of("candidate"))
            models.candidate = None

    server.bot.dialogue.observers.append(end_trial)
    try:
        reply = await ask(server, "c1")
        stored = await server.bot.store.turn(reply["turn_id"])
        # Cached as the version that made it, so the next asker served by that version gets it.
        cached = [await server.bot.cache.get(ORDER_Q, version) for version in (VERSION, "v0002")]
    finally:
        await server.stop()
    assert picked == ["v0002"] and reply["answer"] == ORDER_A and reply["model_version"] == VERSION
    assert cached == [ORDER_A, None]
    assert stored is not None and (stored.model_version, stored.variant) == (VERSION, "current")


async def test_a_probe_that_waits_behind_answers_leaves_the_circuit_closed(
    fake: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some servers (llama.cpp's) list their models only between answers: a probe timing out while the
    server answers says nothing about its health; with nothing in flight, it does."""
    monkeypatch.setattr(backends, "PROBE_TIMEOUT_S", 0.2)
    server = await fake("busy")
    backend = remote("busy", server)
    try:
        await backend.probe()
        assert not backend.open
        server.mode = "hang"
        backend.in_flight = 1
        await backend.probe()
        assert not backend.open
        backend.in_flight = 0
        await backend.probe()
        assert backend.open
    finally:
        await backend.close()
