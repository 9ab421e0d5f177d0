"""Per-user abuse limits, kept in this process: a token bucket on inbound messages (aiolimiter), and a
cool-down for a user who keeps sending blocked words."""

from __future__ import annotations

from aiolimiter import AsyncLimiter
from cachetools import LRUCache, TTLCache

USERS_TRACKED = 100_000  # the least recently seen users' buckets are forgotten past this


class UserLimits:
    def __init__(self, messages: int, period_s: float, blocked_max: int, cooldown_s: float) -> None:
        self.messages, self.period_s, self.blocked_max = messages, period_s, blocked_max
        self._buckets: LRUCache[str, AsyncLimiter] = LRUCache(maxsize=USERS_TRACKED)
        # Blocked messages per user; an entry expires `cooldown_s` after the user's latest blocked message.
        self._blocked: TTLCache[str, int] = TTLCache(maxsize=USERS_TRACKED, ttl=cooldown_s)

    async def allow(self, sender: str) -> bool:
        """Whether `sender` may send a message now (`messages` per `period_s`, as a burst at most); 0 is off."""
        if self.messages <= 0:
            return True
        bucket = self._buckets.get(sender)
        if bucket is None:
            bucket = self._buckets[sender] = AsyncLimiter(self.messages, self.period_s)
        if not bucket.has_capacity():
            return False
        await bucket.acquire()  # there is capacity: this does not wait
        return True

    def note_blocked(self, sender: str) -> None:
        self._blocked[sender] = self._blocked.get(sender, 0) + 1

    def cooling_down(self, sender: str) -> bool:
        """After `blocked_max` blocked messages, until `cooldown_s` have passed since the latest; 0 is off."""
        return 0 < self.blocked_max <= self._blocked.get(sender, 0)
