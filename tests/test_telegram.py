"""Telegram channel against a fake Bot API server on 127.0.0.1: real HTTP both ways, the real
pipeline and the starter model behind it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters import base
from adapters.base import Place
from adapters.telegram import MAX_MESSAGE_CHARS, TelegramChannel
from bot.__main__ import start
from bot.app import build_bot
from bot.config import TelegramSettings
from bot.handoff import HANDED_OFF
from bot.message import UserMessage
from bot.server import RunningServer
from bot.store import Store
from tests.fakes.openai_server import FakeModelServer
from tests.fakes.telegram_api import (
    BOT_USERNAME,
    TOKEN,
    FakeTelegram,
    Sent,
    message,
    reaction,
    reply_to,
    stopped_generation,
)
from tests.support import ORDER_A as ANSWER
from tests.support import ORDER_Q as QUESTION
from tests.support import ROOT, free_port, make_settings
from tests.test_backends import VERSION
from tuning import dataset

# A sample question whose answer has clause ends, so it streams (tests/test_streaming.py).
STREAMED_Q = "What payment methods do you accept?"
STREAMED_A = (
    "We accept Alipay, WeChat Pay, UnionPay cards and Visa or Mastercard credit cards. "
    "Cash on delivery is not available."
)
# What the paced fake model answers to anything, a word every PACE_S: many clauses, so that it is still
# being generated for a few seconds after its first draft.
PACED_A = (
    "We accept Alipay, WeChat Pay, UnionPay cards, Visa and Mastercard. Cash on delivery is not available, "
    "sorry. Refunds go back to the card you paid with, within seven days, and you get an email when it is done."
)
PACE_S = 0.1
AGENT = 42  # listed in AGENT_IDS
CUSTOMER = 1001
GROUP = -100200
AGENT_CHAT = -100999


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    api = FakeTelegram()
    await api.start()
    yield api
    await api.stop()


@asynccontextmanager
async def serving(
    data_dir: Path,
    fake: FakeTelegram,
    trust_agent_room: bool = False,
    bot: dict[str, Any] | None = None,
    **telegram: Any,
) -> AsyncIterator[RunningServer]:
    """The bot's server with Telegram on; `bot` overrides its settings, `telegram` the adapter's."""
    settings = make_settings(
        data_dir, agent_ids=f"http:alice,telegram:{AGENT}", trust_agent_room=trust_agent_room, **(bot or {})
    )
    tg = TelegramSettings(_env_file=None, bot_token=TOKEN, api_base=fake.url, **telegram)
    server = await start(settings, {"telegram": tg})
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def server(data_dir: Path, fake: FakeTelegram) -> AsyncIterator[RunningServer]:
    async with serving(data_dir, fake) as running:
        yield running


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def handled(server: RunningServer, fake: FakeTelegram, update_id: int) -> None:
    """Wait until the bot has taken the update from Telegram and finished with it."""

    async def done() -> bool:
        pending = {key for key, _ in await server.bot.store.inbox_pending("telegram")}
        return fake.confirmed > update_id and str(update_id) not in pending

    await eventually(done)


async def ask(fake: FakeTelegram, chat_id: int, text: str, from_id: int | None = None, **extra: Any) -> Sent:
    """A customer's question; returns the bot's first message back to that chat."""
    before = len([s for s in fake.sent if s.chat_id == chat_id])
    await fake.push(message(chat_id, text, from_id, **extra))
    return (await fake.wait_sent(before + 1, chat_id=chat_id))[before]


MENTION = {"entities": [{"type": "mention", "offset": 0, "length": len(BOT_USERNAME) + 1}]}


def channel_of(server: RunningServer) -> TelegramChannel:
    return next(c for c in server.channels if isinstance(c, TelegramChannel))


# --- answering --------------------------------------------------------------------------------------


async def test_message_gets_the_answer(
    server: RunningServer, fake: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    update = message(CUSTOMER, QUESTION)
    update_id = await fake.push(update)
    [sent] = await fake.wait_sent(1)
    assert (sent.chat_id, sent.text, sent.reply_to) == (CUSTOMER, ANSWER, None)
    assert "sendChatAction" in fake.methods()
    await handled(server, fake, update_id)
    [turn] = await server.bot.store.turns()
    assert (turn.conversation_id, turn.user_id, turn.message_id) == (
        str(CUSTOMER),
        str(CUSTOMER),
        f"{CUSTOMER}:{update['message']['message_id']}",
    )
    assert await server.bot.store.turn_for_answer_message("telegram", str(CUSTOMER), str(sent.message_id)) == turn.id
    _, getupdates = next(call for call in fake.calls if call[0] == "getUpdates")
    assert {"message_reaction", "stopped_message_generation"} <= set(getupdates["allowed_updates"])
    assert TOKEN not in caplog.text


async def test_group_answers_only_when_mentioned_or_replied_to(server: RunningServer, fake: FakeTelegram) -> None:
    quiet = await fake.push(message(GROUP, QUESTION, CUSTOMER))
    asked = message(GROUP, f"@{BOT_USERNAME} {QUESTION}", CUSTOMER, **MENTION)
    await fake.push(asked)
    [answer] = await fake.wait_sent(1)
    assert (answer.chat_id, answer.text, answer.reply_to) == (GROUP, ANSWER, asked["message"]["message_id"])
    follow_up = await ask(fake, GROUP, QUESTION, CUSTOMER, reply_to_message=reply_to(answer))
    assert follow_up.text
    await handled(server, fake, quiet)
    assert len(fake.sent) == 2
    in_topic = await ask(
        fake, GROUP, f"@{BOT_USERNAME} {QUESTION}", CUSTOMER, message_thread_id=7, is_topic_message=True, **MENTION
    )
    assert in_topic.message_thread_id == 7
    conversations = [t.conversation_id for t in await server.bot.store.turns()]
    assert conversations == [str(GROUP), str(GROUP), f"{GROUP}:7"]


async def test_commands(server: RunningServer, fake: FakeTelegram) -> None:
    assert "您好" in (await ask(fake, CUSTOMER + 1, "/start")).text
    assert "/reset" in (await ask(fake, CUSTOMER + 1, "/help")).text
    await ask(fake, CUSTOMER, QUESTION)
    assert (await ask(fake, CUSTOMER, "/reset")).text == "Started a new conversation."
    await ask(fake, CUSTOMER, QUESTION)
    sessions = [t.session for t in await server.bot.store.turns()]
    assert len(sessions) == 2 and sessions[0] < sessions[1]


async def test_non_text_gets_a_polite_reply(server: RunningServer, fake: FakeTelegram) -> None:
    sticker = {
        "sticker": {
            "file_id": "x",
            "file_unique_id": "y",
            "type": "regular",
            "width": 512,
            "height": 512,
            "is_animated": False,
            "is_video": False,
        }
    }
    assert "文字" in (await ask(fake, CUSTOMER, None, **sticker)).text  # type: ignore[arg-type]
    assert await server.bot.store.turns() == []


@pytest.mark.filterwarnings("ignore:Detected unknown update type:RuntimeWarning")
async def test_bad_input_is_ignored(server: RunningServer, fake: FakeTelegram) -> None:
    answer = await ask(fake, CUSTOMER, QUESTION)
    edited = {"edited_message": message(CUSTOMER, "edited")["message"]}
    from_bot = message(CUSTOMER, QUESTION)
    from_bot["message"]["from"]["is_bot"] = True
    channel_post = {"channel_post": {**message(-100300, "news")["message"], "chat": {"id": -100300, "type": "channel"}}}
    broken = {"message": {"text": QUESTION}}  # no chat, no message_id
    custom = reaction(CUSTOMER, answer.message_id, AGENT, [])
    custom["message_reaction"]["new_reaction"] = [{"type": "custom_emoji", "custom_emoji_id": "5"}, {"type": "paid"}]
    not_an_answer = reaction(CUSTOMER, 1, AGENT, ["👍"])
    anonymous = reaction(CUSTOMER, answer.message_id, AGENT, ["👍"], actor_chat={"id": -100300, "type": "channel"})
    del anonymous["message_reaction"]["user"]
    ids = [
        await fake.push(u)
        for u in (
            edited,
            from_bot,
            channel_post,
            broken,
            custom,
            not_an_answer,
            anonymous,
            {"message": "not an object"},
            {"unknown_kind": {}},
        )
    ]
    huge = await ask(fake, CUSTOMER, "订单" * 50_000)
    assert "太长" in huge.text
    for update_id in ids:
        await handled(server, fake, update_id)
    assert [s.text for s in fake.sent] == [ANSWER, huge.text]
    assert await server.bot.store.ratings() == []
    assert (await ask(fake, CUSTOMER, QUESTION)).text == ANSWER  # still serving


# --- ratings and corrections ------------------------------------------------------------------------


async def test_agent_reactions_rate_replace_and_retract(server: RunningServer, fake: FakeTelegram) -> None:
    answer = await ask(fake, GROUP, f"@{BOT_USERNAME} {QUESTION}", CUSTOMER, **MENTION)
    store = server.bot.store
    turn_id = await store.turn_for_answer_message("telegram", str(GROUP), str(answer.message_id))
    await handled(server, fake, await fake.push(reaction(GROUP, answer.message_id, AGENT, ["👍"])))
    assert [(r["turn_id"], r["rater"], r["role"], r["rating"]) for r in await store.ratings()] == [
        (turn_id, f"telegram:{AGENT}", "agent", 1)
    ]
    await handled(server, fake, await fake.push(reaction(GROUP, answer.message_id, AGENT, ["👎"], old=["👍"])))
    assert [(r["rater"], r["rating"]) for r in await store.ratings()] == [(f"telegram:{AGENT}", -1)]
    await handled(server, fake, await fake.push(reaction(GROUP, answer.message_id, AGENT, ["❤️"], old=["👎"])))
    assert [r["rating"] for r in await store.ratings()] == [1]  # ❤️ with its variation selector is ❤
    await handled(server, fake, await fake.push(reaction(GROUP, answer.message_id, AGENT, [], old=["❤️"])))
    assert await store.ratings() == []
    actions = [e["action"] for e in await store.audit_events() if e["actor"] == f"telegram:{AGENT}"]
    assert actions == ["rating", "rating", "rating", "rating_retracted"]


async def test_customer_reaction_is_customer_feedback(server: RunningServer, fake: FakeTelegram) -> None:
    answer = await ask(fake, CUSTOMER, QUESTION)
    await handled(server, fake, await fake.push(reaction(CUSTOMER, answer.message_id, CUSTOMER, ["🔥"])))
    [rating] = await server.bot.store.ratings()
    assert (rating["rater"], rating["role"], rating["rating"]) == (f"telegram:{CUSTOMER}", "customer", 1)


async def test_reactions_are_configurable(data_dir: Path, fake: FakeTelegram) -> None:
    async with serving(data_dir, fake, reactions="👌=1, 😢=-1") as server:
        answer = await ask(fake, GROUP, f"@{BOT_USERNAME} {QUESTION}", CUSTOMER, **MENTION)
        await handled(server, fake, await fake.push(reaction(GROUP, answer.message_id, AGENT, ["👍"])))
        assert await server.bot.store.ratings() == []
        await handled(server, fake, await fake.push(reaction(GROUP, answer.message_id, AGENT, ["😢"], old=["👍"])))
        assert [(r["role"], r["rating"]) for r in await server.bot.store.ratings()] == [("agent", -1)]


async def test_fix_by_agent_is_a_correction_and_refused_otherwise(server: RunningServer, fake: FakeTelegram) -> None:
    answer = await ask(fake, GROUP, f"@{BOT_USERNAME} {QUESTION}", CUSTOMER, **MENTION)
    refused = await ask(fake, GROUP, "/fix 请看物流页面", CUSTOMER, reply_to_message=reply_to(answer))
    assert "只有客服" in refused.text
    usage = await ask(fake, GROUP, "/fix", AGENT, reply_to_message=reply_to(answer))
    assert "/fix" in usage.text
    saved = await ask(fake, GROUP, "/fix 请在“我的订单”页面\n查看物流信息", AGENT, reply_to_message=reply_to(answer))
    assert "已保存" in saved.text
    [correction] = await server.bot.store.corrections()
    turn_id = await server.bot.store.turn_for_answer_message("telegram", str(GROUP), str(answer.message_id))
    assert (correction["turn_id"], correction["rater"], correction["text"]) == (
        turn_id,
        f"telegram:{AGENT}",
        "请在“我的订单”页面\n查看物流信息",
    )
    # ... and it is what the next tune learns for that question.
    splits, _ = await asyncio.to_thread(dataset.build, server.bot.settings.data_dir / "bot.sqlite3", [])
    [row] = [r for r in splits["train"] if r["source"] == "chats"]
    assert (row["channel"], row["label"], row["messages"][-1]["content"]) == (
        "telegram",
        "corrected",
        "请在“我的订单”页面\n查看物流信息",
    )


async def test_agent_chat_mirrors_and_rates_the_original_turn(data_dir: Path, fake: FakeTelegram) -> None:
    async with serving(data_dir, fake, trust_agent_room=True, agent_chat_id=AGENT_CHAT) as server:
        store = server.bot.store
        answer = await ask(fake, CUSTOMER, QUESTION)
        question_mirror, answer_mirror = await fake.wait_sent(2, chat_id=AGENT_CHAT)
        assert QUESTION in question_mirror.text and f"telegram:{CUSTOMER}" in question_mirror.text
        assert ANSWER in answer_mirror.text and answer_mirror.reply_to == question_mirror.message_id
        turn_id = await store.turn_for_answer_message("telegram", str(CUSTOMER), str(answer.message_id))
        mirrored = await store.turn_for_answer_message("telegram", str(AGENT_CHAT), str(answer_mirror.message_id))
        assert mirrored == turn_id

        member = 77  # not in AGENT_IDS: an agent by being in the agents' chat
        await handled(server, fake, await fake.push(reaction(AGENT_CHAT, answer_mirror.message_id, member, ["👎"])))
        await handled(server, fake, await fake.push(reaction(AGENT_CHAT, question_mirror.message_id, member, ["👍"])))
        assert [(r["turn_id"], r["rater"], r["role"], r["rating"]) for r in await store.ratings()] == [
            (turn_id, f"telegram:{member}", "agent", -1)
        ]
        # A reply to a mirror is talk among agents, not a question for the bot; /fix still works.
        chatter = await fake.push(
            message(AGENT_CHAT, "this one is wrong", member, reply_to_message=reply_to(answer_mirror))
        )
        saved = await ask(fake, AGENT_CHAT, "/fix 请查看物流页面", member, reply_to_message=reply_to(answer_mirror))
        assert "已保存" in saved.text
        await handled(server, fake, chatter)
        assert len([s for s in fake.sent if s.chat_id == AGENT_CHAT]) == 3
        assert [c["turn_id"] for c in await store.corrections()] == [turn_id]


async def test_handoff_to_an_agent_and_back(data_dir: Path, fake: FakeTelegram) -> None:
    async with serving(data_dir, fake, agent_chat_id=AGENT_CHAT) as server:
        assert (await ask(fake, CUSTOMER, QUESTION)).text == ANSWER
        await fake.wait_sent(2, chat_id=AGENT_CHAT)  # the mirrored question and answer
        asked = await ask(fake, CUSTOMER, "转人工")
        assert asked.text == HANDED_OFF[1]
        [notice] = (await fake.wait_sent(3, chat_id=AGENT_CHAT))[2:]
        assert f"telegram:{CUSTOMER}" in notice.text and QUESTION in notice.text and ANSWER in notice.text

        # While agents have it the bot is silent; the customer's messages reach the agents' chat.
        update_id = await fake.push(message(CUSTOMER, "我的包裹丢了,电话13812345678"))
        [waiting] = (await fake.wait_sent(4, chat_id=AGENT_CHAT))[3:]
        await handled(server, fake, update_id)
        assert "包裹丢了" in waiting.text and "13812345678" not in waiting.text
        assert len([s for s in fake.sent if s.chat_id == CUSTOMER]) == 2

        # Someone in the agents' chat who is not an agent is refused; an agent's reply reaches the customer.
        refused = await ask(fake, AGENT_CHAT, "我来回复", 77, reply_to_message=reply_to(waiting))
        assert "只有客服人员" in refused.text
        before = len([s for s in fake.sent if s.chat_id == CUSTOMER])
        await fake.push(message(AGENT_CHAT, "已为您补发,请留意快递", AGENT, reply_to_message=reply_to(waiting)))
        relayed = (await fake.wait_sent(before + 1, chat_id=CUSTOMER))[before]
        assert relayed.text == "已为您补发,请留意快递"

        released = await ask(fake, AGENT_CHAT, "/release", AGENT, reply_to_message=reply_to(notice))
        assert "交还" in released.text
        back = (await fake.wait_sent(before + 2, chat_id=CUSTOMER))[before + 1]
        assert "智能客服" in back.text
        assert (await ask(fake, CUSTOMER, QUESTION)).text == ANSWER
        stored = [t for t in await server.bot.store.turns() if t.outcome == "agent"]
        assert [(t.user_text, t.answer) for t in stored] == [("我的包裹丢了,电话[PHONE]", "已为您补发,请留意快递")]


async def test_a_private_answer_streams_as_a_draft_then_one_message(server: RunningServer, fake: FakeTelegram) -> None:
    update = message(CUSTOMER, STREAMED_Q)
    update_id = await fake.push(update)
    [sent] = await fake.wait_sent(1)
    await handled(server, fake, update_id)
    drafts = [d.text for d in fake.drafts]
    assert drafts and len({d.draft_id for d in fake.drafts}) == 1  # one animated draft
    assert all(d.can_stop and d.keep_on_stop for d in fake.drafts)  # with a stop button
    for earlier, later in zip(drafts, [*drafts[1:], STREAMED_A], strict=True):
        assert later.startswith(earlier) and later != earlier
    assert sent.text == STREAMED_A and not fake.edits  # the final message, sent once
    turn = await server.bot.store.turn_for_message("telegram", f"{CUSTOMER}:{update['message']['message_id']}")
    assert turn is not None and turn.answer == STREAMED_A
    assert await server.bot.store.turn_for_answer_message("telegram", str(CUSTOMER), str(sent.message_id)) == turn.id


async def test_a_group_answer_streams_into_one_message_edited_in_place(
    server: RunningServer, fake: FakeTelegram
) -> None:
    update = message(GROUP, f"@{BOT_USERNAME} {STREAMED_Q}", CUSTOMER, **MENTION)
    update_id = await fake.push(update)
    [sent] = await fake.wait_sent(1, chat_id=GROUP)
    await handled(server, fake, update_id)
    first_text = next(fields["text"] for method, fields in fake.calls if method == "sendMessage")
    texts = [first_text, *(text for message_id, text in fake.edits if message_id == sent.message_id)]
    assert len(texts) >= 2 and texts[-1] == sent.text == STREAMED_A and not fake.drafts
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:], strict=False))
    turn_id = await server.bot.store.turn_for_answer_message("telegram", str(GROUP), str(sent.message_id))
    assert turn_id is not None and len([s for s in fake.sent if s.chat_id == GROUP]) == 1


@pytest.fixture
async def paced_model() -> AsyncIterator[FakeModelServer]:
    """A model server answering PACED_A a word at a time (the starter answers in a few milliseconds,
    before anyone could press stop)."""
    model = FakeModelServer(VERSION, PACED_A, chunk_delay=PACE_S)
    await model.start()
    yield model
    await model.stop()


async def test_the_stop_button_stops_the_answer_and_the_customer_keeps_what_was_shown(
    data_dir: Path, fake: FakeTelegram, paced_model: FakeModelServer
) -> None:
    async with serving(data_dir, fake, bot={"model_backends": f"paced={paced_model.url}"}) as server:
        update = message(CUSTOMER, STREAMED_Q)
        update_id = await fake.push(update)
        await fake.wait_for(lambda: bool(fake.drafts))
        draft = fake.drafts[0]
        assert (draft.chat_id, draft.can_stop, draft.keep_on_stop) == (CUSTOMER, True, True)
        stop_id = await fake.press_stop(draft.draft_id)
        [sent] = await fake.wait_sent(1)
        await handled(server, fake, update_id)
        await handled(server, fake, stop_id)
        # The customer keeps what the draft showed, as a message; no draft came after it.
        assert {d.draft_id for d in fake.drafts} == {draft.draft_id}
        assert all(d.can_stop and d.keep_on_stop for d in fake.drafts)
        assert (sent.chat_id, sent.text) == (CUSTOMER, fake.drafts[-1].text) and len(fake.sent) == 1
        assert max(i for i, m in enumerate(fake.methods()) if m == "sendMessageDraft") < fake.methods().index(
            "sendMessage"
        )
        # Generation stopped: the turn is stored cancelled with what was generated until then, not cached.
        turn = await server.bot.store.turn_for_message("telegram", f"{CUSTOMER}:{update['message']['message_id']}")
        assert turn is not None and turn.outcome == "cancelled"
        assert turn.answer.startswith(sent.text) and PACED_A.startswith(turn.answer) and turn.answer != PACED_A
        assert len(server.bot.cache) == 0

        async def let_go() -> bool:  # the model server's stream was closed before its end
            return paced_model.hung_up == 1

        await eventually(let_go)
        # The kept message is the turn's answer: a reaction on it rates the turn.
        assert (
            await server.bot.store.turn_for_answer_message("telegram", str(CUSTOMER), str(sent.message_id)) == turn.id
        )


async def test_a_stop_for_no_running_answer_is_ignored(
    server: RunningServer, fake: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    stray = await fake.push(stopped_generation(CUSTOMER, 987654))  # a draft this bot never sent
    await handled(server, fake, stray)
    update_id = await fake.push(message(CUSTOMER, STREAMED_Q))
    [sent] = await fake.wait_sent(1)
    await handled(server, fake, update_id)
    late = await fake.press_stop(fake.drafts[-1].draft_id)  # pressed as the answer arrived: too late
    await handled(server, fake, late)
    assert [s.text for s in fake.sent] == [sent.text] == [STREAMED_A]
    [turn] = await server.bot.store.turns()
    assert (turn.outcome, turn.answer) == ("answered", STREAMED_A)
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert await server.bot.store.inbox_pending("telegram") == []


# --- delivery ---------------------------------------------------------------------------------------


async def test_flood_limit_is_waited_out(server: RunningServer, fake: FakeTelegram) -> None:
    fake.flood = 1
    began = time.monotonic()
    assert (await ask(fake, CUSTOMER, QUESTION)).text == ANSWER
    assert time.monotonic() - began >= 1  # retry_after=1
    assert fake.methods().count("sendMessage") == 2 and len(fake.sent) == 1


def split_text(text: str, limit: int = MAX_MESSAGE_CHARS) -> list[str]:
    return base.split_text(text, limit)


def test_split_text_at_sentences_and_lines() -> None:
    sentences = "这是一个很长的回答。" * 500  # 5,000 characters
    parts = split_text(sentences)
    assert [len(p) for p in parts] == [4090, 910] and all(p.endswith("。") for p in parts)
    assert "".join(parts) == sentences
    lines = "\n".join(f"line {i}: the parcel left the warehouse" for i in range(200))
    parts = split_text(lines, 1000)
    assert all(len(p) <= 1000 for p in parts) and "\n".join(parts) == lines
    assert split_text("x" * 5000) == ["x" * 4096, "x" * 904]
    assert [len(p) for p in split_text("😀" * 3000)] == [2048, 952]  # Telegram counts UTF-16 units
    assert split_text("short answer") == ["short answer"]


async def test_long_answer_is_sent_in_parts_all_linked(server: RunningServer, fake: FakeTelegram) -> None:
    await ask(fake, CUSTOMER, QUESTION)
    [turn] = await server.bot.store.turns()
    ids = await channel_of(server).send(
        Place(str(CUSTOMER)), "物流信息请在订单页面查看。" * 400, turn.id
    )  # 5,200 characters
    assert len(ids) == 2 and [len(s.text) for s in fake.sent[1:]] == [4095, 1105]
    for message_id in ids:
        assert await server.bot.store.turn_for_answer_message("telegram", str(CUSTOMER), str(message_id)) == turn.id


async def test_update_delivered_twice_is_answered_once(server: RunningServer, fake: FakeTelegram) -> None:
    update = message(CUSTOMER, QUESTION)
    update_id = await fake.push(update)
    await fake.wait_sent(1)
    await handled(server, fake, update_id)
    await fake.push({**update, "update_id": update_id})  # Telegram sends it again
    await fake.wait_for(lambda: not fake.updates)
    await handled(server, fake, update_id)
    assert len(fake.sent) == 1 and len(await server.bot.store.turns()) == 1


async def test_pending_updates_are_answered_once_after_restart(data_dir: Path, fake: FakeTelegram) -> None:
    """What a crash leaves: two recorded updates, one that never reached the pipeline and one answered
    and stored but not sent. The next start sends each answer exactly once."""
    unseen, unsent = message(CUSTOMER, QUESTION), message(CUSTOMER + 1, QUESTION)
    crashed = await build_bot(make_settings(data_dir))
    await crashed.store.inbox_add("telegram", "500", {"update_id": 500, **unseen})
    await crashed.store.inbox_add("telegram", "501", {"update_id": 501, **unsent})
    chat = CUSTOMER + 1
    await crashed.dialogue.handle(
        UserMessage("telegram", str(chat), str(chat), f"{chat}:{unsent['message']['message_id']}", QUESTION)
    )
    await crashed.close()

    async with serving(data_dir, fake) as server:
        sent = await fake.wait_sent(2)
        await eventually(lambda: no_pending(server))
        assert sorted((s.chat_id, s.text) for s in sent) == [(CUSTOMER, ANSWER), (chat, ANSWER)]
        assert len(await server.bot.store.turns()) == 2
        for s in sent:
            assert await server.bot.store.turn_for_answer_message("telegram", str(s.chat_id), str(s.message_id))
    assert len(fake.sent) == 2


async def no_pending(server: RunningServer) -> bool:
    return not await server.bot.store.inbox_pending("telegram")


def bot_env(data_dir: Path, fake: FakeTelegram) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOT_", "TELEGRAM_", "SLACK_", "AGENT_IDS"))}
    return env | {
        "BOT_DATA_DIR": str(data_dir),
        "BOT_HTTP_PORT": str(free_port()),
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_API_BASE": fake.url,
        "PYTHONPATH": str(ROOT),
    }


async def test_killed_while_sending_answers_once_after_restart(
    data_dir: Path, fake: FakeTelegram, tmp_path: Path
) -> None:
    """`python -m bot run` is killed with SIGKILL after it confirmed the update to Telegram and while
    its answer is on the wire; the restarted bot answers once."""
    env, log_path = bot_env(data_dir, fake), tmp_path / "bot.log"
    fake.hold_sends = True
    update_id = await fake.push(message(CUSTOMER, QUESTION))
    with open(log_path, "wb") as log:

        async def run() -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "run", cwd=tmp_path, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
            )

        first = await run()
        try:
            await fake.wait_for(lambda: fake.held == 1 and fake.confirmed > update_id, timeout=120)
        finally:
            first.kill()
            await first.wait()
        await fake.release_sends()
        second = await run()
        try:
            [sent] = await fake.wait_sent(1, timeout=120)
            second.send_signal(signal.SIGTERM)  # a clean stop marks the update done
            assert await asyncio.wait_for(second.wait(), 30) == 0
        finally:
            if second.returncode is None:
                second.kill()
                await second.wait()
    assert (sent.chat_id, sent.text) == (CUSTOMER, ANSWER) and len(fake.sent) == 1
    store = await Store.open(data_dir / "bot.sqlite3")
    try:
        assert len(await store.turns()) == 1 and await store.inbox_pending("telegram") == []
    finally:
        await store.close()
    assert TOKEN not in log_path.read_text()


# --- webhook ----------------------------------------------------------------------------------------


async def test_webhook(data_dir: Path, fake: FakeTelegram) -> None:
    url, secret = "https://bot.example.com/telegram/webhook", "hook-secret-123"
    async with serving(data_dir, fake, webhook_url=url, webhook_secret=secret) as server:
        _, fields = next(call for call in fake.calls if call[0] == "setWebhook")
        assert (fields["url"], fields["secret_token"]) == (url, secret)
        assert {"message_reaction", "stopped_message_generation"} <= set(fields["allowed_updates"])
        endpoint = f"http://127.0.0.1:{server.port}/telegram/webhook"
        update = {"update_id": 900, **message(CUSTOMER, QUESTION)}
        good = {"X-Telegram-Bot-Api-Secret-Token": secret}
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"}):
                async with http.post(endpoint, json=update, headers=headers) as response:
                    assert response.status == 401
            assert await server.bot.store.inbox_pending("telegram") == []
            rejected = await server.bot.store.audit_events(action="webhook_rejected")
            assert [(e["channel"], e["outcome"]) for e in rejected] == [("telegram", "refused")] * 2
            for body in (b"{not json", b'{"no": "update_id"}', b"[1, 2]"):
                async with http.post(endpoint, data=body, headers=good) as response:
                    assert response.status == 400
            for _ in range(2):  # Telegram retries when it misses our 200: still one answer
                async with http.post(endpoint, json=update, headers=good) as response:
                    assert response.status == 200
            stop = {"update_id": 901, **stopped_generation(CUSTOMER, 987654)}  # no such draft: ignored
            async with http.post(endpoint, json=stop, headers=good) as response:
                assert response.status == 200
        [sent] = await fake.wait_sent(1)
        assert (sent.chat_id, sent.text) == (CUSTOMER, ANSWER)
        await eventually(lambda: no_pending(server))
        assert len(fake.sent) == 1 and "getUpdates" not in fake.methods()
