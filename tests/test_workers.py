"""Two bot workers (`python -m bot run`, two ports) sharing PostgreSQL, Redis and the model registry,
with Slack events over real HTTP and a fake Slack Web API for each worker."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from adapters import telegram
from bot.__main__ import start
from bot.config import TelegramSettings
from bot.models.registry import Registry
from bot.shared import namespace
from tests.fakes.slack_api import FakeSlackApi
from tests.fakes.telegram_api import TOKEN as TELEGRAM_TOKEN
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.telegram_api import message as telegram_message
from tests.support import ORDER_A, ORDER_Q, free_port, make_settings
from tests.test_cli import env_for
from tests.test_slack import CUSTOMER, DM, SECRET, TOKEN, envelope, signed

CUSTOMER_ID = 1001
LEASE_S = 3.0  # short, so a killed worker's event moves on quickly; longer than the model deadline below


class Worker:
    """One `python -m bot run` process, its port and its own fake Slack."""

    def __init__(self, env: dict[str, str], slack: FakeSlackApi, log: Path) -> None:
        self.port = free_port()
        self.slack = slack
        self.env = env | {"BOT_HTTP_PORT": str(self.port), "SLACK_API_BASE": slack.url}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "bot", "run"], env=self.env, stdout=out, stderr=out)

    async def get(self, http: aiohttp.ClientSession, path: str) -> dict[str, Any]:
        async with http.get(f"http://127.0.0.1:{self.port}{path}") as response:
            return await response.json()

    async def chat(self, http: aiohttp.ClientSession, user: str, text: str) -> dict[str, Any]:
        body = {"conversation_id": user, "user_id": user, "text": text}
        async with http.post(f"http://127.0.0.1:{self.port}/chat", json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def slack_event(self, http: aiohttp.ClientSession, body: str) -> None:
        url = f"http://127.0.0.1:{self.port}/slack/events"
        async with http.post(url, data=body.encode(), headers=signed(body)) as response:
            assert response.status == 200, await response.text()

    async def healthy(self, http: aiohttp.ClientSession, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.proc and self.proc.poll() is None, self.log.read_text()
            try:
                await self.get(http, "/healthz")
                return
            except aiohttp.ClientError:
                await asyncio.sleep(0.3)
        raise AssertionError(f"worker on {self.port} did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.fixture
async def workers(data_dir: Path, tmp_path: Path, pg_url: str, redis_url: str) -> AsyncIterator[list[Worker]]:
    fakes = [FakeSlackApi(TOKEN), FakeSlackApi(TOKEN)]
    for fake in fakes:
        await fake.start()
    env = env_for(
        data_dir,
        BOT_DATABASE_URL=pg_url,
        BOT_REDIS_URL=redis_url,
        BOT_INBOX_LEASE_S=str(LEASE_S),
        BOT_MODEL_TIMEOUT_S="2",
        BOT_REGISTRY_POLL_S="600",  # a promotion reaches the workers by Redis's notice, not by their polling
        SLACK_BOT_TOKEN=TOKEN,
        SLACK_SIGNING_SECRET=SECRET,
    )
    started = [Worker(env, fake, tmp_path / f"worker{i}.log") for i, fake in enumerate(fakes)]
    for worker in started:
        worker.start()
    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(worker.healthy(http) for worker in started))
        yield started
    finally:
        for worker in started:
            worker.stop()
        for fake in fakes:
            await fake.stop()
        with redis.Redis.from_url(redis_url) as client:
            for key in client.scan_iter(namespace(data_dir) + "*"):
                client.delete(key)


def dm(text: str, ts: str, event_id: str) -> str:
    event = {"type": "message", "channel": DM, "channel_type": "im", "user": CUSTOMER, "text": text, "ts": ts}
    return json.dumps(envelope(event | {"event_ts": ts}, event_id), ensure_ascii=False)


async def test_two_workers_share_events_cache_and_promotions(workers: list[Worker], data_dir: Path) -> None:
    a, b = workers
    async with aiohttp.ClientSession() as http:
        # Slack delivers one event to both workers (a retry reaching the other one): one answer.
        body = dm(ORDER_Q, "1700000000.000001", "EvTwice")
        await asyncio.gather(a.slack_event(http, body), b.slack_event(http, body))
        await asyncio.sleep(LEASE_S)  # long enough for a second answer to show, if there were one
        posts = a.slack.posts + b.slack.posts
        assert [p.text for p in posts] == [ORDER_A]

        # An answer one worker generated is a cache hit in the other.
        first = await a.chat(http, "cache-1", "退货要多久?")
        again = await b.chat(http, "cache-2", "退货要多久?")
        assert (first["cached"], again["cached"], again["answer"]) == (False, True, first["answer"])

        # A promotion reaches both workers at once (their own polling is 10 minutes apart).
        registry = Registry(data_dir)
        version, scratch = registry.start_version()
        shutil.copytree(registry.path("v0001") / "onnx", scratch / "onnx")
        registry.register(version, scratch, {"parent": "v0001", "base_model": "copy of v0001"})
        promote = [sys.executable, "-m", "tuning", "promote", version]
        result = subprocess.run(promote, env=a.env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + 30
        while {(await w.get(http, "/healthz"))["model_version"] for w in workers} != {version}:
            assert time.monotonic() < deadline, "a worker still serves the old version"
            await asyncio.sleep(0.2)
        assert {(await w.chat(http, "after", ORDER_Q))["model_version"] for w in workers} == {version}


async def test_an_event_of_a_killed_worker_is_answered_once_by_the_other(workers: list[Worker]) -> None:
    a, b = workers
    a.slack.hang_posts = True  # worker a gets stuck sending its answer, holding the event
    async with aiohttp.ClientSession() as http:
        await a.slack_event(http, dm(ORDER_Q, "1700000000.000002", "EvKilled"))
        deadline = time.monotonic() + 30
        while not a.slack.hung:
            assert time.monotonic() < deadline, "worker a never tried to answer"
            await asyncio.sleep(0.05)
        assert a.proc is not None
        os.kill(a.proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        await b.slack.wait_for_posts(1, timeout=LEASE_S * 5)
        waited = time.monotonic() - killed_at
        await asyncio.sleep(LEASE_S * 1.5)  # further sweeps must not answer it again
    assert [p.text for p in b.slack.posts] == [ORDER_A] and a.slack.posts == []
    assert waited < LEASE_S * 3  # taken over once the lease ran out, not much later


async def test_one_worker_at_a_time_polls_telegram_and_another_takes_over_when_it_stops(
    data_dir: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telegram, "POLL_LEASE_S", 3.0)  # the fake's long polls last 1 s at most
    fake = FakeTelegram()
    await fake.start()
    tg = TelegramSettings(_env_file=None, bot_token=TELEGRAM_TOKEN, api_base=fake.url)
    first, second = [
        await start(make_settings(data_dir, database_url=pg_url, worker_id=name), {"telegram": tg})
        for name in ("w1", "w2")
    ]
    try:
        await fake.push(telegram_message(CUSTOMER_ID, ORDER_Q))
        await fake.wait_sent(1)
        await first.stop()  # lets go of the polling lease: the other worker polls next
        await fake.push(telegram_message(CUSTOMER_ID, "退货要多久?"))
        await fake.wait_sent(2, timeout=10)
    finally:
        await second.stop()
        await fake.stop()
    assert fake.conflicts == 0  # never two getUpdates at once
    assert [s.text for s in fake.sent][0] == ORDER_A and len(fake.sent) == 2
