"""State shared by several workers through a real Redis (BOT_REDIS_URL): the answer cache, per-user limits,
the channels' dedupe fast path and registry-change notices, and a Redis that goes away mid-run.

Redis is BOT_TEST_REDIS_URL (default redis://127.0.0.1:6379/0); without one answering there, these tests
skip. Each test has its own data directory, so its own key prefix, and deletes its keys afterwards."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from bot.__main__ import start
from bot.app import build_bot
from bot.cache import AnswerCache
from bot.config import BotSettings, ConfigError
from bot.limits import UserLimits
from bot.models.registry import MANIFEST, Registry
from bot.service import ChannelService
from bot.shared import REGISTRY_CHANNEL, SharedState, namespace
from bot.store import Store, database_path
from tests.support import ORDER_Q, TcpRelay, free_port, make_settings, post, redis_answers
from tests.support import REDIS_URL as URL

pytestmark = pytest.mark.skipif(not redis_answers(), reason=f"no Redis answers at {URL} (set BOT_TEST_REDIS_URL)")
Connect = Callable[..., Awaitable[SharedState]]
USES = ("cache", "limits", "dedupe")  # bot_redis_errors' labels for what a customer's message does


@pytest.fixture
async def connect(tmp_path: Path) -> AsyncIterator[Connect]:
    """Connects one "worker" per call to Redis at `url` (default: the test Redis), all with this test's
    prefix; afterwards they are closed and the test's keys deleted."""
    opened: list[SharedState] = []

    async def connect(url: str = URL) -> SharedState:
        shared = await SharedState.connect(make_settings(tmp_path, redis_url=url))
        assert shared is not None
        opened.append(shared)
        return shared

    yield connect
    for shared in opened:
        await shared.close()
    with redis.Redis.from_url(URL) as client:
        for key in client.scan_iter(namespace(tmp_path) + "*"):
            client.delete(key)


async def test_two_workers_share_the_answer_cache_until_the_ttl(connect: Connect) -> None:
    one, two = AnswerCache(10, 0.5, await connect()), AnswerCache(10, 0.5, await connect())
    await one.put("如何退换货？", "v0001", "7 天内无理由退换")
    assert await two.get("如何退换货?", "v0001") == "7 天内无理由退换"  # normalised the same way
    assert await two.get("如何退换货?", "v0002") is None  # another model version's answer is not this one's
    assert (two.hits, two.misses) == (1, 1)
    await two.clear()  # a model change: the version in the key already keeps answers apart
    assert await one.get("如何退换货", "v0001") == "7 天内无理由退换"
    await asyncio.sleep(0.6)
    assert await one.get("如何退换货", "v0001") is None


async def test_two_workers_share_one_users_message_budget(connect: Connect) -> None:
    one, two = await connect(), await connect()
    limits = [UserLimits(3, 0.5, 2, 60, shared) for shared in (one, two)]
    # Ten messages at once, half to each worker: exactly the budget gets through.
    allowed = await asyncio.gather(*(limits[i % 2].allow("http:u1") for i in range(10)))
    assert sum(allowed) == 3
    assert await limits[1].allow("http:u2")  # another user has a budget of their own
    await asyncio.sleep(0.6)  # a new window
    assert await limits[0].allow("http:u1")


async def test_blocked_words_cool_a_user_down_on_every_worker(connect: Connect) -> None:
    one, two = UserLimits(0, 60, 2, 0.5, await connect()), UserLimits(0, 60, 2, 0.5, await connect())
    await one.note_blocked("http:u1")
    assert not await two.cooling_down("http:u1")
    await two.note_blocked("http:u1")
    assert await one.cooling_down("http:u1") and await two.cooling_down("http:u1")
    assert not await one.cooling_down("http:u2")
    await asyncio.sleep(0.6)
    assert not await two.cooling_down("http:u1")


class CountingStore:
    """The real store, counting the inbox inserts that reach it (and failing the next one if told)."""

    def __init__(self, store: Store) -> None:
        self.store, self.inserts, self.fail_next = store, 0, False

    async def inbox_add(self, channel: str, key: str, payload: dict[str, Any]) -> bool:
        self.inserts += 1
        if self.fail_next:
            self.fail_next = False
            raise OSError("disk full")
        return await self.store.inbox_add(channel, key, payload)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    store = await Store.open(database_path(tmp_path))
    yield CountingStore(store)
    await store.close()


def service(store: CountingStore, shared: SharedState, tmp_path: Path) -> ChannelService:
    """A channel's service on one worker: only what `record` uses of the bot."""
    return ChannelService(SimpleNamespace(store=store, shared=shared, settings=make_settings(tmp_path)), "slack")  # type: ignore[arg-type]


async def test_a_redelivery_is_spotted_in_redis_without_asking_the_database(
    connect: Connect, store: CountingStore, tmp_path: Path
) -> None:
    one, two = service(store, await connect(), tmp_path), service(store, await connect(), tmp_path)
    assert await one.record("Ev1", {"text": "hi"})
    assert not await two.record("Ev1", {"text": "hi"})  # delivered again, to another worker
    assert store.inserts == 1
    # An insert that fails leaves no mark in Redis: the platform's redelivery is recorded.
    store.fail_next = True
    with pytest.raises(OSError):
        await one.record("Ev2", {"text": "hello"})
    assert await two.record("Ev2", {"text": "hello"})
    assert store.inserts == 3


async def wait_until_subscribed(shared: SharedState) -> None:
    channel = shared.key(REGISTRY_CHANNEL)
    while dict(await shared.client.pubsub_numsub(channel)).get(channel, 0) < 1:
        await asyncio.sleep(0.01)


def register_fake_versions(data_dir: Path, *versions: str) -> None:
    for version in versions:
        (data_dir / "models" / version).mkdir(parents=True)
        (data_dir / "models" / version / MANIFEST).write_text(json.dumps({"version": version}))


async def test_a_promotion_reaches_every_worker_within_a_second(connect: Connect, tmp_path: Path) -> None:
    register_fake_versions(tmp_path, "v0001", "v0002")
    workers = [await connect(), await connect()]
    noticed = [asyncio.Event(), asyncio.Event()]
    following = [asyncio.create_task(w.follow_registry(seen.set)) for w, seen in zip(workers, noticed, strict=True)]
    try:
        await asyncio.wait_for(wait_until_subscribed(workers[0]), 5)
        Registry(tmp_path, URL).promote("v0002")  # as the tuning CLI or the admin API does
        await asyncio.wait_for(asyncio.gather(*(seen.wait() for seen in noticed)), 1.0)
    finally:
        for task in following:
            task.cancel()


def test_a_promotion_stands_when_redis_is_unreachable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    register_fake_versions(tmp_path, "v0001")
    assert Registry(tmp_path, f"redis://127.0.0.1:{free_port()}/0").promote("v0001").current == "v0001"
    assert Registry(tmp_path).state().current == "v0001"
    assert "they poll for it" in caplog.text


def errors_counted() -> float:
    return sum(REGISTRY.get_sample_value("bot_redis_errors_total", {"use": use}) or 0 for use in USES)


async def test_redis_going_away_never_fails_a_customer(
    connect: Connect, store: CountingStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = TcpRelay(URL)
    shared = await connect(await proxy.start())
    cache, limits = AnswerCache(10, 60, shared), UserLimits(1, 60, 1, 60, shared)
    channel = service(store, shared, tmp_path)
    await cache.put("q", "v1", "a")
    assert await cache.get("q", "v1") == "a"
    assert await limits.allow("http:u1") and not await limits.allow("http:u1")
    assert await channel.record("Ev1", {})
    proxy.cut()
    before = errors_counted()
    with caplog.at_level(logging.WARNING, logger="bot.shared"):
        assert await cache.get("q", "v1") is None  # a miss: the model answers
        await cache.put("q", "v1", "a")
        assert await limits.allow("http:u1")  # allowed
        await limits.note_blocked("http:u1")
        assert not await limits.cooling_down("http:u1")
        assert await channel.record("Ev2", {})  # the database decides
        assert not await channel.record("Ev1", {})
    assert errors_counted() - before == 9  # a record asks Redis twice: seen before? and remember it
    assert len([r for r in caplog.records if r.name == "bot.shared"]) == 1  # logged once, not per call


async def test_an_unreachable_redis_at_start_is_one_config_line(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, redis_url=f"redis://:s3cret@127.0.0.1:{free_port()}/0")
    with pytest.raises(ConfigError) as stopped:
        await build_bot(settings)
    message = str(stopped.value)
    assert message.startswith("config error: BOT_REDIS_URL:") and "\n" not in message
    assert "s3cret" not in message


@pytest.fixture
def redis_settings(data_dir: Path) -> Iterator[BotSettings]:
    """Two workers' settings: one data directory (so one prefix), polling too slow to matter."""
    yield make_settings(data_dir, redis_url=URL, registry_poll_s=60)
    with redis.Redis.from_url(URL) as client:
        for key in client.scan_iter(namespace(data_dir) + "*"):
            client.delete(key)


async def test_two_bots_share_answers_and_swap_models_together(redis_settings: BotSettings, data_dir: Path) -> None:
    one = await start(redis_settings, {})
    two = await start(redis_settings, {})
    try:
        status, first = await post(one, "/chat", {"conversation_id": "c1", "user_id": "u1", "text": ORDER_Q})
        assert status == 200 and not first["cached"]
        status, second = await post(two, "/chat", {"conversation_id": "c2", "user_id": "u2", "text": ORDER_Q})
        assert status == 200 and second["cached"] and second["answer"] == first["answer"]
        assert two.bot.cache.hits == 1
        # A promotion reaches both workers long before their next poll.
        shutil.copytree(data_dir / "models" / "v0001", data_dir / "models" / "v0002")
        Registry(data_dir, URL).promote("v0002")
        for _ in range(100):
            if {one.bot.models.version_of("current"), two.bot.models.version_of("current")} == {"v0002"}:
                break
            await asyncio.sleep(0.1)
        assert {one.bot.models.version_of("current"), two.bot.models.version_of("current")} == {"v0002"}
    finally:
        await one.stop()
        await two.stop()
