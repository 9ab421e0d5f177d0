"""Slack channel (slack-bolt): the Events API on /slack/events, or Socket Mode with SLACK_APP_TOKEN.

Direct messages are answered at once; in channels the bot answers when mentioned and then follows
that thread. Every event is recorded before it is acknowledged (see `adapters.base`), so a Slack retry (or a
restart) never produces a second answer and nothing acknowledged is lost. Agents (AGENT_IDS
entries `slack:<user id>`) rate answers with reactions and correct them with `!fix <answer>`.

Answers in a thread are streamed with Slack's streaming methods (chat.startStream / appendStream /
stopStream, through slack_sdk's `chat_stream` helper); where those are not available (a DM outside a
thread, a workspace or place that refuses them) an answer is posted and edited as it grows instead.
"""

from __future__ import annotations

import logging
import re
import time
from contextvars import ContextVar
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.models.blocks import (
    Block,
    ContextActionsBlock,
    FeedbackButtonObject,
    FeedbackButtonsElement,
    MarkdownTextObject,
    SectionBlock,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_chat_stream import AsyncChatStream
from slack_sdk.web.async_client import AsyncWebClient

from adapters.base import ChatChannel, Place, StreamedMessage, split_text
from bot.config import SlackSettings
from bot.message import UserMessage
from bot.service import ChannelService
from bot.store import StoredTurn

CHANNEL = "slack"
log = logging.getLogger(__name__)
TEXT_LIMIT = 4000  # Slack's advice for the length of a message's text
HANDLED_EVENTS = {"message", "app_mention", "reaction_added", "reaction_removed"}
# Plain messages, and messages with files; edits, deletions and the like are not questions.
ANSWERED_SUBTYPES = {None, "file_share", "thread_broadcast"}
REPLAY_FIELDS = (
    "type",
    "subtype",
    "user",
    "bot_id",
    "channel",
    "channel_type",
    "ts",
    "thread_ts",
    "team",
    "text",
    "reaction",
    "item",
)
FIX = re.compile(r"!fix\b\s*(.*)", re.DOTALL)
RATE_ACTION = "rate_answer"  # the action_id of the feedback buttons under every answer
SECTION_LIMIT = 3000  # a section block's text; longer answer parts go without buttons (reactions still rate)
RELEASE = re.compile(r"!release\b")
ROLE = re.compile(r"!role\b\s*(.*)", re.DOTALL)
STREAM_APPEND_EVERY_S = 1.0  # a streamed answer gets new text at most this often (chat.appendStream's limits)
# chat.startStream refusals meaning this workspace or app has no streaming: answers are posted and
# edited from then on, everywhere.
STREAMING_UNAVAILABLE = {
    "unknown_method",
    "method_deprecated",
    "not_allowed_token_type",
    "missing_scope",
    "no_permission",
    "team_access_not_granted",
    "feature_not_enabled",
}
# ...refusals about this one message (its place, a passing fault): it is posted instead, the next one
# streams again. Any other refusal (e.g. not_allowed) stops streaming for that kind of place (DMs or
# channels), since the next answer there would be refused the same way.
STREAM_REFUSED_ONCE = {
    "channel_not_found",
    "not_in_channel",
    "is_archived",
    "thread_not_found",
    "invalid_thread_ts",
    "msg_too_long",
    "ratelimited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
}
# The customer an answer is for, as chat.startStream wants it (team id, user id): set while one is answered.
_recipient: ContextVar[tuple[str | None, str] | None] = ContextVar("slack_recipient", default=None)


def escape(text: str) -> str:
    """Slack reads &, < and > in message text as markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def replay_fields(event: dict[str, Any]) -> dict[str, Any]:
    """What handling an event needs: ids, kind, author, place, text. Not the envelope's verification token
    and authorizations, nor rich-text blocks, edits' previous text or file metadata."""
    kept = {k: event[k] for k in REPLAY_FIELDS if k in event}
    if isinstance(kept.get("item"), dict):
        kept["item"] = {k: kept["item"].get(k) for k in ("type", "channel", "ts")}
    return kept


def feedback_block() -> ContextActionsBlock:
    """Block Kit feedback buttons (values are the ratings)."""
    buttons = FeedbackButtonsElement(
        action_id=RATE_ACTION,
        positive_button=FeedbackButtonObject(
            text="Good answer", accessibility_label="Rate this answer good", value="1"
        ),
        negative_button=FeedbackButtonObject(text="Bad answer", accessibility_label="Rate this answer bad", value="-1"),
    )
    return ContextActionsBlock(elements=[buttons])


def rating_blocks(text: str) -> list[Block]:
    """The answer's text and the feedback buttons under it (for a posted message, edited to carry them)."""
    return [SectionBlock(text=MarkdownTextObject(text=text)), feedback_block()]


def api_error(exc: Exception) -> str:
    """Slack's error code for a failed call, else the exception's kind (a dropped connection...)."""
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error") or f"HTTP {exc.response.status_code}")
    return type(exc).__name__


class SlackStream(StreamedMessage):
    """An answer in a thread shown as it is generated with Slack's streaming methods: the first text
    starts the stream (chat.startStream), each later one appends only what is new (chat.appendStream),
    and the final reply's rest and the feedback buttons stop it (chat.stopStream), all through
    slack_sdk's `chat_stream` helper. Where the stream cannot start, the answer is posted and edited as
    the base class does; where it breaks later, its message is edited (chat.update) to the final text."""

    def __init__(self, channel: SlackChannel, place: Place, recipient: tuple[str | None, str]) -> None:
        super().__init__(channel, place)
        assert place.thread, "chat.startStream replies in a thread"
        self.slack, self.thread = channel, place.thread
        self.recipient = recipient
        self.stream: AsyncChatStream | None = None
        self.streaming = True  # False once the stream failed: the base's post and edit from then on
        self.appended = ""  # the rendered text the stream has been given: the deltas, concatenated

    async def show(self, text: str) -> None:
        if not self.streaming:
            await super().show(text)
            return
        rendered = self.channel.render(text)
        now = time.monotonic()
        if (
            len(rendered) > self.channel.text_limit  # the final reply splits it
            or not rendered.startswith(self.appended)  # appended text cannot be taken back: the end replaces it
            or len(rendered) == len(self.appended)
            or (self.message_id and now - self._edited_at < STREAM_APPEND_EVERY_S)
        ):
            return
        try:
            if self.stream is None:
                team, user = self.recipient
                self.stream = await self.slack.client.chat_stream(
                    channel=self.place.chat_id,
                    thread_ts=self.thread,
                    recipient_team_id=team,
                    recipient_user_id=user,
                    buffer_size=1,  # every append is sent at once: STREAM_APPEND_EVERY_S paces them
                )
            await self.stream.append(markdown_text=rendered[len(self.appended) :])
        except Exception as exc:
            self.streaming = False
            if self.message_id is None:  # it never started: posted instead, from this text on
                self.slack.stream_refused(self.place, exc)
                await super().show(text)
            else:  # what was appended stays; edits carry it on
                self.text = self.appended
                log.info("slack: a streamed answer broke off (%s); editing it instead", api_error(exc))
            return
        self.message_id, self.appended, self._edited_at = self.stream.ts, rendered, now

    async def finish(self, text: str, turn_id: int | None) -> None:
        if not self.streaming or self.stream is None:  # posted and edited (or never shown)
            await super().finish(text, turn_id)
            return
        assert self.message_id is not None
        parts = split_text(text, self.channel.text_limit) or [text]
        if len(parts) == 1 and parts[0].startswith(self.appended):
            try:  # the rest of the answer and the buttons under it
                await self.stream.stop(
                    markdown_text=parts[0][len(self.appended) :], blocks=None if turn_id is None else [feedback_block()]
                )
            except Exception as exc:
                log.info("slack: could not finish a streamed answer (%s); editing it instead", api_error(exc))
            else:
                if turn_id is not None:
                    await self.channel.service.link_answer(self.place.chat_id, self.message_id, turn_id)
                return
        else:  # another text (a blocked or fallback reply) or a longer one: the message is edited to it
            try:
                await self.stream.stop()
            except Exception as exc:  # e.g. it expired: chat.update still works
                log.info("slack: could not stop a streamed answer: %s", api_error(exc))
        self.text = self.appended
        await super().finish(text, turn_id)


def feedback_clicks(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The feedback-button clicks of a block_actions payload, as (inbox key, event) like a reaction's."""
    user = (body.get("user") or {}).get("id")
    container = body.get("container") or {}
    clicks = []
    for action in body.get("actions") or []:
        if isinstance(action, dict) and action.get("action_id") == RATE_ACTION and action.get("value") in ("1", "-1"):
            event = {
                "type": "feedback_button",
                "user": user,
                "rating": int(action["value"]),
                "item": {"type": "message", "channel": container.get("channel_id"), "ts": container.get("message_ts")},
            }
            if user and container.get("channel_id") and container.get("message_ts"):
                clicks.append((f"action:{action.get('action_ts')}:{user}", event))
    return clicks


class SlackChannel(ChatChannel):
    name = CHANNEL
    text_limit = TEXT_LIMIT
    fix_command = "!fix"
    release_command = "!release"
    role_command = "!role"

    def __init__(self, service: ChannelService, settings: SlackSettings) -> None:
        super().__init__(
            service, settings.reaction_ratings, Place(settings.agent_channel) if settings.agent_channel else None
        )
        self.settings = settings
        base_url = settings.api_base.rstrip("/") + "/" if settings.api_base else AsyncWebClient.BASE_URL
        # 429s are waited out (Retry-After) and dropped connections retried by slack_sdk itself.
        self.client = AsyncWebClient(
            token=settings.bot_token,
            base_url=base_url,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(max_retry_count=3),
                AsyncRateLimitErrorRetryHandler(max_retry_count=10),
            ],
        )
        # Bolt verifies signatures (and rejects timestamps over 5 minutes old), answers url_verification
        # and drops the bot's own events; `_receive` does the rest.
        self.app = AsyncApp(client=self.client, signing_secret=settings.signing_secret)
        self.app.middleware(self._receive)
        self.socket = AsyncSocketModeHandler(self.app, settings.app_token) if settings.app_token else None
        self._bot_user_id = self._team_id = ""
        # Where streaming is off, and why: "everywhere", "dm" or "channel" -> the refusal that decided it.
        self.no_streaming: dict[str, str] = {}
        self._told_no_thread = False

    def add_routes(self, app: web.Application) -> None:
        if self.settings.signing_secret:  # without it no request could be verified
            app.router.add_post("/slack/events", self.events)

    async def start(self) -> None:
        await super().start()
        if self.socket:
            await self.socket.connect_async()

    async def stop(self) -> None:
        if self.socket:
            await self.socket.close_async()
        await super().stop()

    async def events(self, request: web.Request) -> web.Response:
        try:
            bolt_request = await to_bolt_request(request)
        except (ValueError, TypeError, AttributeError):  # bolt could not read the body
            if not SignatureVerifier(self.settings.signing_secret).is_valid_request(
                await request.text(), request.headers
            ):
                await self.rejected("bad signature")
                return web.json_response({"error": "invalid request"}, status=401)
            log.warning("slack: ignoring a request whose body is not a Slack payload")
            return web.Response(status=200)  # so that Slack does not retry it
        response = await self.app.async_dispatch(bolt_request)
        if response.status == 401:  # bolt refused the signature or a stale timestamp
            await self.rejected("bad signature or stale timestamp")
        return await to_aiohttp_response(response)

    # --- receiving: record, acknowledge, then work ---------------------------------------------

    async def _receive(self, body: dict[str, Any]) -> BoltResponse:
        """Bolt middleware, run after bolt's own checks for HTTP and Socket Mode alike. It never passes
        the request on: the response it returns is the acknowledgement."""
        event = body.get("event")
        event = event if isinstance(event, dict) else {}
        kind = event.get("type")
        key = body.get("event_id")
        if body.get("type") == "block_actions":
            for key, click in feedback_clicks(body):
                await self.receive(key, {"event": click})
        elif body.get("type") != "event_callback" or kind not in HANDLED_EVENTS or not isinstance(key, str):
            log.info("slack: ignored a request of type %s (event type %s)", body.get("type"), kind)
        else:
            await self.receive(key, {"event": replay_fields(event)})
        return BoltResponse(status=200, body="")

    def conversation_of(self, payload: dict[str, Any]) -> str | None:
        """A DM, or a thread (a mention starts one); a reaction goes with its message's channel."""
        event = payload["event"]
        if event["type"] in ("reaction_added", "reaction_removed", "feedback_button"):
            return str((event.get("item") or {}).get("channel"))
        thread = event.get("thread_ts") or (None if event.get("channel_type") == "im" else event.get("ts"))
        return f"{event.get('channel')}:{thread}" if thread else str(event.get("channel"))

    def is_permanent(self, error: Exception) -> bool:
        """Slack refused for good (e.g. not_in_channel); rate limits and server errors pass."""
        if not isinstance(error, SlackApiError):
            return False
        status = error.response.status_code
        return status != 429 and status < 500

    async def handle_event(self, payload: dict[str, Any]) -> None:
        event = payload["event"]
        if event["type"] in ("reaction_added", "reaction_removed"):
            await self._on_reaction(event)
        elif event["type"] == "feedback_button":  # a click is a rating exactly like a reaction
            item = event["item"]
            await self.rate_reaction(str(item["channel"]), str(item["ts"]), str(event["user"]), int(event["rating"]))
        else:
            await self._on_message(event, mentioned=event["type"] == "app_mention")

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
            reply = await self.fix(
                await self._answer_before(channel, thread_ts), user, unescape(fix.group(1)).strip(), channel
            )
            await self.send(Place(channel, thread_ts), reply)
            return
        role = ROLE.match(raw.strip())
        if role and not mentioned and (thread_ts or is_dm or self.in_agents_room(channel)):
            await self.send(Place(channel, thread_ts), await self.change_role(user, unescape(role.group(1))))
            return
        if thread_ts and not mentioned and self.in_agents_room(channel):
            await self._in_agents_thread(event, channel, thread_ts, raw)
            return
        if not mentioned and not is_dm:
            # In channels: only threads the bot is in; a message mentioning it arrives as app_mention too.
            if not thread_ts or f"<@{bot_user}" in raw or not await self.service.latest_turn(f"{channel}:{thread_ts}"):
                return
        text = unescape(re.sub(rf"<@{bot_user}(\|[^>]*)?>", "", raw)).strip()
        # A DM is one conversation; a thread (or a mention, which starts one) is its own.
        conversation = channel if is_dm and not thread_ts else f"{channel}:{thread_ts or ts}"
        place = Place(channel, None if is_dm and not thread_ts else thread_ts or ts)
        recipient = _recipient.set((event.get("team") or self._team_id or None, user))
        try:
            await self.answer(
                UserMessage(CHANNEL, conversation, user, f"{channel}:{ts}", text), place, f"<@{user}>", is_dm
            )
        finally:
            _recipient.reset(recipient)

    async def _in_agents_thread(self, event: dict[str, Any], channel: str, thread_ts: str, raw: str) -> None:
        """In a thread of the agents' room under one of the bot's messages: `!release` gives the customer
        back to the bot; anything else is an agent's reply to the customer."""
        place = Place(channel, thread_ts)
        if RELEASE.match(raw.strip()):
            await self.send(place, await self.release(channel, thread_ts, event["user"]))
            return
        problem = await self.agent_says(channel, thread_ts, event["user"], unescape(raw).strip(), event["ts"])
        if problem:
            await self.send(place, problem)

    def place_for(self, conversation_id: str) -> Place:
        channel, _, thread_ts = conversation_id.partition(":")  # a DM, or a thread (see _on_message)
        return Place(channel, thread_ts or None)

    def render(self, text: str) -> str:
        return escape(text)  # also right for streamed (markdown) text: &amp; &lt; &gt; show as & < >

    def streamer(self, place: Place) -> StreamedMessage | None:
        """An answer in a thread streams (SlackStream); a DM outside a thread, or a place where Slack
        refused streaming before, is posted and edited (the base's way)."""
        recipient = _recipient.get()
        kind = self._place_kind(place)
        if recipient is None or self.no_streaming.get("everywhere") or self.no_streaming.get(kind):
            return super().streamer(place)
        if not place.thread:  # chat.startStream replies in a thread; a DM's answers are not in one
            if not self._told_no_thread:
                self._told_no_thread = True
                log.info("slack: answers outside a thread (DMs) are not streamed; they are posted and edited")
            return super().streamer(place)
        return SlackStream(self, place, recipient)

    @staticmethod
    def _place_kind(place: Place) -> str:
        return "dm" if place.chat_id.startswith("D") else "channel"

    def stream_refused(self, place: Place, error: Exception) -> None:
        """chat.startStream failed for an answer at `place` (which is then posted and edited): decided once
        for each kind of refusal whether streaming stays on, and logged in one line."""
        code = api_error(error)
        if code in STREAMING_UNAVAILABLE:
            scope, where = "everywhere", "anywhere"
        elif code in STREAM_REFUSED_ONCE or not self.is_permanent(error):
            log.info("slack: could not start streaming an answer (%s); posting it instead", code)
            return
        else:
            scope = self._place_kind(place)
            where = "in DMs" if scope == "dm" else "in channels"
        if scope not in self.no_streaming:
            self.no_streaming[scope] = code
            log.warning("slack: Slack refused streaming (%s); answers %s are posted and edited instead", code, where)

    async def post(self, place: Place, text: str, first: bool) -> str:
        posted = await self.client.chat_postMessage(channel=place.chat_id, text=text, thread_ts=place.thread)
        return str(posted["ts"])

    async def edit(self, place: Place, message_id: str, text: str) -> None:
        await self.client.chat_update(channel=place.chat_id, ts=message_id, text=text)

    async def answer_shown(self, place: Place, message_id: str, text: str) -> None:
        """Feedback buttons (👍/👎) under the answer's last part."""
        if len(text) > SECTION_LIMIT:
            return
        try:
            await self.client.chat_update(channel=place.chat_id, ts=message_id, text=text, blocks=rating_blocks(text))
        except SlackApiError as exc:  # reactions still rate the answer
            log.info("slack: could not add feedback buttons: %s", exc.response.get("error"))

    async def mirror_turn(self, turn: StoredTurn, who: str) -> None:
        """The DM question and answer in one message; agents rate it, or `!fix` it in its thread."""
        assert self.agents_room is not None
        await self.send(
            self.agents_room, f"{who} asked: {self.render(turn.user_text)}\n\n{self.render(turn.answer)}", turn.id
        )

    async def _bot_user(self) -> str:
        if not self._bot_user_id:
            me = await self.client.auth_test()
            self._bot_user_id, self._team_id = me["user_id"], str(me.get("team_id") or "")
        return self._bot_user_id

    # --- feedback ------------------------------------------------------------------------------

    async def _answer_before(self, channel: str, thread_ts: str | None) -> int | None:
        """The answer a !fix refers to: a mirrored answer at the thread's root, else the latest answer
        in that thread (or DM)."""
        if thread_ts:
            turn_id = await self.service.answer_for(channel, thread_ts)
            if turn_id is not None:
                return turn_id
        turn = await self.service.latest_turn(f"{channel}:{thread_ts}" if thread_ts else channel)
        return turn.id if turn else None

    async def _on_reaction(self, event: dict[str, Any]) -> None:
        item, user = event.get("item") or {}, event.get("user")
        rating = self.rating_of(str(event.get("reaction", "")))
        if rating is None or not user or item.get("type") != "message":
            return
        chat_id, message_id = str(item.get("channel")), str(item.get("ts"))
        if event["type"] == "reaction_added":
            await self.rate_reaction(chat_id, message_id, user, rating)
        else:
            await self.withdraw_reaction(chat_id, message_id, user, rating)
