"""Per-user abuse limits: a cap on inbound messages and a cool-down for a user who keeps sending blocked
words. In this process a token bucket (aiolimiter); with Redis (BOT_REDIS_URL) one fixed-window counter per
user that all workers share. A Redis failure lets the message through (bot/shared.py)."""

from __future__ import annotations

from aiolimiter import AsyncLimiter
from cachetools import LRUCache, TTLCache

from bot.shared import SharedState

USERS_TRACKED = 100_000  # the least recently seen users' buckets are forgotten past this


class UserLimits:
    def __init__(
        self, messages: int, period_s: float, blocked_max: int, cooldown_s: float, shared: SharedState | None = None
    ) -> None:
        self.messages, self.period_s, self.blocked_max, self.cooldown_s = messages, period_s, blocked_max, cooldown_s
        self._shared = shared
        self._buckets: LRUCache[str, AsyncLimiter] = LRUCache(maxsize=USERS_TRACKED)
        # Blocked messages per user; an entry expires `cooldown_s` after the user's latest blocked message.
        self._blocked: TTLCache[str, int] = TTLCache(maxsize=USERS_TRACKED, ttl=cooldown_s)

    async def allow(self, sender: str) -> bool:
        """Whether `sender` may send a message now (`messages` per `period_s`, as a burst at most); 0 is off."""
        if self.messages <= 0:
            return True
        if self._shared:
            return await self._shared.attempt("limits", self._count_message(self._shared, sender), 0) <= self.messages
        bucket = self._buckets.get(sender)
        if bucket is None:
            bucket = self._buckets[sender] = AsyncLimiter(self.messages, self.period_s)
        if not bucket.has_capacity():
            return False
        await bucket.acquire()  # there is capacity: this does not wait
        return True

    async def _count_message(self, shared: SharedState, sender: str) -> int:
        """The user's messages in the current window, this one included. The window starts with the first
        message in it; SET NX and INCR run as one transaction, so workers racing count every message once
        and the counter always expires."""
        key = shared.key("rate", sender)
        async with shared.client.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, px=int(self.period_s * 1000), nx=True)
            pipe.incr(key)
            _, count = await pipe.execute()
        return int(count)

    async def note_blocked(self, sender: str) -> None:
        if self._shared:
            await self._shared.attempt("limits", self._count_blocked(self._shared, sender), None)
        else:
            self._blocked[sender] = self._blocked.get(sender, 0) + 1

    async def _count_blocked(self, shared: SharedState, sender: str) -> None:
        key = shared.key("blocked", sender)
        async with shared.client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.pexpire(key, int(self.cooldown_s * 1000))  # from the latest blocked message
            await pipe.execute()

    async def cooling_down(self, sender: str) -> bool:
        """After `blocked_max` blocked messages, until `cooldown_s` have passed since the latest; 0 is off."""
        if self.blocked_max <= 0:
            return False
        if self._shared:
            noted = await self._shared.attempt(
                "limits", self._shared.client.get(self._shared.key("blocked", sender)), None
            )
            return self.blocked_max <= int(noted or 0)
        return self.blocked_max <= self._blocked.get(sender, 0)
