"""State the bot's workers share through Redis (BOT_REDIS_URL, optional): the answer cache, per-user limits,
the channels' dedupe fast path and notices that the model registry changed.

Every key starts with `shopbot:<id>:`, where <id> is derived from the data directory's absolute path: the
workers of one shop share a data directory (the model registry), so they share keys, and another shop on
the same Redis has its own. Every key expires, so memory is bounded by the TTLs and by Redis's own
`maxmemory` with `maxmemory-policy allkeys-lru` (the operator's setting; the bot never changes it).

Redis failing mid-run never fails an answer: a call that fails gives its fallback (a cache miss, a
message allowed, the database deciding on a redelivery), is counted in `bot_redis_errors` and logged at
most once a minute.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from bot.config import BotSettings, ConfigError

log = logging.getLogger(__name__)
REDIS_ERRORS = Counter("bot_redis_errors", "Redis calls that failed; the bot went on without them", ["use"])
# A slow or vanished Redis costs an answer at most about this long (one retry on a fresh connection).
TIMEOUT_S = 0.5
LOG_EVERY_S = 60.0
RESUBSCRIBE_S = 2.0  # a lost registry subscription is retried this often; polling covers the gap
DEDUPE_TTL_S = 24 * 3600  # platforms redeliver within minutes or hours; the database stays the truth
REGISTRY_CHANNEL = "registry"  # the pub/sub channel of registry-change notices, under the prefix
T = TypeVar("T")


def namespace(data_dir: Path) -> str:
    """The prefix of every key of one shop's workers."""
    return "shopbot:" + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12] + ":"


def without_password(url: str) -> str:
    """The URL with no user and password, for messages."""
    parts = urlsplit(url)
    host = f"{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=host).geturl()


class SharedState:
    """One worker's Redis connection and its shop's key prefix."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._logged_at = -LOG_EVERY_S

    @classmethod
    async def connect(cls, settings: BotSettings) -> SharedState | None:
        """The shared state of BOT_REDIS_URL (None when unset); ConfigError when Redis does not answer."""
        if not settings.redis_url:
            return None
        try:
            # One retry, at once: a pooled connection may be stale after Redis restarted.
            retry = AsyncRetry(NoBackoff(), 1)
            client = aioredis.Redis.from_url(
                settings.redis_url,
                retry=retry,
                decode_responses=True,
                socket_timeout=TIMEOUT_S,
                socket_connect_timeout=TIMEOUT_S,
            )
            await client.ping()
        except (RedisError, OSError, ValueError) as exc:
            raise ConfigError(
                f"config error: BOT_REDIS_URL: no Redis answers at {without_password(settings.redis_url)} ({exc})"
            ) from None
        return cls(client, namespace(settings.data_dir))

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def attempt(self, use: str, call: Awaitable[T], fallback: T) -> T:
        """`call`'s result, or `fallback` when Redis fails (counted, and logged at most once a minute)."""
        try:
            return await call
        except (RedisError, OSError) as exc:
            self._failed(use, exc)
            return fallback

    def _failed(self, use: str, exc: Exception) -> None:
        REDIS_ERRORS.labels(use).inc()
        if time.monotonic() - self._logged_at >= LOG_EVERY_S:
            self._logged_at = time.monotonic()
            log.warning("Redis failed (%s: %s); going on without it for now", use, exc)

    async def seen(self, channel: str, event: str) -> bool:
        """Whether a worker recorded the event before (a redelivery); False when new or Redis cannot tell."""
        return bool(await self.attempt("dedupe", self.client.exists(self.key("event", channel, event)), 0))

    async def remember(self, channel: str, event: str) -> None:
        """Note an event the database has recorded, so later deliveries stop here. Noted only after the
        database has it: a worker that dies in between leaves the database to spot the redelivery."""
        await self.attempt("dedupe", self.client.set(self.key("event", channel, event), 1, ex=DEDUPE_TTL_S), None)

    async def follow_registry(self, on_change: Callable[[], None]) -> None:
        """Call `on_change` for every registry-change notice, until cancelled."""
        while True:
            try:
                async with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.key(REGISTRY_CHANNEL))
                    async for _ in pubsub.listen():
                        on_change()
            except (RedisError, OSError) as exc:
                self._failed("registry notices", exc)
            await asyncio.sleep(RESUBSCRIBE_S)

    async def close(self) -> None:
        await self.client.aclose()


def publish_registry_change(redis_url: str, data_dir: Path) -> None:
    """Tell every worker of the shop at once that the registry changed (blocking: the registry's writers
    are synchronous). A failure is only logged: the workers' polling still finds the change."""
    try:
        with redis.Redis.from_url(redis_url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S) as client:
            client.publish(namespace(data_dir) + REGISTRY_CHANNEL, "changed")
    except (RedisError, OSError, ValueError) as exc:
        log.warning("could not tell the workers through Redis that the registry changed (%s); they poll for it", exc)
