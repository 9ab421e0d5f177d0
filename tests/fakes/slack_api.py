"""A fake Slack Web API on 127.0.0.1: answers auth.test, records chat.postMessage, chat.update and the
streaming methods (chat.startStream, chat.appendStream, chat.stopStream), and can answer the next posts
with 429 + Retry-After, refuse channels the bot is not in, never answer posts, or refuse streams."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes import serve_on_loopback

BOT_USER = "UBOT"


@dataclass(frozen=True)
class Post:
    channel: str
    text: str
    thread_ts: str | None
    ts: str
    at: float  # time.perf_counter() when it arrived


@dataclass(frozen=True)
class StreamCall:
    """One call of a streaming method: the markdown text it appended, and what else it carried."""

    method: str  # "chat.startStream", "chat.appendStream" or "chat.stopStream"
    channel: str
    ts: str  # the streamed message's
    text: str  # its markdown_text, or its markdown_text chunks' texts, concatenated
    blocks: list[dict[str, Any]] | None
    args: dict[str, Any]


def markdown_of(args: dict[str, Any]) -> str:
    """The text a streaming call appends: its markdown_text and its markdown_text chunks, in order."""
    chunks = args.get("chunks") or []
    chunks = json.loads(chunks) if isinstance(chunks, str) else chunks
    return (args.get("markdown_text") or "") + "".join(
        c.get("text", "") for c in chunks if isinstance(c, dict) and c.get("type") == "markdown_text"
    )


class FakeSlackApi:
    def __init__(self, token: str) -> None:
        self.token = token
        self.posts: list[Post] = []
        self.updates: list[tuple[str, str]] = []  # (ts, new text) of every chat.update
        self.blocks: dict[str, Any] = {}  # ts -> the Block Kit blocks its latest chat.update or stopStream gave it
        self.stream_calls: list[StreamCall] = []  # every call of a streaming method that was accepted
        self.streaming: set[str] = set()  # ts of the messages still streaming (started, not stopped)
        self.stream_error: str | None = None  # chat.startStream answers {"ok": false, "error": this}
        self.refused_streams = 0  # chat.startStream calls refused so far
        self.append_error: str | None = None  # chat.appendStream answers this (a stream that broke off)
        self.rate_limited = 0  # posts answered with 429 so far
        self.not_in_channels: set[str] = set()
        self._limit_next = 0
        self.hang_posts = False  # chat.postMessage calls wait until the fake stops (a bot stuck mid-answer)
        self.hung = 0  # posts left waiting so far
        self._runner: web.AppRunner | None = None
        self.url = ""

    def streamed(self, ts: str) -> list[StreamCall]:
        """The streaming calls of one message, in order."""
        return [c for c in self.stream_calls if c.ts == ts]

    def limit_next(self, count: int) -> None:
        """Answer the next `count` chat.postMessage calls with 429 and Retry-After: 1."""
        self._limit_next = count

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/api/{method}", self._call)
        self._runner, port = await serve_on_loopback(app)
        self.url = f"http://127.0.0.1:{port}/api/"
        return self.url

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def wait_for_posts(self, count: int, timeout: float = 20.0) -> list[Post]:
        deadline = time.monotonic() + timeout
        while len(self.posts) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} posts within {timeout} s, got {self.posts}")
            await asyncio.sleep(0.02)
        return self.posts

    async def _call(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        method = request.match_info["method"]
        if request.content_type == "application/json":
            args: dict[str, Any] = await request.json()
        else:
            args = dict(await request.post())
        if method == "auth.test":
            return web.json_response(
                {
                    "ok": True,
                    "url": "https://shop.slack.com/",
                    "team": "Shop",
                    "user": "shopbot",
                    "team_id": "T1",
                    "user_id": BOT_USER,
                    "bot_id": "BBOT",
                }
            )
        if method == "chat.postMessage" and self.hang_posts:
            self.hung += 1
            await asyncio.Event().wait()
        if method == "chat.postMessage":
            return self._post(args)
        if method == "chat.update":
            return self._update(args)
        if method == "chat.startStream":
            return self._start_stream(args)
        if method in ("chat.appendStream", "chat.stopStream"):
            return self._stream_more(method, args)
        return web.json_response({"ok": False, "error": "unknown_method"})

    def _update(self, args: dict[str, Any]) -> web.Response:
        """A streamed answer gets its next text: kept in `updates`, and as the post's text."""
        index = next(
            (i for i, p in enumerate(self.posts) if (p.channel, p.ts) == (args.get("channel"), args.get("ts"))), None
        )
        if index is None:
            return web.json_response({"ok": False, "error": "message_not_found"})
        self.updates.append((args["ts"], args["text"]))
        blocks = args.get("blocks")
        self.blocks[args["ts"]] = json.loads(blocks) if isinstance(blocks, str) else blocks
        self.posts[index] = dataclasses.replace(self.posts[index], text=args["text"])
        return web.json_response({"ok": True, "channel": args["channel"], "ts": args["ts"], "text": args["text"]})

    def _start_stream(self, args: dict[str, Any]) -> web.Response:
        """A new message in a thread that grows with each chat.appendStream until chat.stopStream."""
        channel = args.get("channel", "")
        if self.stream_error:
            self.refused_streams += 1
            return web.json_response({"ok": False, "error": self.stream_error})
        if channel in self.not_in_channels:
            return web.json_response({"ok": False, "error": "not_in_channel"})
        if not args.get("thread_ts"):  # streamed messages are always replies
            return web.json_response({"ok": False, "error": "invalid_arguments"})
        if not channel.startswith("D") and not (args.get("recipient_user_id") and args.get("recipient_team_id")):
            return web.json_response({"ok": False, "error": "invalid_arguments"})  # required in channels
        ts = f"1800000000.{len(self.posts) + 1:06d}"
        text = markdown_of(args)
        self.posts.append(Post(channel, text, args["thread_ts"], ts, time.perf_counter()))
        self.streaming.add(ts)
        self.stream_calls.append(StreamCall("chat.startStream", channel, ts, text, None, args))
        return web.json_response({"ok": True, "channel": channel, "ts": ts})

    def _stream_more(self, method: str, args: dict[str, Any]) -> web.Response:
        channel, ts = args.get("channel", ""), args.get("ts", "")
        index = next((i for i, p in enumerate(self.posts) if (p.channel, p.ts) == (channel, ts)), None)
        if index is None:
            return web.json_response({"ok": False, "error": "message_not_found"})
        if ts not in self.streaming:
            return web.json_response({"ok": False, "error": "message_not_in_streaming_state"})
        if method == "chat.appendStream" and self.append_error:
            return web.json_response({"ok": False, "error": self.append_error})
        text = markdown_of(args)
        blocks = args.get("blocks")
        blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
        self.stream_calls.append(StreamCall(method, channel, ts, text, blocks, args))
        self.posts[index] = dataclasses.replace(self.posts[index], text=self.posts[index].text + text)
        if method == "chat.stopStream":
            self.streaming.discard(ts)
            if blocks:
                self.blocks[ts] = blocks
        return web.json_response({"ok": True, "channel": channel, "ts": ts})

    def _post(self, args: dict[str, Any]) -> web.Response:
        if self._limit_next > 0:
            self._limit_next -= 1
            self.rate_limited += 1
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": "1"})
        channel = args.get("channel", "")
        if channel in self.not_in_channels:
            return web.json_response({"ok": False, "error": "not_in_channel"})
        if not args.get("text"):
            return web.json_response({"ok": False, "error": "no_text"})
        ts = f"1800000000.{len(self.posts) + 1:06d}"
        self.posts.append(Post(channel, args["text"], args.get("thread_ts"), ts, time.perf_counter()))
        return web.json_response(
            {
                "ok": True,
                "channel": channel,
                "ts": ts,
                "message": {"type": "message", "text": args["text"], "user": BOT_USER, "ts": ts},
            }
        )
