"""Human hand-off in the core: asking for a person, two 👎 in a row, agents' replies relayed and kept as
training data, release and timeout, refusals audited. The channels' sides are in test_telegram.py,
test_slack.py, and over HTTP below."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bot.app import Bot, build_bot
from bot.feedback import NotAllowed
from bot.handoff import HANDED_OFF
from bot.message import UserMessage
from bot.server import RunningServer
from bot.service import ChannelService
from tests.support import ORDER_A, ORDER_Q, get, make_settings, post
from tuning import dataset

AGENT = "AGENT7"


@asynccontextmanager
async def open_bot(data_dir: Path, **overrides: object) -> AsyncIterator[Bot]:
    bot = await build_bot(make_settings(data_dir, agent_ids=f"telegram:{AGENT}", **overrides))
    try:
        yield bot
    finally:
        await bot.close()


def says(text: str, number: int, user: str = "u1") -> UserMessage:
    return UserMessage("telegram", "chat-1", user, f"m-{number}", text)


async def test_asking_for_a_person_hands_off_until_an_agent_releases(data_dir: Path) -> None:
    async with open_bot(data_dir) as bot:
        service = ChannelService(bot, "telegram")
        delivered: list[tuple[str, str, int]] = []

        async def deliver(conversation_id: str, text: str, turn_id: int) -> None:
            delivered.append((conversation_id, text, turn_id))

        service.deliver_with(deliver)
        first = await service.handle(says(ORDER_Q, 1))
        assert first.text == ORDER_A
        asked = await service.handle(says("我要转人工", 2))
        assert (asked.outcome, asked.text) == ("handed_off", HANDED_OFF[1])
        misses = bot.cache.misses
        waiting = await service.handle(says("我的手机13812345678,包裹丢了", 3))
        assert (waiting.outcome, waiting.text) == ("with_agent", "")
        assert bot.cache.misses == misses  # no cache look-up, no model call

        # An agent answers: the customer gets the text as written, the store keeps it masked.
        reply = "已为您补发,快递员会联系您,电话 13912345678"
        turn_id = await service.agent_reply("telegram", "chat-1", AGENT, reply, "r-1")
        assert turn_id == waiting.turn_id and delivered == [("chat-1", reply, turn_id)]
        stored = await bot.store.turn(turn_id)
        assert stored.outcome == "agent" and "13912345678" not in stored.answer and "[PHONE]" in stored.answer
        assert "13812345678" not in stored.user_text

        # Only agents answer customers; the refusal is audited and nothing is delivered.
        with pytest.raises(NotAllowed):
            await service.agent_reply("telegram", "chat-1", "u1", "我是客服", "r-2")
        assert [r["actor"] for r in await bot.store.audit_events(action="handoff_reply_refused")] == ["telegram:u1"]
        assert len(delivered) == 1

        # The agent's answer is a training target; the hand-off request itself is not.
        chats, _ = await dataset.rated_chats(bot.store)
        [row] = [r for r in chats if r["messages"][-1]["content"] == stored.answer]
        assert row["label"] == "good" and row["messages"][-2]["content"] == stored.user_text
        assert not any(r["messages"][-2]["content"] == "我要转人工" for r in chats)

        # Through the output word filter, as the answers it will teach: masked words masked, and a blocked
        # word refuses the reply, naming its category; nothing of it is sent or stored.
        masked_id = await service.agent_reply("telegram", "chat-1", AGENT, "别理那个傻瓜,订单三天到", "r-3")
        assert delivered[-1] == ("chat-1", "别理那个**,订单三天到", masked_id)
        kept = await bot.store.turn(masked_id)  # the same waiting question: its answer grows by a line
        assert kept.answer.endswith("\n别理那个**,订单三天到") and "傻瓜" not in kept.answer
        with pytest.raises(ValueError, match=r"the reply has words the shop blocks \(fraud\)"):
            await service.agent_reply("telegram", "chat-1", AGENT, "我们可以帮你刷单", "r-4")
        assert len(delivered) == 2 and "刷单" not in str([t.answer for t in await service.transcript("chat-1")])

        assert await service.release("telegram", "chat-1", AGENT)
        assert not await service.release("telegram", "chat-1", AGENT)  # already back with the bot
        back = await service.handle(says(ORDER_Q, 4))
        assert (back.outcome, back.text) == ("answered", ORDER_A)
        actions = [e["action"] for e in await bot.store.audit_events() if e["action"].startswith("handoff")]
        assert actions == [
            "handoff_started",
            "handoff_reply",
            "handoff_reply_refused",
            "handoff_reply",
            "handoff_released",
        ]


async def test_an_idle_handoff_times_out_to_the_bot(data_dir: Path) -> None:
    async with open_bot(data_dir, handoff_timeout_minutes=0.005) as bot:  # 0.3 s
        service = ChannelService(bot, "telegram")
        assert (await service.handle(says("I want a human please", 1))).outcome == "handed_off"
        assert (await service.handle(says(ORDER_Q, 2))).outcome == "with_agent"
        await asyncio.sleep(0.5)
        assert (await service.handle(says(ORDER_Q, 3))).text == ORDER_A
        [released] = await bot.store.audit_events(action="handoff_released")
        assert released["actor"] == "bot" and '"timeout"' in released["detail"]


async def test_two_downvotes_in_a_row_from_the_customer_hand_off(data_dir: Path) -> None:
    async with open_bot(data_dir) as bot:
        service = ChannelService(bot, "telegram")
        one = await service.handle(says(ORDER_Q, 1))
        two = await service.handle(says("怎么退货?", 2))
        assert (await service.rate(two.turn_id, AGENT, -1)).handed_off is None  # an agent's 👎 trains, no hand-off
        assert (await service.rate(one.turn_id, "u1", -1)).handed_off is None  # not the latest answer
        rated = await service.rate(two.turn_id, "u1", -1)
        assert rated.handed_off == "chat-1" and rated.customer_reply == HANDED_OFF[1]
        assert (await service.handle(says("还在吗", 3))).outcome == "with_agent"


async def test_without_agents_nobody_is_handed_off(data_dir: Path) -> None:
    """Nobody could answer: asking for a person gets the bot's answer, and 👎 hands nothing off."""
    bot = await build_bot(make_settings(data_dir, agent_ids="", api_keys=""))
    try:
        service = ChannelService(bot, "telegram")
        asked = await service.handle(says("转人工", 1))
        assert asked.outcome == "answered" and not await bot.store.handoffs()
        one, two = await service.handle(says(ORDER_Q, 2)), await service.handle(says("怎么退货?", 3))
        for reply in (one, two):
            assert (await service.rate(reply.turn_id, "u1", -1)).handed_off is None
    finally:
        await bot.close()


async def test_handoff_phrases(data_dir: Path) -> None:
    async with open_bot(data_dir, handoff_words="人工,human,real person") as bot:
        asks = bot.handoff.asks_for_person
        assert asks("转人工") and asks("Can I talk to a HUMAN?") and asks("a real person please")
        assert not asks("humane treatment") and not asks("我的订单到哪了")


async def test_handoff_over_http(server: RunningServer) -> None:
    """A front end's customer asks for a person; an agent sees it, answers through the admin API, the
    front end reads the reply from the history; a customer cannot do the agent's part."""
    chat = {"conversation_id": "c1", "user_id": "shopper"}
    status, asked = await post(server, "/chat", chat | {"text": "转人工"})
    assert status == 200 and asked["outcome"] == "handed_off" and asked["answer"] == HANDED_OFF[1]
    status, waiting = await post(server, "/chat", chat | {"text": "我的包裹丢了"})
    assert (status, waiting["outcome"], waiting["answer"]) == (200, "with_agent", "")

    assert (await get(server, "/admin/handoffs", who="u1"))[0] == 403
    status, listing = await get(server, "/admin/handoffs", who="alice")
    [handoff] = listing["handoffs"]
    assert (handoff["channel"], handoff["conversation_id"], handoff["reason"]) == ("http", "service/c1", "asked")
    assert handoff["turns"][-1] == {"question": "我的包裹丢了", "answer": ""}

    target = {"channel": "http", "conversation_id": "service/c1"}
    assert (await post(server, "/admin/reply", target | {"text": "我是客服"}, who="u1"))[0] == 403
    status, _ = await post(
        server, "/admin/reply", {"channel": "http", "conversation_id": "nope", "text": "hi"}, "alice"
    )
    assert status == 404
    status, replied = await post(server, "/admin/reply", target | {"text": "已为您补发"}, who="alice")
    assert status == 200 and replied["turn_id"] == waiting["turn_id"]

    status, history = await get(server, "/chat/history?conversation_id=c1")
    assert status == 200 and history["with_agents"] is True
    assert [(t["question"], t["answer"], t["outcome"]) for t in history["turns"][-1:]] == [
        ("我的包裹丢了", "已为您补发", "agent")
    ]
    assert (await get(server, "/chat/history?conversation_id=c1", who="u1"))[1]["turns"] == []  # not theirs

    assert (await post(server, "/admin/release", target, who="alice"))[1] == {"released": True}
    status, back = await post(server, "/chat", chat | {"text": ORDER_Q})
    assert (back["outcome"], back["answer"]) == ("answered", ORDER_A)
    assert (await get(server, "/chat/history?conversation_id=c1"))[1]["with_agents"] is False


async def test_health_checks_the_store_and_the_model(server: RunningServer) -> None:
    status, health = await get(server, "/healthz", who=None)
    assert status == 200 and health["checks"] == {"store": "ok", "model": "ok"}
    await server.bot.store.close()  # the database is gone from under the bot
    status, health = await get(server, "/healthz", who=None)
    assert status == 503 and health["status"] == "unavailable" and health["checks"]["store"] != "ok"
