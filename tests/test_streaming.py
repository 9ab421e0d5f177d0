"""Answers streamed as they are generated: server-sent events from POST /chat, filtered clause by clause,
and a stream whose reader is gone stops generation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.__main__ import start
from bot.app import build_bot
from bot.message import UserMessage
from bot.server import RunningServer
from tests.support import auth, make_settings

QUESTION = "What payment methods do you accept?"
ANSWER = (
    "We accept Alipay, WeChat Pay, UnionPay cards and Visa or Mastercard credit cards. "
    "Cash on delivery is not available."
)


async def sse_chat(server: RunningServer, text: str, conversation: str = "c1") -> list[tuple[str, dict[str, Any]]]:
    """POST /chat with stream=true; the events, in order."""
    body = {"conversation_id": conversation, "user_id": "u1", "text": text, "stream": True}
    events: list[tuple[str, dict[str, Any]]] = []
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{server.port}/chat"
        async with http.post(url, data=json.dumps(body), headers=auth()) as response:
            assert response.status == 200 and response.content_type == "text/event-stream"
            name = ""
            async for raw in response.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[len("event: ") :]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[len("data: ") :])))
    return events


async def test_partials_arrive_in_order_and_the_final_answer_is_the_stored_one(server: RunningServer) -> None:
    events = await sse_chat(server, QUESTION)
    partials = [data["text"] for name, data in events if name == "partial"]
    [final] = [data for name, data in events if name == "answer"]
    assert events[-1] == ("answer", final) and final["answer"] == ANSWER and final["outcome"] == "answered"
    # How many partials arrive depends on speed (a reader that falls behind skips to the newest text); each
    # ends at a clause end, grows the one before, and begins the final answer.
    assert partials and all(text[-1] in ",." for text in partials)
    for shorter, longer in zip(partials, [*partials[1:], ANSWER], strict=True):
        assert longer.startswith(shorter) and longer != shorter
    stored = await server.bot.store.turn(final["turn_id"])
    assert stored is not None and stored.answer == final["answer"]


@pytest.fixture
def lexicon(tmp_path: Path) -> Path:
    path = tmp_path / "words.txt"
    path.write_text("wechat\tfraud\nalipay\tabuse\n", encoding="utf-8")
    return path


async def test_a_blocked_word_never_appears_in_any_partial(data_dir: Path, lexicon: Path) -> None:
    """ "alipay" is masked (abuse=mask) in every partial; "wechat" (fraud=block) stops the answer: the
    clause holding it is never shown and the final reply is the blocked one."""
    server = await start(make_settings(data_dir, lexicons=str(lexicon)), {})
    try:
        events = await sse_chat(server, QUESTION)
    finally:
        await server.stop()
    partials = [data["text"] for name, data in events if name == "partial"]
    [final] = [data for name, data in events if name == "answer"]
    assert all(text == "We accept ******," for text in partials)  # at most the first clause, masked
    assert final["outcome"] == "blocked" and "WeChat" not in final["answer"]


async def test_a_stream_nobody_reads_stops_and_the_turn_is_stored_cancelled(data_dir: Path) -> None:
    bot = await build_bot(make_settings(data_dir))
    try:

        async def gone(text: str) -> None:
            raise ConnectionResetError("the customer closed the page")

        reply = await bot.dialogue.handle(UserMessage("http", "c1", "u1", "m1", QUESTION), gone)
        stored = await bot.store.turn(reply.turn_id)
        assert stored is not None and stored.outcome == "cancelled" and ANSWER.startswith(stored.answer)
        assert len(bot.cache) == 0  # a cut-off answer is never served again
    finally:
        await bot.close()
