"""Slack channel (slack-bolt): the Events API on /slack/events, or Socket Mode with SLACK_APP_TOKEN.

Direct messages are answered at once; in channels the bot answers when mentioned and then follows
that thread. Every event is recorded in the store's inbox before it is acknowledged, so a Slack retry
(or a restart) never produces a second answer and nothing acknowledged is lost. Agents (AGENT_IDS
entries `slack:<user id>`) rate answers with reactions and correct them with `!fix <answer>`.
"""
from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (AsyncConnectionErrorRetryHandler,
                                                         AsyncRateLimitErrorRetryHandler)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from bot.app import Bot
from bot.config import SlackSettings
from bot.feedback import NotAllowed
from bot.message import BotReply, UserMessage

CHANNEL = "slack"
log = logging.getLogger(__name__)
TEXT_LIMIT = 4000  # Slack's advice for the length of a message's text
STOP_GRACE_S = 10.0
HANDLED_EVENTS = {"message", "app_mention", "reaction_added", "reaction_removed"}
# Plain messages, and messages with files; edits, deletions and the like are not questions.
ANSWERED_SUBTYPES = {None, "file_share", "thread_broadcast"}
BOUNDARY = re.compile(r"\n|[。！？；]|[.!?;](?=\s)")
FIX = re.compile(r"!fix\b\s*(.*)", re.DOTALL)


def split_text(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """Parts of at most `limit` characters, cut after the last line or sentence end that fits."""
    parts = []
    while len(text) > limit:
        ends = [m.end() for m in BOUNDARY.finditer(text, 0, limit)]
        cut = ends[-1] if ends else limit
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    return [p for p in [*parts, text] if p]


def escape(text: str) -> str:
    """Slack reads &, < and > in message text as markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


class SlackChannel:
    name = CHANNEL

    def __init__(self, bot: Bot, settings: SlackSettings) -> None:
        self.bot = bot
        self.settings = settings
        self.ratings = settings.reaction_ratings
        base_url = settings.api_base.rstrip("/") + "/" if settings.api_base else AsyncWebClient.BASE_URL
        # 429s are waited out (Retry-After) and dropped connections retried by slack_sdk itself.
        self.client = AsyncWebClient(token=settings.bot_token, base_url=base_url, retry_handlers=[
            AsyncConnectionErrorRetryHandler(max_retry_count=3), AsyncRateLimitErrorRetryHandler(max_retry_count=10)])
        # Bolt verifies signatures (and rejects timestamps over 5 minutes old), answers url_verification
        # and drops the bot's own events; `_receive` does the rest.
        self.app = AsyncApp(client=self.client, signing_secret=settings.signing_secret)
        self.app.middleware(self._receive)
        self.socket = AsyncSocketModeHandler(self.app, settings.app_token) if settings.app_token else None
        self._bot_user_id = ""
        self._tasks: set[asyncio.Task] = set()

    def add_routes(self, app: web.Application) -> None:
        if self.settings.signing_secret:  # without it no request could be verified
            app.router.add_post("/slack/events", self.events)

    async def start(self) -> None:
        # Events recorded but not answered before a crash or stop.
        for key, body in await self.bot.store.inbox_pending(CHANNEL):
            self._spawn(key, body)
        if self.socket:
            await self.socket.connect_async()

    async def stop(self) -> None:
        if self.socket:
            await self.socket.close_async()
        # Answers in flight may finish; what is still running then stays in the inbox and is
        # answered on the next start.
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_GRACE_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def events(self, request: web.Request) -> web.Response:
        try:
            bolt_request = await to_bolt_request(request)
        except (ValueError, TypeError, AttributeError):  # bolt could not read the body
            if not SignatureVerifier(self.settings.signing_secret).is_valid_request(await request.text(),
                                                                                     request.headers):
                return web.json_response({"error": "invalid request"}, status=401)
            log.warning("slack: ignoring a request whose body is not a Slack payload")
            return web.Response(status=200)  # so that Slack does not retry it
        return await to_aiohttp_response(await self.app.async_dispatch(bolt_request))

    # --- receiving: record, acknowledge, then work ---------------------------------------------

    async def _receive(self, body: dict[str, Any]) -> BoltResponse:
        """Bolt middleware, run after bolt's own checks for HTTP and Socket Mode alike. It never passes
        the request on: the response it returns is the acknowledgement."""
        event = body.get("event")
        kind = event.get("type") if isinstance(event, dict) else None
        key = body.get("event_id")
        if body.get("type") != "event_callback" or kind not in HANDLED_EVENTS or not isinstance(key, str):
            log.info("slack: ignored a request of type %s (event type %s)", body.get("type"), kind)
        elif await self.bot.store.inbox_add(CHANNEL, key, body):
            self._spawn(key, body)
        else:
            log.info("slack: event %s delivered again: already recorded", key)
        return BoltResponse(status=200, body="")

    def _spawn(self, key: str, body: dict[str, Any]) -> None:
        task = asyncio.create_task(self._work(key, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _work(self, key: str, body: dict[str, Any]) -> None:
        event = body["event"]
        try:
            if event["type"] in ("reaction_added", "reaction_removed"):
                await self._on_reaction(event)
            else:
                await self._on_message(event, mentioned=event["type"] == "app_mention")
        except SlackApiError as exc:
            status = exc.response.status_code
            if status == 429 or status >= 500:
                log.warning("slack: event %s not answered yet (%s); retried on the next start", key, status)
                return
            # Slack refused for good (e.g. not_in_channel): trying again would not help.
            log.warning("slack: event %s could not be answered: %s", key, exc.response.get("error"))
        except Exception:
            log.exception("slack: event %s failed; retried on the next start", key)
            return
        await self.bot.store.inbox_done(CHANNEL, key)

    # --- messages ------------------------------------------------------------------------------

    async def _on_message(self, event: dict[str, Any], mentioned: bool) -> None:
        user, channel, ts = event.get("user"), event.get("channel"), event.get("ts")
        if event.get("bot_id") or event.get("subtype") not in ANSWERED_SUBTYPES or not (user and channel and ts):
            return
        bot_user = await self._bot_user()
        if user == bot_user:
            return
        raw = event.get("text") or ""
        thread_ts = event.get("thread_ts")
        is_dm = event.get("channel_type") == "im"
        fix = FIX.match(raw.strip())
        if fix and not mentioned and (thread_ts or is_dm):
            await self._on_fix(user, channel, thread_ts, unescape(fix.group(1)).strip())
            return
        if not mentioned and not is_dm:
            # In channels: only threads the bot is in; a message mentioning it arrives as app_mention too.
            if not thread_ts or f"<@{bot_user}" in raw or not await self._following(channel, thread_ts):
                return
        text = unescape(re.sub(rf"<@{bot_user}(\|[^>]*)?>", "", raw)).strip()
        # A DM is one conversation; a thread (or a mention, which starts one) is its own.
        conversation = channel if is_dm and not thread_ts else f"{channel}:{thread_ts or ts}"
        reply_in = None if is_dm and not thread_ts else thread_ts or ts
        reply = await self.bot.dialogue.handle(UserMessage(CHANNEL, conversation, user, f"{channel}:{ts}", text))
        if not await self._already_posted(reply, channel):
            await self._post(channel, escape(reply.text), reply_in, reply.turn_id)
        agents = self.settings.agent_channel
        if is_dm and agents and reply.turn_id is not None and not await self._already_posted(reply, agents):
            await self._mirror(user, reply.turn_id)

    async def _already_posted(self, reply: BotReply, channel: str) -> bool:
        """A replay after a crash may find its answer posted already: it must not be posted twice."""
        return (reply.duplicate and reply.turn_id is not None
                and await self.bot.store.answer_was_sent(CHANNEL, channel, reply.turn_id))

    async def _following(self, channel: str, thread_ts: str) -> bool:
        """The bot follows a thread once it has answered there: asking the store survives restarts."""
        return await self.bot.store.latest_turn(CHANNEL, f"{channel}:{thread_ts}") is not None

    async def _mirror(self, user: str, turn_id: int) -> None:
        """Show the DM question and answer in the agents' channel, where they can rate and correct it."""
        turn = await self.bot.store.turn(turn_id)
        assert turn is not None
        text = f"<@{user}> asked: {escape(turn.user_text)}\n\n{escape(turn.answer)}"
        try:
            await self._post(self.settings.agent_channel, text, None, turn_id)
        except Exception as exc:  # the customer has the answer: a failed mirror must not make it repeat
            log.warning("slack: could not mirror turn %d to the agents' channel: %r", turn_id, exc)

    async def _post(self, channel: str, text: str, thread_ts: str | None, turn_id: int | None = None) -> None:
        for part in split_text(text):
            posted = await self.client.chat_postMessage(channel=channel, text=part, thread_ts=thread_ts)
            if turn_id is not None:  # every part, so a reaction on any of them rates the answer
                await self.bot.store.link_answer_message(CHANNEL, channel, posted["ts"], turn_id)

    async def _bot_user(self) -> str:
        if not self._bot_user_id:
            self._bot_user_id = (await self.client.auth_test())["user_id"]
        return self._bot_user_id

    # --- feedback ------------------------------------------------------------------------------

    async def _on_fix(self, user: str, channel: str, thread_ts: str | None, correction: str) -> None:
        turn_id = await self._answer_before(channel, thread_ts)
        if turn_id is None:
            text = "I can't find an answer of mine to correct here."
        else:
            try:
                await self.bot.feedback.correct(turn_id, f"{CHANNEL}:{user}", correction)
                text = "Thanks, the correction is saved."
            except NotAllowed:
                text = "Sorry, only agents can correct my answers."
            except ValueError:
                text = "Please write the corrected answer after !fix."
        await self._post(channel, text, thread_ts)

    async def _answer_before(self, channel: str, thread_ts: str | None) -> int | None:
        """The answer a !fix refers to: a mirrored answer at the thread's root, else the latest answer
        in that thread (or DM)."""
        if thread_ts:
            turn_id = await self.bot.store.turn_for_answer_message(CHANNEL, channel, thread_ts)
            if turn_id is not None:
                return turn_id
        turn = await self.bot.store.latest_turn(CHANNEL, f"{channel}:{thread_ts}" if thread_ts else channel)
        return turn.id if turn else None

    async def _on_reaction(self, event: dict[str, Any]) -> None:
        item, user = event.get("item") or {}, event.get("user")
        rating = self.ratings.get(str(event.get("reaction", "")).split("::")[0])
        if rating is None or not user or item.get("type") != "message":
            return
        turn_id = await self.bot.store.turn_for_answer_message(CHANNEL, str(item.get("channel")), str(item.get("ts")))
        if turn_id is None:  # not one of the bot's answers
            return
        sender = f"{CHANNEL}:{user}"
        if event["type"] == "reaction_added":
            await self.bot.feedback.rate(turn_id, sender, rating)
        elif any(r["rater"] == sender and r["rating"] == rating for r in await self.bot.store.ratings(turn_id)):
            await self.bot.feedback.rate(turn_id, sender, None)
