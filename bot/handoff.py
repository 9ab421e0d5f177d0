"""Human hand-off: a conversation passes from the bot to a person, and back.

- **Start.** A customer asks for a person (one of `BOT_HANDOFF_WORDS`), gives two 👎 in a row, or an
  agent answers in the conversation (takes it over).
- **While handed off** the bot stays silent there: each customer message is stored (masked) as waiting
  for a person and shown to the agents; an agent's reply passes the output word filter (it trains the
  next model, and speaks for the shop), then is relayed to the customer through the conversation's
  channel and stored as the agent's answer.
- **End.** An agent releases it (`/release`, `POST /admin/release`), or it times out after
  `BOT_HANDOFF_TIMEOUT_MINUTES` without a message; the bot answers again.

Every start, reply, release and refusal is audited. Channels register how to deliver a reply to one of
their conversations (`deliver_with`); the core never imports them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from prometheus_client import Counter

from bot.feedback import Role, Roles
from bot.message import strip_control_tokens, utcnow
from bot.privacy import mask_personal_data
from bot.store import Store, StoredTurn
from bot.wordfilter import WordFilter

log = logging.getLogger(__name__)
HANDOFFS = Counter("bot_handoffs", "Conversations handed off to a person", ["channel", "reason"])
# How a channel sends an agent's reply to one of its conversations: (conversation_id, text, turn_id).
Deliver = Callable[[str, str, int], Awaitable[None]]
# What the customer is told when the conversation goes to agents, (English, Chinese).
HANDED_OFF = (
    "I've passed your conversation to a colleague; they will reply here shortly.",
    "已为您转接人工客服,客服人员会尽快在这里回复您。",
)
TRANSCRIPT_TURNS = 10  # the latest turns shown to agents when a conversation is handed off


class HandOff:
    def __init__(
        self,
        store: Store,
        roles: Roles,
        phrases: list[str],
        timeout: timedelta,
        session_idle: timedelta,
        words: WordFilter,
    ):
        """`phrases`: what asks for a person (BOT_HANDOFF_WORDS); `words`: the output word filter."""
        self.store = store
        self.roles = roles
        self.timeout = timeout
        self.session_idle = session_idle
        self.words = words
        self._asks = _asks_pattern(phrases)
        self._deliveries: dict[str, Deliver] = {}

    def deliver_with(self, channel: str, deliver: Deliver) -> None:
        """How agents' replies reach the customers of `channel` (a channel without one, like HTTP, keeps
        them for its clients to read)."""
        self._deliveries[channel] = deliver

    def asks_for_person(self, text: str) -> bool:
        return self._asks is not None and self._asks.search(text) is not None

    # --- state ------------------------------------------------------------------------------------------

    async def active(self, channel: str, conversation_id: str) -> bool:
        """Whether agents have the conversation; one idle past the timeout is given back to the bot."""
        handoff = await self.store.handoff(channel, conversation_id)
        if handoff is None:
            return False
        if utcnow() - datetime.fromisoformat(handoff["last_at"]) > self.timeout:
            await self._end(channel, conversation_id, "bot", "timeout")
            return False
        await self.store.handoff_touch(channel, conversation_id)
        return True

    async def start(self, channel: str, conversation_id: str, actor: str, reason: str) -> bool:
        """Hand the conversation to agents; False if they have it already."""
        started = await self.store.handoff_start(channel, conversation_id, reason, actor)
        if started:
            HANDOFFS.labels(channel, reason).inc()
            await self.store.audit(
                actor, "handoff_started", target=_target(channel, conversation_id), channel=channel, reason=reason
            )
            log.info("%s conversation %s handed off to agents (%s)", channel, conversation_id, reason)
        return started

    async def after_rating(self, turn_id: int, sender: str, rating: int | None, role: Role) -> StoredTurn | None:
        """A customer's second 👎 in a row (on the conversation's latest two answers) hands it off (where
        there are agents to hand it to: the same condition as for the phrases); the rated turn if it did."""
        if rating != -1 or role is not Role.CUSTOMER or self._asks is None:
            return None
        turn = await self.store.turn(turn_id)
        if turn is None:
            return None
        answers = await self.store.history(turn.channel, turn.conversation_id, turn.session, limit=2)
        if len(answers) < 2 or turn.id != answers[-1].id:
            return None
        for answer in answers:
            if not any(r["rater"] == sender and r["rating"] == -1 for r in await self.store.ratings(answer.id)):
                return None
        started = await self.start(turn.channel, turn.conversation_id, sender, "two_downvotes")
        return turn if started else None

    async def transcript(self, channel: str, conversation_id: str) -> list[StoredTurn]:
        """The latest turns of the conversation, as stored (masked), oldest first."""
        latest = await self.store.latest_turn(channel, conversation_id)
        if latest is None:
            return []
        earlier = await self.store.session_turns(channel, conversation_id, latest.session, latest.id)
        return [*earlier, latest][-TRANSCRIPT_TURNS:]

    async def open(self, viewer: str) -> list[dict[str, object]]:
        """Conversations agents have now, each with its transcript (GET /admin/handoffs); agents only."""
        await self.roles.require(viewer, Role.AGENT, "handoff_list", "see handed-off conversations")
        listing: list[dict[str, object]] = []
        for handoff in await self.store.handoffs():
            turns = await self.transcript(handoff["channel"], handoff["conversation_id"])
            listing.append(handoff | {"turns": [{"question": t.user_text, "answer": t.answer} for t in turns]})
        return listing

    # --- agents' actions --------------------------------------------------------------------------------

    async def reply(
        self,
        channel: str,
        conversation_id: str,
        agent: str,
        text: str,
        message_id: str,
        in_agent_chat: bool = False,
    ) -> int:
        """An agent's reply: delivered to the customer as written (without control tokens, through the output
        word filter), stored masked as the agent's answer. A conversation not handed off yet is taken over.
        NotAllowed for non-agents; ValueError when empty or blocked (nothing is sent or stored)."""
        target = _target(channel, conversation_id)
        await self.roles.require(agent, Role.AGENT, "handoff_reply", "answer customers", in_agent_chat, target=target)
        text = strip_control_tokens(text).strip()
        if not text:
            raise ValueError("the reply is empty")
        text = self.words.agent_answer(text, "reply")
        if await self.store.latest_turn(channel, conversation_id) is None:
            raise LookupError(f"no conversation {conversation_id!r} on {channel}")
        if not await self.active(channel, conversation_id):
            await self.start(channel, conversation_id, agent, "taken_over")
        turn_id, answers_question = await self.store.add_agent_answer(
            channel, conversation_id, agent, mask_personal_data(text), message_id, self.session_idle
        )
        await self.store.audit(agent, "handoff_reply", target=target, channel=channel, turn_id=turn_id)
        deliver = self._deliveries.get(channel)
        if deliver is not None:
            await deliver(conversation_id, text, turn_id)
        log.info(
            "%s: agent %s answered in %s (turn %d, %s)",
            channel,
            agent,
            conversation_id,
            turn_id,
            "answers a question" if answers_question else "no question waiting",
        )
        return turn_id

    async def release(self, channel: str, conversation_id: str, agent: str, in_agent_chat: bool = False) -> bool:
        """Give the conversation back to the bot; whether it was handed off. NotAllowed for non-agents."""
        target = _target(channel, conversation_id)
        await self.roles.require(
            agent, Role.AGENT, "handoff_release", "release conversations", in_agent_chat, target=target
        )
        return await self._end(channel, conversation_id, agent, "released")

    async def _end(self, channel: str, conversation_id: str, actor: str, reason: str) -> bool:
        ended = await self.store.handoff_end(channel, conversation_id)
        if ended:
            await self.store.audit(
                actor, "handoff_released", target=_target(channel, conversation_id), channel=channel, reason=reason
            )
        return ended


def _target(channel: str, conversation_id: str) -> str:
    return f"conversation:{channel}:{conversation_id}"


def _asks_pattern(words: list[str]) -> re.Pattern[str] | None:
    """Latin words match whole words (\"agent\", not \"agents'\" inside \"reagent\"); Chinese ones anywhere."""
    parts = [re.escape(w) if not w.isascii() else rf"\b{re.escape(w)}\b" for w in words if w.strip()]
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None
