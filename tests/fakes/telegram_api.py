"""A fake Telegram Bot API server on 127.0.0.1: enough of getMe, getUpdates, sendMessage,
editMessageText, sendMessageDraft, sendChatAction and setWebhook/deleteWebhook for the adapter to talk
real HTTP to it.

Tests queue updates with `push`, read what the bot sent from `sent` (and `drafts`), press a draft's stop
button with `press_stop`, and can make the next sendMessage calls fail with 429 (`flood`) or hang until
released (`hold_sends`, to kill the bot mid-send).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiohttp import web

from tests.fakes import serve_on_loopback

TOKEN = "123456:TEST-token-for-the-fake-api"
BOT_ID = 123456
BOT_USERNAME = "shop_test_bot"
MAX_POLL_WAIT_S = 1.0  # long polls end early here, so a test never waits on one for long


class Draft(NamedTuple):
    """One sendMessageDraft call."""

    chat_id: int
    draft_id: int
    text: str
    can_stop: bool = False  # the customer sees a stop button
    keep_on_stop: bool = False


@dataclass
class Sent:
    chat_id: int
    text: str
    message_id: int
    message_thread_id: int | None = None
    reply_to: int | None = None
    at: float = field(default_factory=time.perf_counter)


class FakeTelegram:
    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.updates: list[dict[str, Any]] = []  # not yet confirmed by an offset
        self.sent: list[Sent] = []
        self.edits: list[tuple[int, str]] = []  # (message_id, new text) of every editMessageText
        self.drafts: list[Draft] = []  # every sendMessageDraft
        self.calls: list[tuple[str, dict[str, Any]]] = []  # every request: method and decoded fields
        self.confirmed = 0  # the highest offset a getUpdates call has confirmed up to
        self.flood = 0  # answer this many next sendMessage calls with 429
        self.hold_sends = False  # sendMessage never answers while set (the bot is killed meanwhile)
        self.held = 0
        self.polling = 0  # getUpdates calls waiting now (Telegram allows one: a second gets 409 Conflict)
        self.conflicts = 0
        self._closing = False
        self._ids = itertools.count(1)
        self._message_ids = itertools.count(1000)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # --- running ------------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner, port = await serve_on_loopback(app)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        self._closing = True  # ends waiting long polls now, not at their timeout
        await self.release_sends()
        if self._runner:
            await self._runner.cleanup()

    # --- what tests call ----------------------------------------------------------------------

    async def push(self, update: dict[str, Any]) -> int:
        """Queue an update (numbered here unless it has an update_id); returns its update_id."""
        update = dict(update)
        update.setdefault("update_id", next(self._ids))
        self.updates.append(update)
        await self._notify()
        return update["update_id"]

    async def wait_sent(self, count: int, timeout: float = 10.0, chat_id: int | None = None) -> list[Sent]:
        """Wait until at least `count` messages went out (to `chat_id` if given); returns them."""

        def matching() -> list[Sent]:
            return [s for s in self.sent if chat_id is None or s.chat_id == chat_id]

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(matching()) >= count), timeout)
        return matching()

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    async def press_stop(self, draft_id: int) -> int:
        """The customer presses the stop button of a draft the bot sent (with can_stop, as Telegram only
        shows it then): a stopped_message_generation update is queued; returns its update_id."""
        [draft, *_] = [d for d in reversed(self.drafts) if d.draft_id == draft_id]
        assert draft.can_stop, f"draft {draft_id} has no stop button"
        return await self.push(stopped_generation(draft.chat_id, draft_id))

    async def release_sends(self) -> None:
        self.hold_sends = False
        await self._notify()

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]

    # --- the API --------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        fields = _decode(dict(await request.post()))
        method = request.match_info["method"]
        self.calls.append((method, fields))
        await self._notify()
        answer = getattr(self, f"_{method.lower()}", None)
        if answer is None:
            return _error(404, "Not Found: method not found")
        return await answer(fields)

    async def _getme(self, fields: dict[str, Any]) -> web.Response:
        return _ok({"id": BOT_ID, "is_bot": True, "first_name": "Shop", "username": BOT_USERNAME})

    async def _getupdates(self, fields: dict[str, Any]) -> web.Response:
        if self.polling:
            self.conflicts += 1
            return _error(409, "Conflict: terminated by other getUpdates request")
        self.polling += 1
        try:
            return await self._poll(fields)
        finally:
            self.polling -= 1

    async def _poll(self, fields: dict[str, Any]) -> web.Response:
        offset = int(fields.get("offset", 0))
        if offset:  # everything below the offset is confirmed: Telegram forgets it
            self.confirmed = max(self.confirmed, offset)
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
            await self._notify()
        wait = min(float(fields.get("timeout", 0)), MAX_POLL_WAIT_S)
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: bool(self.updates) or self._closing), wait)
            except asyncio.TimeoutError:
                pass
        return _ok(self.updates[: int(fields.get("limit", 100))])

    async def _sendmessage(self, fields: dict[str, Any]) -> web.Response:
        if self.flood:
            self.flood -= 1
            return _error(429, "Too Many Requests: retry after 1", {"retry_after": 1})
        if self.hold_sends:  # the bot is killed meanwhile: this message never reaches the chat
            self.held += 1
            await self._notify()
            await self.wait_for(lambda: not self.hold_sends, timeout=60)
            return _error(500, "Internal Server Error")
        chat_id = int(fields["chat_id"])
        reply = fields.get("reply_parameters") or {}
        thread = fields.get("message_thread_id")
        sent = Sent(
            chat_id, fields["text"], next(self._message_ids), int(thread) if thread else None, reply.get("message_id")
        )
        self.sent.append(sent)
        await self._notify()
        chat = {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"}
        return _ok(
            {
                "message_id": sent.message_id,
                "date": int(time.time()),
                "chat": chat,
                "text": sent.text,
                "from": {"id": BOT_ID, "is_bot": True, "first_name": "Shop", "username": BOT_USERNAME},
            }
        )

    async def _editmessagetext(self, fields: dict[str, Any]) -> web.Response:
        """A streamed answer's message gets its next text: kept in `edits`, and as the message's text."""
        chat_id, message_id = int(fields["chat_id"]), int(fields["message_id"])
        index = next((i for i, s in enumerate(self.sent) if (s.chat_id, s.message_id) == (chat_id, message_id)), None)
        if index is None:
            return _error(400, "Bad Request: message to edit not found")
        if self.sent[index].text == fields["text"]:
            return _error(400, "Bad Request: message is not modified")
        self.edits.append((message_id, fields["text"]))
        self.sent[index].text = fields["text"]  # whoever holds the message sees it change, as in a chat
        await self._notify()
        chat = {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"}
        return _ok({"message_id": message_id, "date": int(time.time()), "chat": chat, "text": fields["text"]})

    async def _sendmessagedraft(self, fields: dict[str, Any]) -> web.Response:
        """A private chat's animated preview of a message being written: kept in `drafts`."""
        if int(fields["chat_id"]) < 0:
            return _error(400, "Bad Request: drafts can be sent only to private chats")
        self.drafts.append(
            Draft(
                int(fields["chat_id"]),
                int(fields["draft_id"]),
                fields.get("text", ""),
                _flag(fields.get("can_stop")),
                _flag(fields.get("keep_on_stop")),
            )
        )
        await self._notify()
        return _ok(True)

    async def _sendchataction(self, fields: dict[str, Any]) -> web.Response:
        return _ok(True)

    async def _setwebhook(self, fields: dict[str, Any]) -> web.Response:
        return _ok(True)

    async def _deletewebhook(self, fields: dict[str, Any]) -> web.Response:
        return _ok(True)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def _decode(fields: dict[str, Any]) -> dict[str, Any]:
    """aiogram sends nested values (lists, objects) as JSON text inside the form."""
    decoded = {}
    for key, value in fields.items():
        try:
            decoded[key] = json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value
        except json.JSONDecodeError:
            decoded[key] = value
    return decoded


def _flag(value: Any) -> bool:
    """A boolean field: aiogram sends them in the form as "true"/"false"."""
    return value is True or value == "true"


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _error(status: int, description: str, parameters: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=status)


# --- updates as Telegram writes them ---------------------------------------------------------------


def user(user_id: int, first_name: str = "Customer", **extra: Any) -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": first_name, "language_code": "zh-hans", **extra}


def chat(chat_id: int) -> dict[str, Any]:
    if chat_id > 0:
        return {"id": chat_id, "type": "private", "first_name": "Customer"}
    return {"id": chat_id, "type": "supergroup", "title": "Shop group"}


_message_ids = itertools.count(1)


def message(chat_id: int, text: str | None, from_id: int | None = None, **extra: Any) -> dict[str, Any]:
    """A `message` update body; `from_id` defaults to the chat (a private chat)."""
    body: dict[str, Any] = {
        "message_id": next(_message_ids),
        "date": int(time.time()),
        "chat": chat(chat_id),
        "from": user(from_id or chat_id),
    }
    if text is not None:
        body["text"] = text
        if text.startswith("/"):
            command = text.split()[0]
            body["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
    body.update(extra)
    return {"message": body}


def reply_to(sent: Sent) -> dict[str, Any]:
    """`reply_to_message` for a message the bot sent."""
    return {
        "message_id": sent.message_id,
        "date": int(time.time()),
        "chat": chat(sent.chat_id),
        "text": sent.text,
        "from": {"id": BOT_ID, "is_bot": True, "first_name": "Shop", "username": BOT_USERNAME},
    }


def reaction(
    chat_id: int, message_id: int, user_id: int, new: list[str], old: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    def kinds(emojis: list[str]) -> list[dict[str, str]]:
        return [{"type": "emoji", "emoji": e} for e in emojis]

    return {
        "message_reaction": {
            "chat": chat(chat_id),
            "message_id": message_id,
            "user": user(user_id),
            "date": int(time.time()),
            "old_reaction": kinds(old or []),
            "new_reaction": kinds(new),
            **extra,
        }
    }


def stopped_generation(chat_id: int, draft_id: int, message_thread_id: int | None = None) -> dict[str, Any]:
    """A `stopped_message_generation` update body: the customer pressed a draft's stop button."""
    body: dict[str, Any] = {"chat": chat(chat_id), "draft_id": draft_id}
    if message_thread_id is not None:
        body["message_thread_id"] = message_thread_id
    return {"stopped_message_generation": body}
