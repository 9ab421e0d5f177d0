"""The narrow face of the bot that a channel sees: answer a message, rate, correct, the channel's
inbox and the links from platform messages to answers. A channel never holds the store or the bot.

One service object per channel, bound to the channel's name, so a channel cannot read or write
another channel's rows.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from bot.admin import Admin
from bot.app import Bot
from bot.feedback import Role
from bot.message import BotReply, UserMessage, strip_control_tokens
from bot.models.registry import Registry
from bot.privacy import mask_personal_data
from bot.store import StoredTurn


def build_admin(bot: Bot) -> Admin:
    """The HTTP channel's second object: token checks and the admin API (bot/admin.py)."""
    return Admin(Registry(bot.settings.data_dir), bot.store, bot.feedback)


class ChannelService:
    def __init__(self, bot: Bot, channel: str) -> None:
        self._bot = bot
        self._store = bot.store
        self.channel = channel
        self.max_message_chars = bot.settings.max_message_chars

    def sender(self, user_id: str) -> str:
        """How a user of this channel is written in AGENT_IDS: `channel:user_id`."""
        return f"{self.channel}:{user_id}"

    # --- messages and feedback ----------------------------------------------------------------------

    async def handle(self, message: UserMessage) -> BotReply:
        return await self._bot.dialogue.handle(message)

    async def rate(self, turn_id: int, user_id: str, rating: int | None, in_agent_chat: bool = False) -> Role:
        """Record (None: retract) a user's rating of an answer; the role it counted with."""
        return await self._bot.feedback.rate(turn_id, self.sender(user_id), rating, in_agent_chat)

    async def withdraw(self, turn_id: int, user_id: str, rating: int) -> None:
        """Retract the user's rating only if it is still `rating` (a removed reaction of that kind)."""
        await self._bot.feedback.withdraw(turn_id, self.sender(user_id), rating)

    async def correct(self, turn_id: int, user_id: str, text: str, in_agent_chat: bool = False) -> None:
        """Store an agent's corrected answer, masked and without control tokens (it becomes training
        data); NotAllowed for others, ValueError when empty."""
        clean = mask_personal_data(strip_control_tokens(text))
        await self._bot.feedback.correct(turn_id, self.sender(user_id), clean, in_agent_chat)

    async def turn(self, turn_id: int) -> StoredTurn | None:
        return await self._store.turn(turn_id)

    async def latest_turn(self, conversation_id: str) -> StoredTurn | None:
        return await self._store.latest_turn(self.channel, conversation_id)

    # --- answer links: which platform messages carry which answer -----------------------------------

    async def link_answer(self, chat_id: str, message_id: str, turn_id: int) -> None:
        await self._store.link_answer_message(self.channel, chat_id, message_id, turn_id)

    async def answer_sent(self, chat_id: str, turn_id: int) -> bool:
        return await self._store.answer_was_sent(self.channel, chat_id, turn_id)

    async def answer_for(self, chat_id: str, message_id: str) -> int | None:
        """The turn whose answer the platform message `message_id` is part of, if any."""
        return await self._store.turn_for_answer_message(self.channel, chat_id, message_id)

    # --- the inbox: events recorded before they are acknowledged ------------------------------------

    async def record(self, key: str, payload: dict[str, Any]) -> bool:
        """Record an incoming event; False if it was recorded before (a redelivery)."""
        return await self._store.inbox_add(self.channel, key, payload)

    async def done(self, key: str) -> None:
        await self._store.inbox_done(self.channel, key)

    async def failed(self, key: str, error: str, max_attempts: int) -> tuple[int, bool]:
        """Count a failed attempt; the attempts so far and whether the event is now a dead letter."""
        return await self._store.inbox_failed(self.channel, key, error, max_attempts)

    async def pending(self) -> list[tuple[str, dict[str, Any]]]:
        return await self._store.inbox_pending(self.channel)

    async def prune(self, older_than: timedelta) -> int:
        return await self._store.inbox_prune(self.channel, older_than)

    async def rejected(self, reason: str) -> None:
        """Audit a webhook call that failed the platform's check (its body is never kept)."""
        await self._store.audit(
            self.channel, "webhook_rejected", channel=self.channel, outcome="refused", reason=reason
        )

    # --- status -------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What /healthz shows: the versions served and the answer cache's counters."""
        models, cache = self._bot.models, self._bot.cache
        return {
            "status": "ok",
            "model_version": models.version_of("current"),
            "candidate": models.version_of("candidate") or None,
            "ab_share": models.ab_share,
            "cache": {"size": len(cache), "hits": cache.hits, "misses": cache.misses},
        }
