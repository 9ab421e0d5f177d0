"""Telegram channel (aiogram 3): customers chat with the bot, agents rate answers with reactions
and correct them with /fix.

Nothing is lost or answered twice: every update is written to the store's inbox before Telegram
may consider it delivered (before the next getUpdates offset passes it, or before the webhook call
returns 200), and marked done only after its reply went out. Updates a crash left pending are
replayed at the next start; for a message already answered the pipeline's deduplication returns
the stored answer, which is then sent. aiogram's own polling confirms updates before the handlers
finish (aiogram issue #1397), hence the small polling loop here.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import weakref
from collections.abc import AsyncIterator, Coroutine
from typing import Any
from urllib.parse import urlsplit

from aiogram import Bot as TelegramBot
from aiogram import Dispatcher, F, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.client.telegram import PRODUCTION, TelegramAPIServer
from aiogram.enums import ChatAction, ChatType
from aiogram.exceptions import (TelegramAPIError, TelegramBadRequest, TelegramEntityTooLarge, TelegramForbiddenError,
                                TelegramMigrateToChat, TelegramNetworkError, TelegramNotFound, TelegramRetryAfter,
                                TelegramServerError)
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.methods import GetUpdates, SendMessage, TelegramMethod
from aiogram.methods.base import Response, TelegramType
from aiogram.types import Message, MessageReactionUpdated, ReactionTypeEmoji, ReplyParameters, Update, User
from aiogram.utils.backoff import Backoff, BackoffConfig
from aiogram.utils.token import TokenValidationError
from aiohttp import web
from aiolimiter import AsyncLimiter
from cachetools import LRUCache
from pydantic import ValidationError

from bot.app import Bot
from bot.config import ConfigError, TelegramSettings
from bot.feedback import NotAllowed
from bot.message import BotReply, UserMessage

log = logging.getLogger(__name__)
CHANNEL = "telegram"
# message_reaction updates only come when asked for by name.
ALLOWED_UPDATES = ["message", "message_reaction"]
# Reaction -> rating; TELEGRAM_REACTIONS replaces it.
DEFAULT_REACTIONS = {"👍": 1, "❤": 1, "🔥": 1, "👏": 1, "👎": -1, "💩": -1, "🤮": -1}
MAX_MESSAGE_CHARS = 4096
WEBHOOK_PATH = "/telegram/webhook"  # when TELEGRAM_WEBHOOK_URL has no path of its own
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
POLL_TIMEOUT_S = 25
TYPING_EVERY_S = 4.5  # Telegram shows a chat action for 5 s
# Telegram's flood limits as aiolimiter buckets, (burst, seconds to refill it). A bucket lets `burst`
# through at once, then refills evenly, so they are sized for no window to go over a limit: at most 20
# messages in any minute per group (4 + 16), 30 in any second overall (5 + 25). A chat gets one a
# second, with the short bursts Telegram allows (a split answer goes out at once).
CHAT_RATE = (3, 3.0)
GROUP_RATE = (4, 15.0)
OVERALL_RATE = (5, 0.2)
NETWORK_RETRIES = 6
RETRY_BACKOFF = BackoffConfig(min_delay=0.5, max_delay=30.0, factor=2.0, jitter=0.1)
STOP_GRACE_S = 5.0
# Telegram will never accept these replies, so retrying the update at the next start is pointless.
PERMANENT_ERRORS = (TelegramBadRequest, TelegramForbiddenError, TelegramNotFound, TelegramMigrateToChat,
                    TelegramEntityTooLarge)
SENTENCE_END = re.compile(r"[。!?;…]|[.!?;](?=\s)")


class Texts:
    """Canned replies: (English, Chinese), picked by the user's Telegram language."""
    START = ("Hello! I'm the customer-service assistant. Type your question and I'll answer right away.",
             "您好!我是客服助手,请直接输入您的问题。")
    HELP = ("Type your question as a text message; /reset starts a new conversation. In a group, mention me or "
            "reply to my message.\nAgents: react 👍 or 👎 to an answer to rate it, or reply to it with "
            "/fix <corrected answer>.",
            "直接输入您的问题即可;/reset 开始新的对话。在群组中请 @我 或回复我的消息。\n"
            "客服人员:对回答点 👍 或 👎 进行评价,或回复该回答并发送 /fix <正确回答> 进行更正。")
    NOT_TEXT = ("Sorry, I can only read text messages. Please type your question.",
                "抱歉,我只能阅读文字消息,请输入您的问题。")
    FIX_USAGE = ("Reply to one of my answers with /fix followed by the corrected answer.",
                 "请回复我的某条回答,并发送 /fix 加上正确的回答。")
    FIX_REFUSED = ("Sorry, only agents can correct answers.", "抱歉,只有客服人员可以更正回答。")
    FIX_SAVED = ("Thanks, the correction is saved.", "谢谢,更正已保存。")


def split_text(text: str, limit: int = MAX_MESSAGE_CHARS) -> list[str]:
    """Cut `text` into parts Telegram accepts: at a line break, else a sentence end, else a space in
    the second half of each part; a hard cut only where there is none of them."""
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
    """How many characters of `text` fit in `limit` UTF-16 code units (the stricter way to count)."""
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


def conversation_id(message: Message) -> str:
    """The chat, and the forum topic within it where there is one (replies in ordinary supergroups
    carry a message_thread_id too, but they continue the same conversation)."""
    if message.is_topic_message and message.message_thread_id:
        return f"{message.chat.id}:{message.message_thread_id}"
    return str(message.chat.id)


def reaction_emojis(reactions: list[Any]) -> list[str]:
    """Plain emoji reactions only (custom emoji and paid stars rate nothing), without variation selectors."""
    return [r.emoji.replace("\ufe0f", "") for r in reactions if isinstance(r, ReactionTypeEmoji)]


def _say(user: User | None, texts: tuple[str, str]) -> str:
    return texts[1] if user and (user.language_code or "").startswith("zh") else texts[0]


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

    async def __call__(self, make_request: NextRequestMiddlewareType[TelegramType], bot: TelegramBot,
                       method: TelegramMethod[TelegramType]) -> Response[TelegramType]:
        if isinstance(method, GetUpdates):  # the polling loop has its own retries
            return await make_request(bot, method)
        if isinstance(method, SendMessage):
            await self._chat(method.chat_id).acquire()
            await self.overall.acquire()
        backoff = Backoff(RETRY_BACKOFF)
        while True:
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as exc:
                log.warning("Telegram flood limit on %s; sending again in %d s", method.__api_method__,
                            exc.retry_after)
                await asyncio.sleep(exc.retry_after)
            except (TelegramNetworkError, TelegramServerError) as exc:
                if backoff.counter >= NETWORK_RETRIES:
                    raise
                log.warning("Telegram %s failed (%s); retrying in %.1f s", method.__api_method__, exc.message,
                            backoff.next_delay)
                await backoff.asleep()


class TelegramChannel:
    name = CHANNEL

    def __init__(self, bot: Bot, settings: TelegramSettings) -> None:
        self.bot = bot
        self.settings = settings
        self.ratings = {e.replace("\ufe0f", ""): r for e, r in (settings.reaction_ratings or DEFAULT_REACTIONS).items()}
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
        self._tasks: set[asyncio.Task[Any]] = set()
        self._active: set[str] = set()  # inbox keys being handled now
        self._stopping = False
        self._locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()

    # --- Channel ------------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        if self.settings.webhook_url:
            app.router.add_post(urlsplit(self.settings.webhook_url).path or WEBHOOK_PATH, self.webhook)

    async def start(self) -> None:
        me = await self.tg.me()
        if self.settings.webhook_url:
            await self.tg.set_webhook(self.settings.webhook_url, secret_token=self.settings.webhook_secret,
                                      allowed_updates=ALLOWED_UPDATES)
        else:
            await self.tg.delete_webhook()  # getUpdates refuses to work while a webhook is set
        pending = await self.bot.store.inbox_pending(CHANNEL)
        if pending:
            log.info("handling %d Telegram updates left pending at the last stop", len(pending))
        for key, payload in pending:
            self._schedule(key, payload)
        if not self.settings.webhook_url:
            self._poller = asyncio.create_task(self._poll())
        log.info("Telegram bot @%s ready (%s)", me.username, "webhook" if self.settings.webhook_url else "long polling")

    async def stop(self) -> None:
        self._stopping = True  # webhook calls from now on are only recorded, for the next start
        if self._poller:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._tasks:  # a moment to finish; whatever is cut off stays in the inbox for the next start
            _, unfinished = await asyncio.wait(set(self._tasks), timeout=STOP_GRACE_S)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        await self.tg.session.close()

    # --- receiving ----------------------------------------------------------------------------------

    async def webhook(self, request: web.Request) -> web.Response:
        expected = self.settings.webhook_secret
        given = request.headers.get(SECRET_HEADER, "")
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            log.warning("Telegram webhook call rejected: wrong or missing secret token")
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
                # A call with a higher offset confirms everything below it, so it only ever passes recorded updates.
                updates = await self.tg(_RawGetUpdates(offset=offset, timeout=POLL_TIMEOUT_S,
                                                       allowed_updates=ALLOWED_UPDATES),
                                        request_timeout=POLL_TIMEOUT_S + 10)
                for payload in updates:
                    update_id = await self._receive(payload)
                    if update_id is not None:
                        offset = max(offset or 0, update_id + 1)
                backoff.reset()
            except TelegramRetryAfter as exc:
                await asyncio.sleep(exc.retry_after)
            except Exception as exc:  # Telegram unreachable, token revoked, store busy: keep trying
                log.warning("getUpdates failed (%s: %s); retrying in %.1f s", type(exc).__name__, exc,
                            backoff.next_delay)
                await backoff.asleep()

    async def _receive(self, payload: Any) -> int | None:
        """Record an update and start handling it; its update_id, or None when it has none."""
        update_id = payload.get("update_id") if isinstance(payload, dict) else None
        if type(update_id) is not int:
            log.warning("ignoring a Telegram update without an update_id")
            return None
        key = str(update_id)
        if await self.bot.store.inbox_add(CHANNEL, key, payload):
            self._schedule(key, payload)
        else:
            log.info("Telegram update %s delivered again; it was recorded before", key)
        return update_id

    def _schedule(self, key: str, payload: dict[str, Any]) -> None:
        if key not in self._active and not self._stopping:
            self._active.add(key)
            self._spawn(self._process(key, payload))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process(self, key: str, payload: dict[str, Any]) -> None:
        try:
            await self._handle(key, payload)
            await self.bot.store.inbox_done(CHANNEL, key)
        except Exception:
            log.exception("Telegram update %s failed; it stays in the inbox for the next start", key)
        finally:
            self._active.discard(key)

    async def _handle(self, key: str, payload: dict[str, Any]) -> None:
        try:
            update = Update.model_validate(payload, context={"bot": self.tg})
        except ValidationError as exc:
            log.warning("ignoring Telegram update %s: %s", key, exc.errors()[0]["msg"])
            return
        event = update.message or update.message_reaction
        # One update at a time per chat: answers keep their order, a reaction waits for its answer's link.
        lock = self._lock(event.chat.id) if event else contextlib.nullcontext()
        async with lock:
            try:
                await self.dp.feed_update(self.tg, update)
            except PERMANENT_ERRORS as exc:
                log.warning("Telegram update %s: Telegram refused the reply (%s); not retrying", key, exc.message)

    def _lock(self, chat_id: int) -> asyncio.Lock:
        lock = self._locks.get(chat_id)
        if lock is None:
            lock = self._locks[chat_id] = asyncio.Lock()
        return lock

    # --- sending ------------------------------------------------------------------------------------

    async def send(self, chat_id: int, text: str, turn_id: int | None = None, *, thread_id: int | None = None,
                   reply_to: int | None = None) -> list[int]:
        """Send `text`, split to Telegram's size, linking every part to the answer `turn_id`; the message ids."""
        ids: list[int] = []
        for part in split_text(text):
            quote = reply_to if not ids else None  # the first part answers the question
            reply = ReplyParameters(message_id=quote, allow_sending_without_reply=True) if quote else None
            sent = await self.tg.send_message(chat_id, part, message_thread_id=thread_id, reply_parameters=reply)
            ids.append(sent.message_id)
            if turn_id is not None:
                await self.bot.store.link_answer_message(CHANNEL, str(chat_id), str(sent.message_id), turn_id)
        return ids

    async def _reply(self, message: Message, text: str, turn_id: int | None = None) -> list[int]:
        """In groups an answer quotes its question; in forum topics it stays in the topic."""
        group = message.chat.type != ChatType.PRIVATE
        return await self.send(message.chat.id, text, turn_id,
                               thread_id=message.message_thread_id if message.is_topic_message else None,
                               reply_to=message.message_id if group else None)

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

    async def _mirror(self, message: Message, reply: BotReply) -> None:
        """Show a private chat's question and answer to the agents; their reaction or /fix on the
        mirrored answer rates the original turn."""
        agents = self.settings.agent_chat_id
        assert agents is not None and reply.turn_id is not None and message.from_user is not None
        try:
            turn = await self.bot.store.turn(reply.turn_id)
            question = turn.user_text if turn else message.text or ""
            who = message.from_user
            [question_id, *_] = await self.send(agents, f"❓ {who.full_name} (telegram:{who.id}):\n{question}")
            await self.send(agents, f"🤖 {reply.text}", reply.turn_id, reply_to=question_id)
        except Exception:
            log.exception("could not mirror turn %s to the agents' chat", reply.turn_id)

    # --- handlers -----------------------------------------------------------------------------------

    def _router(self) -> Router:
        router = Router(name=CHANNEL)
        router.message.filter(_from_person)
        router.message.register(self.on_start, CommandStart())
        router.message.register(self.on_help, Command("help"))
        router.message.register(self.on_reset, Command("reset"))
        router.message.register(self.on_fix, Command("fix"))
        router.message.register(self.on_text, F.text, self._addressed)
        router.message.register(self.on_other, self._addressed)
        router.message_reaction.register(self.on_reaction)
        return router

    async def _answer_turn(self, chat_id: int, message_id: int) -> int | None:
        return await self.bot.store.turn_for_answer_message(CHANNEL, str(chat_id), str(message_id))

    def _in_agent_chat(self, chat_id: int) -> bool:
        return self.settings.agent_chat_id is not None and chat_id == self.settings.agent_chat_id

    async def _addressed(self, message: Message) -> bool:
        """Private chats: always. Groups: when the bot is mentioned or replied to; in the agents' chat
        a reply to the bot is about a mirrored conversation, so only a mention asks the bot."""
        if message.chat.type == ChatType.PRIVATE:
            return True
        me = await self.tg.me()
        replied = message.reply_to_message
        if replied and replied.from_user and replied.from_user.id == me.id and not self._in_agent_chat(message.chat.id):
            return True
        text = message.text or message.caption or ""
        for entity in message.entities or message.caption_entities or []:
            if entity.type == "mention" and entity.extract_from(text).lower() == f"@{me.username}".lower():
                return True
            if entity.type == "text_mention" and entity.user and entity.user.id == me.id:
                return True
        return False

    async def on_start(self, message: Message) -> None:
        await self._reply(message, _say(message.from_user, Texts.START))

    async def on_help(self, message: Message) -> None:
        await self._reply(message, _say(message.from_user, Texts.HELP))

    async def on_reset(self, message: Message) -> None:
        await self._answer(message, "/reset")  # the pipeline starts the new session

    async def on_text(self, message: Message) -> None:
        me = await self.tg.me()
        text = re.sub(rf"@{re.escape(me.username or '')}\b", "", message.text or "", flags=re.IGNORECASE)
        await self._answer(message, text.strip())

    async def on_other(self, message: Message) -> None:
        await self._reply(message, _say(message.from_user, Texts.NOT_TEXT))

    async def _answer(self, message: Message, text: str) -> None:
        assert message.from_user is not None  # _from_person
        incoming = UserMessage(CHANNEL, conversation_id(message), str(message.from_user.id),
                               f"{message.chat.id}:{message.message_id}", text)
        async with self._typing(message):
            reply = await self.bot.dialogue.handle(incoming)
        resent = reply.duplicate and reply.turn_id is not None and \
            await self.bot.store.answer_was_sent(CHANNEL, str(message.chat.id), reply.turn_id)
        if reply.text and not resent:
            await self._reply(message, reply.text, reply.turn_id)
        if self.settings.agent_chat_id is not None and message.chat.type == ChatType.PRIVATE and reply.turn_id:
            self._spawn(self._mirror(message, reply))  # not on the answer's path: the agents' chat is slower

    async def on_fix(self, message: Message, command: CommandObject) -> None:
        assert message.from_user is not None
        target = message.reply_to_message
        turn_id = await self._answer_turn(message.chat.id, target.message_id) if target else None
        correction = (command.args or "").strip()
        if not turn_id or not correction:
            await self._reply(message, _say(message.from_user, Texts.FIX_USAGE))
            return
        sender = f"{CHANNEL}:{message.from_user.id}"
        try:
            await self.bot.feedback.correct(turn_id, sender, correction, self._in_agent_chat(message.chat.id))
        except NotAllowed:
            log.info("/fix from %s refused: not an agent", sender)
            await self._reply(message, _say(message.from_user, Texts.FIX_REFUSED))
            return
        await self._reply(message, _say(message.from_user, Texts.FIX_SAVED))

    async def on_reaction(self, event: MessageReactionUpdated) -> None:
        if event.user is None or event.user.is_bot:  # anonymous admins react as a chat: nobody to credit
            return
        turn_id = await self._answer_turn(event.chat.id, event.message_id)
        if turn_id is None:
            return  # not one of the bot's answers
        old = [e for e in reaction_emojis(event.old_reaction) if e in self.ratings]
        new = [e for e in reaction_emojis(event.new_reaction) if e in self.ratings]
        if not old and not new:
            return
        # The newest rating reaction counts; with none left, the rating is withdrawn.
        added = [e for e in new if e not in old]
        latest = (added or new or [None])[-1]
        rating = self.ratings[latest] if latest else None
        sender = f"{CHANNEL}:{event.user.id}"
        role = await self.bot.feedback.rate(turn_id, sender, rating, self._in_agent_chat(event.chat.id))
        log.info("%s (%s) rated turn %d: %s", sender, role.value, turn_id, rating)


def _from_person(message: Message) -> bool:
    """Not another bot, not a channel or an anonymous admin speaking as a chat."""
    return message.from_user is not None and not message.from_user.is_bot and message.sender_chat is None
