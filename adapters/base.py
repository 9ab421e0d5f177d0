"""What every chat channel shares, so that a platform module keeps only what is its own.

- **Record before acknowledge.** `receive` writes an event to the channel's inbox before the
  platform may consider it delivered; it is marked done only after its reply went out.
- **Replay and retries.** Events a crash left pending are replayed at start. An event whose handling
  fails is retried with backoff while the bot runs; after `MAX_ATTEMPTS` it becomes a dead letter
  (kept, with its last error, but never retried again), so one poisoned update cannot loop forever.
  An error the platform will never accept (`is_permanent`) ends the event at once.
- **One conversation at a time, in order.** Events of one conversation (`conversation_of`) are
  handled one by one, in the order they arrived, so a quick second question sees the first as context.
- **Delivery.** An answer is split at the platform's limit, every part is linked to its turn (so a
  reaction on any part rates it), and an answer already in the chat is never sent again on replay.
- **Agents.** Answers are mirrored to the agents' room; reactions become ratings; a fix command
  becomes a correction.
- **Streaming.** Where the platform can edit messages (`edit`), an answer is posted at its first
  clause and edited as it grows; the final reply replaces it (a fallback or blocked reply included).
- **Hand-off.** A conversation handed to a person is announced in the agents' room with its transcript,
  the customer's later messages are shown there, and an agent's reply to any of them is relayed to the
  customer; a release command gives it back to the bot (bot/handoff.py decides, this only carries).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

from bot.feedback import NotAllowed
from bot.message import BotReply, UserMessage, pick_language
from bot.service import ChannelService
from bot.store import StoredTurn

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 5
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 60.0  # backoff doubles from the first delay up to the cap
STOP_GRACE_S = 5.0
REJECTIONS_LOGGED_EVERY_S = 60.0
STREAM_EDIT_EVERY_S = 1.0  # a streamed answer's message is edited at most this often (flood limits)
KEEP_DONE = timedelta(days=7)  # finished events are kept (without payload) this long, to spot redeliveries
SENTENCE_END = re.compile(r"[。！？；!?;…]|[.!?;](?=\s)")


class Texts:
    """Replies about feedback, (English, Chinese); `{fix}` is the channel's fix command."""

    FIX_USAGE = (
        "Reply to one of my answers with {fix} followed by the corrected answer.",
        "请回复我的某条回答,并发送 {fix} 加上正确的回答。",
    )
    FIX_REFUSED = ("Sorry, only agents can correct answers.", "抱歉,只有客服人员可以更正回答。")
    FIX_SAVED = ("Thanks, the correction is saved.", "谢谢,更正已保存。")
    # Hand-off: to agents (English; `{who}` the customer, `{release}` the channel's release command)...
    ASKED = "🙋 {who} asked for a person. Reply to this message to answer them; {release} gives them back to the bot."
    DOWNVOTED = (
        "🙋 {who} rated two answers 👎 in a row. Reply to this message to answer them; {release} gives them back "
        "to the bot."
    )
    # ...and the replies to agents and customers, (English, Chinese).
    REPLY_REFUSED = ("Sorry, only agents can answer customers.", "抱歉,只有客服人员可以回复客户。")
    RELEASE_USAGE = (
        "Reply to a customer's message here with {release} to give the conversation back to the bot.",
        "请回复客户的某条消息并发送 {release},将对话交还给机器人。",
    )
    RELEASED = ("The bot answers this customer again.", "已将对话交还给机器人。")
    NOT_HANDED_OFF = ("This conversation is not with an agent.", "该对话当前不在人工客服处理中。")
    ROLE_USAGE = (
        "Usage: {role} <telegram:ID | slack:ID | http:NAME> <customer | agent | admin>",
        "用法:{role} <telegram:ID | slack:ID | http:名称> <customer | agent | admin>",
    )
    ROLE_REFUSED = ("Sorry, only admins can change roles.", "抱歉,只有管理员可以修改角色。")
    ROLE_SET = ("{subject} is now: {now}.", "{subject} 现在的角色:{now}。")
    BOT_IS_BACK = ("You're chatting with the assistant again.", "您已回到智能客服,请继续提问。")


@dataclass(frozen=True)
class Place:
    """Where a message goes on the platform: a chat, optionally a thread or topic in it, and the
    message the first part quotes."""

    chat_id: str
    thread: str | None = None
    reply_to: str | None = None


def split_text(text: str, limit: int) -> list[str]:
    """Parts of at most `limit` UTF-16 code units (the stricter way platforms count), cut at a line
    break, else a sentence end, else a space in the second half of each part; a hard cut only where
    there is none of them."""
    parts: list[str] = []
    text = text.strip()
    while (fits := _fit(text, limit)) < len(text):
        window = text[:fits]
        cut = _boundary(window)
        if part := window[:cut].rstrip():
            parts.append(part)
        text = text[cut:].lstrip()
    if text:
        parts.append(text)
    return parts


def _fit(text: str, limit: int) -> int:
    """How many characters of `text` fit in `limit` UTF-16 code units."""
    units = 0
    for i, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > limit:
            return i
    return len(text)


def _boundary(window: str) -> int:
    half = len(window) // 2
    line = window.rfind("\n") + 1
    sentence = max((m.end() for m in SENTENCE_END.finditer(window)), default=0)
    space = window.rfind(" ") + 1
    return next((cut for cut in (line, sentence, space) if cut > half), len(window))


class StreamedMessage:
    """One answer shown as it is generated: posted with its first text, edited at most every
    STREAM_EDIT_EVERY_S, and given its final text (split at the limit, every part linked to the turn)."""

    def __init__(self, channel: ChatChannel, place: Place) -> None:
        self.channel, self.place = channel, place
        self.message_id: str | None = None
        self.text = ""
        self._edited_at = 0.0

    async def show(self, text: str) -> None:
        rendered = self.channel.render(text)
        now = time.monotonic()
        if len(rendered) > self.channel.text_limit or (self.message_id and now - self._edited_at < STREAM_EDIT_EVERY_S):
            return  # too long for one message (the final reply splits it), or too soon
        try:
            if self.message_id is None:
                self.message_id = await self.channel.post(self.place, rendered, first=True)
            else:
                await self.channel.edit(self.place, self.message_id, rendered)
        except Exception as exc:  # a courtesy: the final reply still goes out
            log.info("%s: could not show a streamed answer: %s", self.channel.name, exc)
            return
        self.text, self._edited_at = rendered, now

    async def finish(self, text: str, turn_id: int | None) -> None:
        assert self.message_id is not None
        first, *rest = split_text(text, self.channel.text_limit) or [text]
        if first != self.text:
            await self.channel.edit(self.place, self.message_id, first)
        sent = [self.message_id] + [await self.channel.post(self.place, part, first=False) for part in rest]
        if turn_id is not None:
            for message_id in sent:
                await self.channel.service.link_answer(self.place.chat_id, message_id, turn_id)
            await self.channel.answer_shown(self.place, sent[-1], rest[-1] if rest else first)


class ChatChannel(ABC):
    """A chat platform. Subclasses name it, set its message size, send one part, and turn platform
    events into calls of `answer`, `rate_reaction`, `withdraw_reaction` and `fix`."""

    name: ClassVar[str]
    text_limit: ClassVar[int]
    fix_command: ClassVar[str]
    release_command: ClassVar[str]
    role_command: ClassVar[str]

    def __init__(self, service: ChannelService, ratings: dict[str, int], agents_room: Place | None = None) -> None:
        self.service = service
        self.ratings = {self._reaction_name(name): rating for name, rating in ratings.items()}
        self.agents_room = agents_room
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retries: dict[str, asyncio.Task[None]] = {}  # inbox keys waiting to be tried again
        self._active: set[str] = set()  # inbox keys being handled now
        self._stopping = False
        self._sweeper: asyncio.Task[None] | None = None
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._rejected, self._rejected_logged_at = 0, -REJECTIONS_LOGGED_EVERY_S
        service.deliver_with(self.deliver)

    # --- to be written by each platform ---------------------------------------------------------------

    @abstractmethod
    async def handle_event(self, payload: dict[str, Any]) -> None:
        """Act on one recorded event (a message, a reaction...)."""

    @abstractmethod
    async def post(self, place: Place, text: str, first: bool) -> str:
        """Send one part of a message; the platform's id of the sent message."""

    @abstractmethod
    async def mirror_turn(self, turn: StoredTurn, who: str) -> None:
        """Show a customer's question and its answer in the agents' room (linked to the turn)."""

    @abstractmethod
    def place_for(self, conversation_id: str) -> Place:
        """Where to write to a conversation (an agent's reply during a hand-off)."""

    def render(self, text: str) -> str:
        """The bot's plain text as the platform's message text (e.g. with its markup escaped)."""
        return text

    async def edit(self, place: Place, message_id: str, text: str) -> None:
        """Replace the text of a message the bot sent; a platform that can do it streams answers."""
        raise NotImplementedError

    def streamer(self, place: Place) -> StreamedMessage | None:
        """How an answer to `place` is shown while it is generated: posted and edited where the platform
        can edit messages. A streamer that never posts (message_id None) leaves the final reply to `send`."""
        return StreamedMessage(self, place) if type(self).edit is not ChatChannel.edit else None

    def conversation_of(self, payload: dict[str, Any]) -> str | None:
        """The conversation an event belongs to: its events are handled one at a time, in order."""
        return None

    def is_permanent(self, error: Exception) -> bool:
        """Whether the platform will never accept what failed, so retrying is pointless."""
        return False

    # --- start and stop -------------------------------------------------------------------------------

    def add_routes(self, app: Any) -> None:  # noqa: B027 (optional: most channels need no route)
        """Routes on the bot's HTTP server (webhooks); none by default."""

    async def start(self) -> None:
        """Forget long-finished events, then replay those recorded but not finished before the last stop
        or crash; from then on, now and then, those of workers that died (their leases ran out)."""
        await self.service.prune(KEEP_DONE)
        await self._replay("left pending at the last stop")
        self._sweeper = asyncio.create_task(self._sweep())

    async def _replay(self, why: str) -> None:
        claimed = await self.service.claim()
        if claimed:
            log.info("%s: handling %d events %s", self.name, len(claimed), why)
        for key, payload in claimed:
            self._schedule(key, payload)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.service.sweep_every_s)
            try:
                await self._replay("whose worker stopped answering")
            except Exception as exc:  # the store is away for a moment: the next sweep tries again
                log.warning("%s: could not look for abandoned events (%s: %s)", self.name, type(exc).__name__, exc)

    async def stop(self) -> None:
        """Let work in flight finish for a moment; what is cut off stays in the inbox for the next start."""
        self._stopping = True
        if self._sweeper:
            self._sweeper.cancel()
        for retry in self._retries.values():
            retry.cancel()
        if self._tasks:
            _, unfinished = await asyncio.wait(set(self._tasks), timeout=STOP_GRACE_S)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)

    # --- receiving --------------------------------------------------------------------------------------

    async def receive(self, key: str, payload: dict[str, Any]) -> None:
        """Record an event, then start handling it; the caller acknowledges it to the platform after."""
        if await self.service.record(key, payload):
            self._schedule(key, payload)
        else:
            log.info("%s: event %s delivered again; it was recorded before", self.name, key)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background; `stop` gives it a moment to finish."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _schedule(self, key: str, payload: dict[str, Any]) -> None:
        if key not in self._active and key not in self._retries and not self._stopping:
            self._active.add(key)
            self.spawn(self._process(key, payload))

    async def _process(self, key: str, payload: dict[str, Any]) -> None:
        try:
            if not await self.service.take(key):  # finished meanwhile, or another worker answers it
                return
            async with self._lock(self.conversation_of(payload)):
                await self.handle_event(payload)
            await self.service.done(key)
        except Exception as exc:
            await self._failed(key, payload, exc)
        finally:
            self._active.discard(key)

    async def _failed(self, key: str, payload: dict[str, Any], error: Exception) -> None:
        if self.is_permanent(error):
            log.warning("%s: event %s: the platform refused the reply (%s); not retrying", self.name, key, error)
            await self.service.done(key)
            return
        attempts, dead = await self.service.failed(key, f"{type(error).__name__}: {error}", MAX_ATTEMPTS)
        if dead:
            log.error(
                "%s: event %s failed %d times; set aside as a dead letter", self.name, key, attempts, exc_info=error
            )
            return
        if self._stopping:  # still pending: the next start replays it
            return
        delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (attempts - 1))
        log.warning(
            "%s: event %s failed (%s: %s); attempt %d of %d, retrying in %.0f s",
            self.name,
            key,
            type(error).__name__,
            error,
            attempts,
            MAX_ATTEMPTS,
            delay,
        )
        self._retries[key] = asyncio.create_task(self._retry_after(delay, key, payload))

    async def _retry_after(self, delay: float, key: str, payload: dict[str, Any]) -> None:
        await asyncio.sleep(delay)
        del self._retries[key]
        self._schedule(key, payload)

    def _lock(self, conversation: str | None) -> asyncio.Lock:
        if conversation is None:
            return asyncio.Lock()  # no ordering needed: a lock of its own
        lock = self._locks.get(conversation)
        if lock is None:
            lock = self._locks[conversation] = asyncio.Lock()
        return lock

    async def rejected(self, reason: str) -> None:
        """A webhook call that failed the platform's check: audited every time, logged at most once a
        minute (with a count), so a flood of bad calls cannot fill the logs."""
        await self.service.rejected(reason)
        self._rejected += 1
        now = time.monotonic()
        if now - self._rejected_logged_at >= REJECTIONS_LOGGED_EVERY_S:
            log.warning("%s: %d webhook call(s) rejected since the last report (%s)", self.name, self._rejected, reason)
            self._rejected, self._rejected_logged_at = 0, now

    # --- answering and sending --------------------------------------------------------------------------

    async def answer(self, message: UserMessage, place: Place, who: str, mirror: bool = False) -> BotReply:
        """The bot's answer to `message` from `who` (as agents see them), sent to `place` unless a replay
        finds it sent already; with `mirror` (a customer in a private chat), mirrored to the agents' room
        too. A hand-off, and every message while agents have the conversation, is shown to the agents."""
        streamed = self.streamer(place)
        reply = await self.service.handle(message, streamed.show if streamed else None)
        if streamed and streamed.message_id:
            await streamed.finish(self.render(reply.text), reply.turn_id)
        elif reply.text and not await self._already_sent(reply, place.chat_id):
            await self.send(place, self.render(reply.text), reply.turn_id)
        room, turn_id = self.agents_room, reply.turn_id
        if room and turn_id is not None and not await self._already_sent(reply, room.chat_id):
            # Off the answer's path: the agents' room is slower, and its failures are not the customer's.
            if reply.outcome == "handed_off":
                self.spawn(self._to_agents(self._show_handoff(turn_id, who, Texts.ASKED)))
            elif reply.outcome == "with_agent":
                self.spawn(self._to_agents(self._show_waiting(turn_id, who)))
            elif mirror:
                self.spawn(self._to_agents(self._mirror(turn_id, who)))
        return reply

    async def send(self, place: Place, text: str, turn_id: int | None = None) -> list[str]:
        """Send `text` split at the platform's limit, linking every part to the answer `turn_id`."""
        sent: list[str] = []
        parts = split_text(text, self.text_limit)
        for part in parts:
            message_id = await self.post(place, part, first=not sent)
            sent.append(message_id)
            if turn_id is not None:
                await self.service.link_answer(place.chat_id, message_id, turn_id)
        if turn_id is not None and sent:
            await self.answer_shown(place, sent[-1], parts[-1])
        return sent

    async def answer_shown(self, place: Place, message_id: str, text: str) -> None:  # noqa: B027 (optional)
        """An answer's last part (`text`, rendered) is in the chat, linked to its turn: where the platform
        has rating controls, they go on it here."""

    async def _already_sent(self, reply: BotReply, chat_id: str) -> bool:
        """Only a redelivered message can find its answer in the chat already."""
        return reply.duplicate and reply.turn_id is not None and await self.service.answer_sent(chat_id, reply.turn_id)

    async def _to_agents(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception:  # the customer has the answer: a failed mirror must not make it repeat
            log.exception("%s: could not show a conversation in the agents' room", self.name)

    async def _mirror(self, turn_id: int, who: str) -> None:
        turn = await self.service.turn(turn_id)
        if turn is not None:
            await self.mirror_turn(turn, who)

    # --- hand-off to a person (bot/handoff.py) ----------------------------------------------------------

    async def deliver(self, conversation_id: str, text: str, turn_id: int) -> None:
        """An agent's reply, sent to the customer (registered with the service at start)."""
        await self.send(self.place_for(conversation_id), self.render(text), turn_id)

    async def _show_handoff(self, turn_id: int, who: str, why: str) -> None:
        """Tell the agents' room that `who` wants a person, with the conversation so far (as stored:
        masked); replying to this message answers the customer."""
        assert self.agents_room is not None
        turn = await self.service.turn(turn_id)
        if turn is None:
            return
        lines = [why.format(who=who, release=self.release_command)]
        for past in await self.service.transcript(turn.conversation_id):
            lines.append(f"👤 {past.user_text}")
            if past.answer:
                lines.append(f"{'🧑‍💼' if past.outcome == 'agent' else '🤖'} {past.answer}")
        await self.send(self.agents_room, self.render("\n".join(lines)), turn_id)

    async def _show_waiting(self, turn_id: int, who: str) -> None:
        """A customer's message while agents have the conversation; replying to it answers them."""
        assert self.agents_room is not None
        turn = await self.service.turn(turn_id)
        if turn is not None:
            await self.send(self.agents_room, self.render(f"👤 {who}: {turn.user_text}"), turn_id)

    async def _linked_turn(self, chat_id: str, message_id: str | None) -> StoredTurn | None:
        """The turn a message in the agents' room is about (a mirror, a hand-off notice...)."""
        turn_id = await self.service.answer_for(chat_id, message_id) if message_id else None
        return await self.service.turn(turn_id) if turn_id is not None else None

    async def agent_says(self, chat_id: str, about: str | None, user_id: str, text: str, message_id: str) -> str | None:
        """An agent's message in the agents' room replying to a linked message of a handed-off conversation:
        relayed to that customer. What to tell the agent; None when relayed, or when the conversation is the
        bot's (then it is talk among agents)."""
        turn = await self._linked_turn(chat_id, about)
        if turn is None or not await self.service.with_agents(turn.channel, turn.conversation_id):
            return None
        try:
            await self.service.agent_reply(
                turn.channel,
                turn.conversation_id,
                user_id,
                text,
                f"{chat_id}:{message_id}",
                self.in_agents_room(chat_id),
            )
        except NotAllowed:
            return pick_language(Texts.REPLY_REFUSED, text)
        except (ValueError, LookupError) as exc:
            return str(exc)
        return None

    async def release(self, chat_id: str, about: str | None, user_id: str, language: str = "") -> str:
        """`/release` in reply to a linked message: the conversation goes back to the bot; the reply to show."""
        turn = await self._linked_turn(chat_id, about)
        if turn is None:
            return pick_language(Texts.RELEASE_USAGE, language=language or "en").format(release=self.release_command)
        try:
            released = await self.service.release(
                turn.channel, turn.conversation_id, user_id, self.in_agents_room(chat_id)
            )
        except NotAllowed:
            return pick_language(Texts.REPLY_REFUSED, language=language or "en")
        if released:
            customer = pick_language(Texts.BOT_IS_BACK, turn.user_text)
            await self.send(self.place_for(turn.conversation_id), self.render(customer))
        return pick_language(Texts.RELEASED if released else Texts.NOT_HANDED_OFF, language=language or "en")

    # --- feedback ---------------------------------------------------------------------------------------

    @staticmethod
    def _reaction_name(name: str) -> str:
        """Without emoji variation selectors and Slack's skin tones: 👍️ is 👍, +1::skin-tone-2 is +1."""
        return name.split("::")[0].replace("\ufe0f", "")

    def rating_of(self, reaction: str) -> int | None:
        return self.ratings.get(self._reaction_name(reaction))

    def in_agents_room(self, chat_id: str) -> bool:
        """Whether `chat_id` is the agents' room (its members are agents only with BOT_TRUST_AGENT_ROOM)."""
        return self.agents_room is not None and chat_id == self.agents_room.chat_id

    async def rate_reaction(self, chat_id: str, message_id: str, user_id: str, rating: int | None) -> None:
        """A reaction given (or, with None, all rating reactions taken back) on one of the bot's answers."""
        turn_id = await self.service.answer_for(chat_id, message_id)
        if turn_id is not None:
            rated = await self.service.rate(turn_id, user_id, rating, self.in_agents_room(chat_id))
            log.info("%s: %s (%s) rated turn %d: %s", self.name, user_id, rated.role.value, turn_id, rating)
            if rated.handed_off is not None:
                await self.send(self.place_for(rated.handed_off), self.render(rated.customer_reply))
                if self.agents_room:
                    await self._to_agents(self._show_handoff(turn_id, f"{self.name}:{user_id}", Texts.DOWNVOTED))

    async def withdraw_reaction(self, chat_id: str, message_id: str, user_id: str, rating: int) -> None:
        """One rating reaction removed: the user's rating is retracted if it was that one."""
        turn_id = await self.service.answer_for(chat_id, message_id)
        if turn_id is not None:
            await self.service.withdraw(turn_id, user_id, rating)

    async def change_role(self, user_id: str, args: str, language: str = "") -> str:
        """`<role command> <subject> <role>` from an admin, in any chat; the reply to show."""
        subject, _, role = args.strip().partition(" ")
        texts = Texts.ROLE_USAGE
        if subject and role.strip():
            try:
                now = await self.service.change_role(user_id, subject, role.strip())
                return pick_language(Texts.ROLE_SET, language=language or "en").format(subject=subject, now=now.value)
            except NotAllowed:
                texts = Texts.ROLE_REFUSED
            except ValueError as exc:
                return str(exc)
        return pick_language(texts, language=language or "en").format(role=self.role_command)

    async def fix(self, turn_id: int | None, user_id: str, correction: str, chat_id: str, language: str = "") -> str:
        """An agent's corrected answer for `turn_id`; the reply to show them."""
        texts = Texts.FIX_USAGE
        if turn_id is not None and correction.strip():
            try:
                await self.service.correct(turn_id, user_id, correction, self.in_agents_room(chat_id))
                texts = Texts.FIX_SAVED
            except NotAllowed:
                log.info("%s: fix from %s refused: not an agent", self.name, user_id)
                texts = Texts.FIX_REFUSED
            except ValueError as exc:  # too long
                return str(exc)
        return pick_language(texts, correction, language).format(fix=self.fix_command)
