"""Telegram channel (aiogram 3): customers chat with the bot, agents rate answers with reactions
and correct them with /fix.

Nothing is lost or answered twice (see `adapters.base`): every update is recorded before Telegram may
consider it delivered (before the next getUpdates offset passes it, or before the webhook call
returns 200). aiogram's own polling confirms updates before the handlers finish (aiogram issue
#1397), hence the small polling loop here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from aiogram import Bot as TelegramBot
from aiogram import Dispatcher, F, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.client.telegram import PRODUCTION, TelegramAPIServer
from aiogram.enums import ChatAction, ChatType
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.methods import EditMessageText, GetUpdates, SendMessage, TelegramMethod
from aiogram.methods.base import Response, TelegramType
from aiogram.types import (
    Message,
    MessageGenerationStopped,
    MessageReactionUpdated,
    ReactionTypeEmoji,
    ReplyParameters,
    Update,
)
from aiogram.utils.backoff import Backoff, BackoffConfig
from aiogram.utils.token import TokenValidationError
from aiohttp import web
from aiolimiter import AsyncLimiter
from cachetools import LRUCache
from pydantic import ValidationError

from adapters.base import ChatChannel, Place, StreamedMessage, split_text
from bot.config import ConfigError, TelegramSettings
from bot.message import UserMessage, pick_language
from bot.service import ChannelService
from bot.store import StoredTurn

log = logging.getLogger(__name__)
CHANNEL = "telegram"
# message_reaction updates only come when asked for by name, and with a list given, so does every other kind
# (stopped_message_generation: the customer pressed the stop button on a draft).
ALLOWED_UPDATES = ["message", "message_reaction", "stopped_message_generation"]
# Reaction -> rating; TELEGRAM_REACTIONS replaces it.
DEFAULT_REACTIONS = {"👍": 1, "❤": 1, "🔥": 1, "👏": 1, "👎": -1, "💩": -1, "🤮": -1}
# The parts of a message the handlers read (see replay_fields); a message with none of text or caption is
# "not text" either way.
MESSAGE_FIELDS = (
    "message_id",
    "date",
    "chat",
    "from",
    "sender_chat",
    "message_thread_id",
    "is_topic_message",
    "text",
    "entities",
    "caption",
    "caption_entities",
)
MAX_MESSAGE_CHARS = 4096
WEBHOOK_PATH = "/telegram/webhook"  # when TELEGRAM_WEBHOOK_URL has no path of its own
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
POLL_TIMEOUT_S = 25
# Long polling is one worker's job (Telegram allows one getUpdates at a time): it holds a lease, renewed
# before every call; when that worker dies, another takes over within this time.
POLLING, POLL_LEASE_S = "polling", POLL_TIMEOUT_S + 15.0
TYPING_EVERY_S = 4.5  # Telegram shows a chat action for 5 s
DRAFT_EVERY_S = 0.3  # drafts animate between texts; more often than this shows nothing more
_draft_ids = itertools.count(1)  # a draft id is any non-zero number, one per answer
# Telegram's flood limits as aiolimiter buckets, (burst, seconds to refill it). A bucket lets `burst`
# through at once, then refills evenly, so they are sized for no window to go over a limit: at most 20
# messages in any minute per group (4 + 16), 30 in any second overall (5 + 25). A chat gets one a
# second, with the short bursts Telegram allows (a split answer goes out at once).
CHAT_RATE = (3, 3.0)
GROUP_RATE = (4, 15.0)
OVERALL_RATE = (5, 0.2)
NETWORK_RETRIES = 6
RETRY_BACKOFF = BackoffConfig(min_delay=0.5, max_delay=30.0, factor=2.0, jitter=0.1)
# Telegram will never accept these replies, so retrying the update is pointless.
PERMANENT_ERRORS = (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNotFound,
    TelegramMigrateToChat,
    TelegramEntityTooLarge,
)


class Texts:
    """Telegram's own canned replies: (English, Chinese), picked by the user's Telegram language."""

    START = (
        "Hello! I'm the customer-service assistant. Type your question and I'll answer right away.",
        "您好!我是客服助手,请直接输入您的问题。",
    )
    HELP = (
        'Type your question as a text message; /reset starts a new conversation; ask for a person ("human") '
        "any time. In a group, mention me or reply to my message.\nAgents: react 👍 or 👎 to an answer to rate "
        "it, or reply to it with /fix <corrected answer>; in the agents' chat, reply to a handed-off customer's "
        "message to answer them and with /release to give them back to the bot. Admins: /role <who> <role>.",
        "直接输入您的问题即可;/reset 开始新的对话;随时可以发送“人工”转接人工客服。在群组中请 @我 或回复我的消息。\n"
        "客服人员:对回答点 👍 或 👎 进行评价,或回复该回答并发送 /fix <正确回答> 进行更正;在客服群中回复转人工客户的"
        "消息即可回复客户,回复 /release 将对话交还给机器人。管理员:/role <用户> <角色>。",
    )
    NOT_TEXT = (
        "Sorry, I can only read text messages. Please type your question.",
        "抱歉,我只能阅读文字消息,请输入您的问题。",
    )


def conversation_id(message: Message) -> str:
    """The chat, and the forum topic within it where there is one (replies in ordinary supergroups
    carry a message_thread_id too, but they continue the same conversation)."""
    if message.is_topic_message and message.message_thread_id:
        return f"{message.chat.id}:{message.message_thread_id}"
    return str(message.chat.id)


def replay_fields(update: dict[str, Any]) -> dict[str, Any]:
    """What handling an update needs: ids, chat, sender, text and entities, the quoted message's ids. Not
    photos, files, contacts, locations, or the text of the message it replies to."""
    kept: dict[str, Any] = {"update_id": update["update_id"]}
    for kind in ("message_reaction", "stopped_message_generation"):
        if isinstance(update.get(kind), dict):
            kept[kind] = update[kind]
    message = update.get("message")
    if isinstance(message, dict):
        kept["message"] = {k: message[k] for k in MESSAGE_FIELDS if k in message}
        quoted = message.get("reply_to_message")
        if isinstance(quoted, dict):
            kept["message"]["reply_to_message"] = {
                k: quoted[k] for k in ("message_id", "date", "chat", "from") if k in quoted
            }
    return kept


def reaction_emojis(reactions: list[Any]) -> list[str]:
    """Plain emoji reactions only: custom emoji and paid stars rate nothing."""
    return [r.emoji for r in reactions if isinstance(r, ReactionTypeEmoji)]


class _RawGetUpdates(GetUpdates):
    """getUpdates keeping each update as Telegram's JSON: stored verbatim and parsed one at a time, so
    an update aiogram cannot parse is dropped alone instead of stalling the queue."""

    __returning__ = list[dict[str, Any]]


class FloodControl(BaseRequestMiddleware):
    """Every request but getUpdates: messages stay within Telegram's flood limits, a 429 is waited out
    and the request sent again, network and server errors are retried with backoff (aiogram has no
    such middleware of its own)."""

    def __init__(self) -> None:
        self.overall = AsyncLimiter(*OVERALL_RATE)
        self.chats: LRUCache[str, AsyncLimiter] = LRUCache(maxsize=10_000)

    def _chat(self, chat_id: int | str) -> AsyncLimiter:
        key = str(chat_id)
        limiter = self.chats.get(key)
        if limiter is None:  # group and channel ids are negative, private chats' positive
            limiter = self.chats[key] = AsyncLimiter(*(GROUP_RATE if key.startswith("-") else CHAT_RATE))
        return limiter

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: TelegramBot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        if method.__api_method__ == GetUpdates.__api_method__:  # the polling loop has its own retries
            return await make_request(bot, method)
        if isinstance(method, (SendMessage, EditMessageText)) and method.chat_id is not None:
            await self._chat(method.chat_id).acquire()
            await self.overall.acquire()
        backoff = Backoff(RETRY_BACKOFF)
        while True:
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as exc:
                log.warning("Telegram flood limit on %s; sending again in %d s", method.__api_method__, exc.retry_after)
                await asyncio.sleep(exc.retry_after)
            except (TelegramNetworkError, TelegramServerError) as exc:
                if backoff.counter >= NETWORK_RETRIES:
                    raise
                log.warning(
                    "Telegram %s failed (%s); retrying in %.1f s",
                    method.__api_method__,
                    exc.message,
                    backoff.next_delay,
                )
                await backoff.asleep()


class GenerationStopped(Exception):
    """The customer pressed the draft's stop button: raised to the pipeline, which stops generating."""


class DraftStream(StreamedMessage):
    """A private chat's answer while it is generated: Telegram's message draft (sendMessageDraft), an
    animated preview that the final message, sent as usual, replaces.

    The draft has a stop button (can_stop). Pressing it (`stop`, from a stopped_message_generation update)
    only sets a flag; the next text the pipeline streams finds it: the text shown so far (already filtered)
    is sent as a message, so that the customer keeps it, and GenerationStopped tells the pipeline to stop,
    which stores the turn as cancelled; `finish` then links that message to the turn. Everything after a
    stop happens on the answer's own path, so a stop can never race the final reply into a second message.
    A stop after the last streamed text changes nothing: the answer is complete, and is sent as usual."""

    def __init__(self, channel: TelegramChannel, place: Place) -> None:
        super().__init__(channel, place)
        self.tg = channel.tg
        self.draft_id = next(_draft_ids)
        self.stopped = False
        self._sent: list[str] = []  # the message(s) with the text shown when it was stopped

    def stop(self) -> None:
        self.stopped = True

    async def show(self, text: str) -> None:
        if self.stopped:
            await self._keep_shown()
            raise GenerationStopped(f"the customer stopped draft {self.draft_id}")
        now = time.monotonic()
        if now - self._edited_at < DRAFT_EVERY_S or len(text) > MAX_MESSAGE_CHARS:
            return
        try:
            await self.tg.send_message_draft(
                int(self.place.chat_id),
                self.draft_id,
                text=text,
                message_thread_id=int(self.place.thread) if self.place.thread else None,
                can_stop=True,
                keep_on_stop=True,  # it stays until the message with its text replaces it
            )
        except TelegramAPIError as exc:  # a courtesy: the final message still goes out
            log.info("Telegram draft failed: %s", exc.message)
            return
        self.text, self._edited_at = text, now

    async def _keep_shown(self) -> None:
        """Send what the draft showed as a message (once; the turn is linked in `finish`)."""
        if self.message_id is None and self.text:
            self._sent = await self.channel.send(self.place, self.text)
            self.message_id = self._sent[0]

    async def finish(self, text: str, turn_id: int | None) -> None:
        """After a stop: the shown text is in the chat already; it is the turn's answer message."""
        if turn_id is not None and self._sent:
            for message_id in self._sent:
                await self.channel.service.link_answer(self.place.chat_id, message_id, turn_id)
            await self.channel.answer_shown(self.place, self._sent[-1], split_text(self.text, MAX_MESSAGE_CHARS)[-1])


class TelegramChannel(ChatChannel):
    name = CHANNEL
    text_limit = MAX_MESSAGE_CHARS
    fix_command = "/fix"
    release_command = "/release"
    role_command = "/role"

    def __init__(self, service: ChannelService, settings: TelegramSettings) -> None:
        agents = Place(str(settings.agent_chat_id)) if settings.agent_chat_id is not None else None
        super().__init__(service, settings.reaction_ratings or DEFAULT_REACTIONS, agents)
        self.settings = settings
        api = TelegramAPIServer.from_base(settings.api_base) if settings.api_base else PRODUCTION
        session = AiohttpSession(api=api)
        session.middleware(FloodControl())
        try:
            self.tg = TelegramBot(settings.bot_token, session=session)
        except TokenValidationError:
            raise ConfigError("config error: TELEGRAM_BOT_TOKEN: not a bot token (<digits>:<secret>)") from None
        self.dp = Dispatcher(disable_fsm=True)
        self.dp.include_router(self._router())
        self._poller: asyncio.Task[None] | None = None
        # The draft of the answer being generated in each private chat (one at a time: a chat's updates
        # are handled in order), which its stop button stops.
        self._drafts: dict[str, DraftStream] = {}

    # --- start and stop -----------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        if self.settings.webhook_url:
            app.router.add_post(urlsplit(self.settings.webhook_url).path or WEBHOOK_PATH, self.webhook)

    async def start(self) -> None:
        me = await self.tg.me()
        if self.settings.webhook_url:
            await self.tg.set_webhook(
                self.settings.webhook_url, secret_token=self.settings.webhook_secret, allowed_updates=ALLOWED_UPDATES
            )
        else:
            await self.tg.delete_webhook()  # getUpdates refuses to work while a webhook is set
        await super().start()
        if not self.settings.webhook_url:
            self._poller = asyncio.create_task(self._poll())
        log.info("Telegram bot @%s ready (%s)", me.username, "webhook" if self.settings.webhook_url else "long polling")

    async def stop(self) -> None:
        if self._poller:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            await self.service.let_go(POLLING)  # another worker may poll at once
        await super().stop()
        await self.tg.session.close()

    # --- receiving ----------------------------------------------------------------------------------

    async def webhook(self, request: web.Request) -> web.Response:
        expected = self.settings.webhook_secret
        given = request.headers.get(SECRET_HEADER, "")
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            await self.rejected("wrong or missing secret token")
            return web.Response(status=401)
        try:
            payload = await request.json()
        except ValueError:
            log.warning("Telegram webhook call rejected: the body is not JSON")
            return web.Response(status=400)
        if await self._receive(payload) is None:
            return web.Response(status=400)
        return web.Response()  # recorded: Telegram may forget it now

    async def _poll(self) -> None:
        offset: int | None = None
        backoff = Backoff(RETRY_BACKOFF)
        while True:
            try:
                if not await self.service.hold(POLLING, POLL_LEASE_S):
                    offset = None  # the next time this worker polls, Telegram resends what nobody confirmed
                    await asyncio.sleep(POLL_LEASE_S / 3)
                    continue
                # A call with a higher offset confirms everything below it, so it only ever passes recorded updates.
                updates = await self.tg(
                    _RawGetUpdates(offset=offset, timeout=POLL_TIMEOUT_S, allowed_updates=ALLOWED_UPDATES),
                    request_timeout=POLL_TIMEOUT_S + 10,
                )
                for payload in updates:
                    update_id = await self._receive(payload)
                    if update_id is not None:
                        offset = max(offset or 0, update_id + 1)
                backoff.reset()
            except TelegramRetryAfter as exc:
                await asyncio.sleep(exc.retry_after)
            except Exception as exc:  # Telegram unreachable, token revoked, store busy: keep trying
                log.warning(
                    "getUpdates failed (%s: %s); retrying in %.1f s", type(exc).__name__, exc, backoff.next_delay
                )
                await backoff.asleep()

    async def _receive(self, payload: Any) -> int | None:
        """Record an update and start handling it; its update_id, or None when it has none."""
        update_id = payload.get("update_id") if isinstance(payload, dict) else None
        if type(update_id) is not int:
            log.warning("ignoring a Telegram update without an update_id")
            return None
        await self.receive(str(update_id), replay_fields(payload))
        return update_id

    def conversation_of(self, payload: dict[str, Any]) -> str | None:
        """The chat: answers keep their order, and a reaction waits for its answer's link. A stop has none:
        it must reach the answer it stops while that is still being generated, not wait behind it."""
        event = payload.get("message") or payload.get("message_reaction")
        chat = event.get("chat") if isinstance(event, dict) else None
        return str(chat.get("id")) if isinstance(chat, dict) else None

    def is_permanent(self, error: Exception) -> bool:
        return isinstance(error, PERMANENT_ERRORS)

    async def handle_event(self, payload: dict[str, Any]) -> None:
        try:
            update = Update.model_validate(payload, context={"bot": self.tg})
        except ValidationError as exc:
            log.warning("ignoring Telegram update %s: %s", payload.get("update_id"), exc.errors()[0]["msg"])
            return
        await self.dp.feed_update(self.tg, update)

    # --- sending ------------------------------------------------------------------------------------

    async def post(self, place: Place, text: str, first: bool) -> str:
        quote = place.reply_to if first else None  # the first part answers the question
        reply = ReplyParameters(message_id=int(quote), allow_sending_without_reply=True) if quote else None
        sent = await self.tg.send_message(
            int(place.chat_id),
            text,
            reply_parameters=reply,
            message_thread_id=int(place.thread) if place.thread else None,
        )
        return str(sent.message_id)

    def streamer(self, place: Place) -> StreamedMessage | None:
        """Private chats (positive ids) stream as drafts, with a stop button; groups post and edit (the
        base's way)."""
        if int(place.chat_id) <= 0:
            return super().streamer(place)
        draft = self._drafts[place.chat_id] = DraftStream(self, place)
        return draft

    async def edit(self, place: Place, message_id: str, text: str) -> None:
        await self.tg.edit_message_text(text=text, chat_id=int(place.chat_id), message_id=int(message_id))

    async def mirror_turn(self, turn: StoredTurn, who: str) -> None:
        """The question, then the answer quoting it; a reaction or /fix on the answer rates the turn."""
        assert self.agents_room is not None
        [question_id, *_] = await self.send(self.agents_room, f"❓ {who}:\n{turn.user_text}")
        await self.send(Place(self.agents_room.chat_id, reply_to=question_id), f"🤖 {turn.answer}", turn.id)

    def place_for(self, conversation_id: str) -> Place:
        chat_id, _, topic = conversation_id.partition(":")  # see conversation_id()
        return Place(chat_id, topic or None)

    @staticmethod
    def place_of(message: Message) -> Place:
        """In groups an answer quotes its question; in forum topics it stays in the topic."""
        group = message.chat.type != ChatType.PRIVATE
        return Place(
            str(message.chat.id),
            str(message.message_thread_id) if message.is_topic_message else None,
            str(message.message_id) if group else None,
        )

    async def _say(self, message: Message, texts: tuple[str, str]) -> None:
        language = message.from_user.language_code if message.from_user else None
        await self.send(self.place_of(message), pick_language(texts, language=language or "en"))

    @contextlib.asynccontextmanager
    async def _typing(self, message: Message) -> AsyncIterator[None]:
        thread_id = message.message_thread_id if message.is_topic_message else None

        async def keep_typing() -> None:
            while True:
                try:
                    await self.tg.send_chat_action(message.chat.id, ChatAction.TYPING, message_thread_id=thread_id)
                except TelegramAPIError as exc:  # only a courtesy: never let it hold up the answer
                    log.debug("typing indicator failed: %s", exc.message)
                await asyncio.sleep(TYPING_EVERY_S)

        task = asyncio.create_task(keep_typing())
        try:
            yield
        finally:
            task.cancel()

    # --- handlers -----------------------------------------------------------------------------------

    def _router(self) -> Router:
        router = Router(name=CHANNEL)
        router.message.filter(_from_person)
        router.message.register(self.on_start, CommandStart())
        router.message.register(self.on_help, Command("help"))
        router.message.register(self.on_reset, Command("reset"))
        router.message.register(self.on_fix, Command("fix"))
        router.message.register(self.on_release, Command("release"))
        router.message.register(self.on_role, Command("role"))
        router.message.register(self.on_agent_reply, F.text, self._replies_in_agents_room)
        router.message.register(self.on_text, F.text, self._addressed)
        router.message.register(self.on_other, self._addressed)
        router.message_reaction.register(self.on_reaction)
        router.stopped_message_generation.register(self.on_stop)
        return router

    async def _addressed(self, message: Message) -> bool:
        """Private chats: always. Groups: when the bot is mentioned or replied to; in the agents' chat
        a reply to the bot is about a mirrored conversation, so only a mention asks the bot."""
        if message.chat.type == ChatType.PRIVATE:
            return True
        me = await self.tg.me()
        replied = message.reply_to_message
        if (
            replied
            and replied.from_user
            and replied.from_user.id == me.id
            and not self.in_agents_room(str(message.chat.id))
        ):
            return True
        text = message.text or message.caption or ""
        for entity in message.entities or message.caption_entities or []:
            if entity.type == "mention" and entity.extract_from(text).lower() == f"@{me.username}".lower():
                return True
            if entity.type == "text_mention" and entity.user and entity.user.id == me.id:
                return True
        return False

    def _replies_in_agents_room(self, message: Message) -> bool:
        """A reply to one of the bot's messages in the agents' room: an agent answering a customer."""
        quoted = message.reply_to_message
        return quoted is not None and self.in_agents_room(str(message.chat.id))

    async def on_start(self, message: Message) -> None:
        await self._say(message, Texts.START)

    async def on_help(self, message: Message) -> None:
        await self._say(message, Texts.HELP)

    async def on_reset(self, message: Message) -> None:
        await self._answer(message, "/reset")  # the pipeline starts the new session

    async def on_text(self, message: Message) -> None:
        me = await self.tg.me()
        text = re.sub(rf"@{re.escape(me.username or '')}\b", "", message.text or "", flags=re.IGNORECASE)
        await self._answer(message, text.strip())

    async def on_other(self, message: Message) -> None:
        await self._say(message, Texts.NOT_TEXT)

    async def _answer(self, message: Message, text: str) -> None:
        user = message.from_user
        assert user is not None  # _from_person
        incoming = UserMessage(
            CHANNEL, conversation_id(message), str(user.id), f"{message.chat.id}:{message.message_id}", text
        )
        private = message.chat.type == ChatType.PRIVATE
        place = self.place_of(message)
        try:
            async with self._typing(message):
                await self.answer(incoming, place, f"{user.full_name} (telegram:{user.id})", private)
        finally:
            self._drafts.pop(place.chat_id, None)  # answered (or failed): its stop button stops nothing now

    async def on_fix(self, message: Message, command: CommandObject) -> None:
        assert message.from_user is not None
        target = message.reply_to_message
        chat_id = str(message.chat.id)
        turn_id = await self.service.answer_for(chat_id, str(target.message_id)) if target else None
        reply = await self.fix(
            turn_id, str(message.from_user.id), command.args or "", chat_id, message.from_user.language_code or "en"
        )
        await self.send(self.place_of(message), reply)

    async def on_agent_reply(self, message: Message) -> None:
        assert message.from_user is not None and message.reply_to_message is not None
        problem = await self.agent_says(
            str(message.chat.id),
            str(message.reply_to_message.message_id),
            str(message.from_user.id),
            message.text or "",
            str(message.message_id),
        )
        if problem:
            await self.send(self.place_of(message), problem)

    async def on_release(self, message: Message) -> None:
        assert message.from_user is not None
        quoted = message.reply_to_message
        reply = await self.release(
            str(message.chat.id),
            str(quoted.message_id) if quoted else None,
            str(message.from_user.id),
            message.from_user.language_code or "en",
        )
        await self.send(self.place_of(message), reply)

    async def on_role(self, message: Message, command: CommandObject) -> None:
        assert message.from_user is not None
        reply = await self.change_role(
            str(message.from_user.id), command.args or "", message.from_user.language_code or "en"
        )
        await self.send(self.place_of(message), reply)

    async def on_reaction(self, event: MessageReactionUpdated) -> None:
        if event.user is None or event.user.is_bot:  # anonymous admins react as a chat: nobody to credit
            return
        old = [e for e in reaction_emojis(event.old_reaction) if self.rating_of(e) is not None]
        new = [e for e in reaction_emojis(event.new_reaction) if self.rating_of(e) is not None]
        if not old and not new:
            return
        # The newest rating reaction counts; with none left, the rating is withdrawn.
        added = [e for e in new if e not in old]
        latest = (added or new)[-1:]
        await self.rate_reaction(
            str(event.chat.id), str(event.message_id), str(event.user.id), self.rating_of(latest[0]) if latest else None
        )

    async def on_stop(self, event: MessageGenerationStopped) -> None:
        """The customer pressed a draft's stop button: that answer stops, if it is still being generated."""
        draft = self._drafts.get(str(event.chat.id))
        if draft is None or draft.draft_id != event.draft_id:
            log.info(
                "Telegram: stop for draft %d in chat %d, which is not being generated", event.draft_id, event.chat.id
            )
            return
        draft.stop()


def _from_person(message: Message) -> bool:
    """Not another bot, not a channel or an anonymous admin speaking as a chat."""
    return message.from_user is not None and not message.from_user.is_bot and message.sender_chat is None
