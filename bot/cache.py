"""Answer cache: LRU with TTL (cachetools), or shared by the workers in Redis (BOT_REDIS_URL), keyed by
the normalised question and the model version.

Only context-free questions are cached: an answer that depended on earlier turns is not reusable.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import cast

from cachetools import TTLCache
from prometheus_client import Counter

from bot.shared import SharedState

CACHE_LOOKUPS = Counter("bot_cache_lookups", "Answer cache look-ups", ["result"])
TRAILING = re.compile(r"[\s?？!！.。,，~～]+$")


def normalise_question(text: str) -> str:
    """Width, case and spacing folded, trailing punctuation dropped: "如何退换货？" == "如何退换货?"."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return TRAILING.sub("", " ".join(text.split()))


class AnswerCache:
    """In this process, or with Redis (`shared`) in the one cache every worker uses: an entry one worker
    puts, another serves. `size` bounds the entries in this process; Redis bounds its own (bot/shared.py)."""

    def __init__(self, size: int, ttl_s: float, shared: SharedState | None = None) -> None:
        self._entries: TTLCache | None = TTLCache(maxsize=size, ttl=ttl_s) if size > 0 and not shared else None
        self._shared = shared if size > 0 else None
        self.ttl_s = ttl_s
        self.hits = 0
        self.misses = 0

    def _key(self, question: str, model_version: str) -> str:
        text = f"{model_version}\n{normalise_question(question)}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    async def get(self, question: str, model_version: str) -> str | None:
        key = self._key(question, model_version)
        if self._shared:
            found = self._shared.client.get(self._shared.key("answer", key))
            answer = cast("str | None", await self._shared.attempt("cache", found, None))  # decoded: a str
        elif self._entries is not None:
            answer = self._entries.get(key)
        else:
            return None
        if answer is None:
            self.misses += 1
            CACHE_LOOKUPS.labels("miss").inc()
        else:
            self.hits += 1
            CACHE_LOOKUPS.labels("hit").inc()
        return answer

    async def put(self, question: str, model_version: str, answer: str) -> None:
        key = self._key(question, model_version)
        if self._shared:
            stored = self._shared.client.set(self._shared.key("answer", key), answer, px=int(self.ttl_s * 1000))
            await self._shared.attempt("cache", stored, None)
        elif self._entries is not None:
            self._entries[key] = answer

    async def clear(self) -> None:
        """Empty the cache of this process. Redis entries stay: the model version is part of every key, so
        an old version's answers are never served for a new one, and they expire within the TTL."""
        if self._entries is not None:
            self._entries.clear()

    def __len__(self) -> int:
        """Entries held in this process (none with Redis: they are shared there, and not counted)."""
        return len(self._entries) if self._entries is not None else 0
