"""Answer cache: LRU with TTL (cachetools), keyed by the normalised question and the model version.

Only context-free questions are cached: an answer that depended on earlier turns is not reusable.
"""

from __future__ import annotations

import re
import unicodedata

from cachetools import TTLCache
from prometheus_client import Counter

CACHE_LOOKUPS = Counter("bot_cache_lookups", "Answer cache look-ups", ["result"])
TRAILING = re.compile(r"[\s?？!！.。,，~～]+$")


def normalise_question(text: str) -> str:
    """Width, case and spacing folded, trailing punctuation dropped: "如何退换货？" == "如何退换货?"."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return TRAILING.sub("", " ".join(text.split()))


class AnswerCache:
    def __init__(self, size: int, ttl_s: float) -> None:
        self._entries: TTLCache | None = TTLCache(maxsize=size, ttl=ttl_s) if size > 0 else None
        self.hits = 0
        self.misses = 0

    def get(self, question: str, model_version: str) -> str | None:
        if self._entries is None:
            return None
        answer = self._entries.get((normalise_question(question), model_version))
        if answer is None:
            self.misses += 1
            CACHE_LOOKUPS.labels("miss").inc()
        else:
            self.hits += 1
            CACHE_LOOKUPS.labels("hit").inc()
        return answer

    def put(self, question: str, model_version: str, answer: str) -> None:
        if self._entries is not None:
            self._entries[(normalise_question(question), model_version)] = answer

    def clear(self) -> None:
        if self._entries is not None:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries) if self._entries is not None else 0
