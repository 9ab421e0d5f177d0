"""The narrow face of the bot that a channel sees: answer a message, rate, correct, the channel's
inbox and the links from platform messages to answers. A channel never holds the store or the bot.

One service object per channel, bound to the channel's name, so a channel cannot read or write
another channel's rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bot.admin import Admin
from bot.app import Bot
from bot.feedback import Role
from bot.handoff import HANDED_OFF, Deliver
from bot.message import BotReply, UserMessage, pick_language, strip_control_tokens
from bot.models.registry import Registry
from bot.pipeline import Stream
from bot.privacy import mask_personal_data
from bot.store import StoredTurn


def build_admin(bot: Bot) -> Admin:
    """The HTTP channel's second object: token checks and the admin API (bot/admin.py)."""
    return Admin(Registry(bot.settings.data_dir, bot.settings.redis_url), bot.store, bot.feedback)


@dataclass(frozen=True)
class Rated:
    role: Role  # what the rating counted as: an agent's (trains) or a customer's
    # Set when the rating handed the conversation to agents: which one, and what to tell the customer.
    handed_off: str | None = None
    customer_reply: str = ""


class ChannelService:
    def __init__(self, bot: Bot, channel: str) -> None:
        self._bot = bot
        self._store = bot.store
        self.channel = channel
        self.max_message_chars = bot.settings.max_message_chars
        self._worker = bot.settings.worker
        self._lease = timedelta(seconds=bot.settings.inbox_lease_s)
        # How often a worker looks for events whose worker died (their leases ran out).
        self.sweep_every_s = bot.settings.inbox_lease_s / 3

    def sender(self, user_id: str) -> str:
        """How a user of this channel is written in AGENT_IDS: `channel:user_id`."""
        return f"{self.channel}:{user_id}"

    # --- messages and feedback ----------------------------------------------------------------------

    async def handle(self, message: UserMessage, stream: Stream | None = None) -> BotReply:
        """The reply; with `stream`, a model answer is shown as it grows (DialogueManager.handle)."""
        return await self._bot.dialogue.handle(message, stream)

    async def rate(self, turn_id: int, user_id: str, rating: int | None, in_agent_chat: bool = False) -> Rated:
        """Record (None: retract) a user's rating of an answer: the role it counted with, and whether it
        handed the conversation to agents (a customer's second 👎 in a row)."""
        sender = self.sender(user_id)
        role = await self._bot.feedback.rate(turn_id, sender, rating, in_agent_chat)
        turn = await self._bot.handoff.after_rating(turn_id, sender, rating, role)
        if turn is None:
            return Rated(role)
        return Rated(role, turn.conversation_id, pick_language(HANDED_OFF, turn.user_text))

    async def withdraw(self, turn_id: int, user_id: str, rating: int) -> None:
        """Retract the user's rating only if it is still `rating` (a removed reaction of that kind)."""
        await self._bot.feedback.withdraw(turn_id, self.sender(user_id), rating)

    async def correct(self, turn_id: int, user_id: str, text: str, in_agent_chat: bool = False) -> None:
        """Store an agent's corrected answer, masked, without control tokens and through the output word
        filter (it becomes training data); NotAllowed for others, ValueError when empty, too long or blocked."""
        self._check_length(text, "correction")
        clean = self._bot.dialogue.deps.words.agent_answer(mask_personal_data(strip_control_tokens(text)), "correction")
        await self._bot.feedback.correct(turn_id, self.sender(user_id), clean, in_agent_chat)

    def _check_length(self, text: str, what: str) -> None:
        limit = self._bot.settings.max_correction_chars
        if len(text) > limit:
            raise ValueError(f"the {what} is longer than {limit} characters")

    async def change_role(self, user_id: str, subject: str, role: str) -> Role:
        """An admin's role command: `subject` gets `role` (customer revokes); its role now. NotAllowed for
        non-admins, ValueError for a bad subject or role."""
        return await self._bot.feedback.roles.change(self.sender(user_id), subject, role)

    async def turn(self, turn_id: int) -> StoredTurn | None:
        return await self._store.turn(turn_id)

    async def latest_turn(self, conversation_id: str) -> StoredTurn | None:
        return await self._store.latest_turn(self.channel, conversation_id)

    # --- hand-off to a person (bot/handoff.py) ------------------------------------------------------

    def deliver_with(self, deliver: Deliver) -> None:
        """How agents' replies reach this channel's customers."""
        self._bot.handoff.deliver_with(self.channel, deliver)

    async def agent_reply(
        self, channel: str, conversation_id: str, user_id: str, text: str, message_id: str, in_agent_chat: bool = False
    ) -> int:
        """An agent's reply to a customer (of any channel): relayed and stored; the turn it is kept in.
        NotAllowed for non-agents, ValueError when empty, too long or blocked by the word filter, LookupError
        for no such conversation."""
        self._check_length(text, "reply")
        return await self._bot.handoff.reply(
            channel, conversation_id, self.sender(user_id), text, message_id, in_agent_chat
        )

    async def with_agents(self, channel: str, conversation_id: str) -> bool:
        """Whether agents have the conversation now (a hand-off that has not timed out)."""
        return await self._bot.handoff.active(channel, conversation_id)

    async def release(self, channel: str, conversation_id: str, user_id: str, in_agent_chat: bool = False) -> bool:
        """Give a conversation back to the bot; whether agents had it. NotAllowed for non-agents."""
        return await self._bot.handoff.release(channel, conversation_id, self.sender(user_id), in_agent_chat)

    async def transcript(self, conversation_id: str) -> list[StoredTurn]:
        """The latest turns of one of this channel's conversations (masked), for the agents."""
        return await self._bot.handoff.transcript(self.channel, conversation_id)

    async def handoffs(self, user_id: str) -> list[dict[str, Any]]:
        return await self._bot.handoff.open(self.sender(user_id))

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
        """Record an incoming event; False if it was recorded before (a redelivery). With Redis, the workers
        spot most redeliveries there without asking the database, whose unique key stays the truth."""
        shared = self._bot.shared
        if shared and await shared.seen(self.channel, key):
            return False
        recorded = await self._store.inbox_add(self.channel, key, payload)
        if shared:
            await shared.remember(self.channel, key)
        return recorded

    async def done(self, key: str) -> None:
        await self._store.inbox_done(self.channel, key)

    async def failed(self, key: str, error: str, max_attempts: int) -> tuple[int, bool]:
        """Count a failed attempt; the attempts so far and whether the event is now a dead letter."""
        return await self._store.inbox_failed(self.channel, key, error, max_attempts)

    async def take(self, key: str) -> bool:
        """Lease a recorded event to this worker for BOT_INBOX_LEASE_S; False when it is finished or another
        worker holds it (several workers share the inbox: each event is answered by one)."""
        return await self._store.inbox_take(self.channel, key, self._worker, self._lease) is not None

    async def claim(self) -> list[tuple[str, dict[str, Any]]]:
        """Lease the unfinished events nobody holds: left by a stop or crash, or by a worker that died."""
        return await self._store.inbox_claim(self.channel, self._worker, self._lease)

    async def hold(self, job: str, seconds: float) -> bool:
        """Take or renew this channel's lease on `job` (one worker at a time); False while another holds it."""
        return await self._store.lease(f"{self.channel}:{job}", self._worker, timedelta(seconds=seconds))

    async def let_go(self, job: str) -> None:
        await self._store.lease_release(f"{self.channel}:{job}", self._worker)

    async def prune(self, older_than: timedelta) -> int:
        return await self._store.inbox_prune(self.channel, older_than)

    async def rejected(self, reason: str) -> None:
        """Audit a webhook call that failed the platform's check (its body is never kept)."""
        await self._store.audit(
            self.channel, "webhook_rejected", channel=self.channel, outcome="refused", reason=reason
        )

    # --- status -------------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """What /healthz shows: whether the store answers and a model is loaded, the versions served and
        the answer cache's counters."""
        models, cache = self._bot.models, self._bot.cache
        checks = {"store": "ok", "model": "ok" if models.version_of("current") else "no model loaded"}
        try:
            await self._store.ping()
        except Exception as exc:  # reported, not raised: the probe must get its answer
            checks["store"] = f"{type(exc).__name__}: {exc}"
        return {
            "status": "ok" if set(checks.values()) == {"ok"} else "unavailable",
            "checks": checks,
            "model_version": models.version_of("current"),
            "candidate": models.version_of("candidate") or None,
            "ab_share": models.ab_share,
            "load_error": models.load_error,
            "cache": {"size": len(cache), "hits": cache.hits, "misses": cache.misses},
        }
