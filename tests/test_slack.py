"""Slack channel end to end: signed events over real HTTP to the bot's /slack/events, answers to a
fake Slack Web API, both on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import sqlite3
import time
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from slack_sdk.signature import SignatureVerifier

import adapters.slack
from adapters.base import split_text
from adapters.slack import RATE_ACTION, SlackChannel, escape
from bot.__main__ import start
from bot.config import SlackSettings
from bot.handoff import HANDED_OFF
from bot.server import RunningServer
from bot.service import ChannelService
from bot.store import Store
from tests.fakes.openai_server import FakeModelServer
from tests.fakes.slack_api import BOT_USER, FakeSlackApi
from tests.support import ORDER_A as ANSWER
from tests.support import ORDER_Q as QUESTION
from tests.support import make_settings
from tests.test_backends import VERSION
from tests.test_telegram import STREAMED_A, STREAMED_Q
from tuning import dataset

TOKEN = "xoxb-test-bot-token"
SECRET = "test-signing-secret-123"
AGENT, CUSTOMER = "UAGENT", "UCUST"
DM, PUBLIC, AGENTS = "D100", "C200", "C300"
# What the paced fake model answers (a word every PACE_S): four clauses, and markup that Slack escapes.
PACED_A = "We accept Alipay, WeChat Pay & UnionPay cards, and Visa. Cash on delivery is not available."
PACE_S = 0.1


def envelope(event: dict[str, Any], event_id: str) -> dict[str, Any]:
    return {
        "token": "legacy",
        "team_id": "T1",
        "api_app_id": "A1",
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()),
        "event": event,
        "authorizations": [{"team_id": "T1", "user_id": BOT_USER, "is_bot": True}],
    }


def signed(body: str, age_s: float = 0, retry: int | None = None) -> dict[str, str]:
    """The headers Slack sends with `body`: a JSON body signed `age_s` ago; `retry`: its Nth redelivery."""
    timestamp = str(int(time.time() - age_s))
    headers = {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": SignatureVerifier(SECRET).generate_signature(timestamp=timestamp, body=body),
    }
    if retry:
        headers |= {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
    return headers


class Slack:
    """The bot's server with Slack turned on, and a way to send it events as Slack does."""

    def __init__(self, data_dir: Path, api: FakeSlackApi, bot: dict[str, Any] | None = None, **overrides: Any) -> None:
        self.data_dir, self.api, self.overrides, self.bot_overrides = data_dir, api, overrides, bot or {}
        self.server: RunningServer | None = None
        self.http = aiohttp.ClientSession()
        self._ts = itertools.count(1)
        self._event_ids = itertools.count(1)

    async def start(self) -> None:
        slack = SlackSettings(
            _env_file=None, bot_token=TOKEN, signing_secret=SECRET, api_base=self.api.url, **self.overrides
        )
        settings = make_settings(self.data_dir, agent_ids=f"slack:{AGENT}", **self.bot_overrides)
        self.server = await start(settings, {"slack": slack})

    async def stop(self) -> None:
        if self.server:
            await self.server.stop()
            self.server = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    @property
    def store(self) -> Store:
        assert self.server
        return self.server.bot.store

    def ts(self) -> str:
        return f"1700000000.{next(self._ts):06d}"

    async def post(
        self,
        body: str,
        age_s: float = 0,
        signature: str | None = None,
        retry: int | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, str]:
        assert self.server
        headers = signed(body, age_s, retry) | {"Content-Type": content_type}
        if signature:
            headers["X-Slack-Signature"] = signature
        url = f"http://127.0.0.1:{self.server.port}/slack/events"
        async with self.http.post(url, data=body.encode(), headers=headers) as response:
            return response.status, await response.text()

    async def send(self, event: dict[str, Any], event_id: str | None = None, retry: int | None = None) -> str:
        """Deliver one event; returns its event_id."""
        event_id = event_id or f"Ev{next(self._event_ids):04d}"
        status, _ = await self.post(json.dumps(envelope(event, event_id), ensure_ascii=False), retry=retry)
        assert status == 200
        return event_id

    async def dm(self, text: str, user: str = CUSTOMER, **extra: Any) -> str:
        ts = self.ts()
        await self.send(
            {
                "type": "message",
                "channel": DM,
                "channel_type": "im",
                "user": user,
                "text": text,
                "ts": ts,
                "event_ts": ts,
                **extra,
            }
        )
        return ts

    async def mention(self, text: str, thread_ts: str | None = None, channel: str = PUBLIC) -> str:
        ts = self.ts()
        event = {
            "type": "app_mention",
            "channel": channel,
            "user": CUSTOMER,
            "text": f"<@{BOT_USER}> {text}",
            "ts": ts,
            "event_ts": ts,
        }
        await self.send(event | ({"thread_ts": thread_ts} if thread_ts else {}))
        return ts

    async def in_thread(self, text: str, thread_ts: str | None, user: str = CUSTOMER, channel: str = PUBLIC) -> str:
        ts = self.ts()
        event = {
            "type": "message",
            "channel": channel,
            "channel_type": "channel",
            "user": user,
            "text": text,
            "ts": ts,
            "event_ts": ts,
        }
        await self.send(event | ({"thread_ts": thread_ts} if thread_ts else {}))
        return ts

    async def react(self, reaction: str, channel: str, ts: str, user: str, added: bool = True) -> None:
        await self.send(
            {
                "type": "reaction_added" if added else "reaction_removed",
                "user": user,
                "reaction": reaction,
                "item": {"type": "message", "channel": channel, "ts": ts},
                "item_user": BOT_USER,
                "event_ts": self.ts(),
            }
        )

    async def settled(self, timeout: float = 20.0) -> None:
        """Wait until every event recorded is handled: work is only ever scheduled for a recorded event,
        and marked done last, so after this no further answer can come."""
        deadline = time.monotonic() + timeout
        while await self.store.inbox_pending("slack"):
            assert time.monotonic() < deadline, "events still not handled"
            await asyncio.sleep(0.02)


@pytest.fixture
async def api() -> AsyncIterator[FakeSlackApi]:
    fake = FakeSlackApi(TOKEN)
    await fake.start()
    yield fake
    await fake.stop()


async def open_slack(data_dir: Path, api: FakeSlackApi, bot: dict[str, Any] | None = None, **overrides: Any) -> Slack:
    slack = Slack(data_dir, api, bot, **overrides)
    await slack.start()
    return slack


async def close_slack(slack: Slack) -> None:
    await slack.stop()
    await slack.http.close()


@pytest.fixture
async def slack(data_dir: Path, api: FakeSlackApi) -> AsyncIterator[Slack]:
    running = await open_slack(data_dir, api)
    yield running
    await close_slack(running)


@pytest.fixture
async def mirrored(data_dir: Path, api: FakeSlackApi) -> AsyncIterator[Slack]:
    running = await open_slack(data_dir, api, agent_channel=AGENTS)
    yield running
    await close_slack(running)


async def test_direct_message_is_answered(slack: Slack, api: FakeSlackApi, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ts = await slack.dm(QUESTION)
    [post] = await api.wait_for_posts(1)
    assert (post.channel, post.text, post.thread_ts) == (DM, ANSWER, None)
    turn = await slack.store.turn_for_message("slack", f"{DM}:{ts}")
    assert turn and turn.conversation_id == DM and turn.user_id == CUSTOMER
    assert await slack.store.turn_for_answer_message("slack", DM, post.ts) == turn.id
    await slack.settled()
    assert TOKEN not in caplog.text and SECRET not in caplog.text


async def test_mention_is_answered_in_its_thread(slack: Slack, api: FakeSlackApi) -> None:
    ts = await slack.mention(QUESTION)
    # Slack also sends the same message as a plain channel message: it must not be answered twice.
    await slack.send(
        {
            "type": "message",
            "channel": PUBLIC,
            "channel_type": "channel",
            "user": CUSTOMER,
            "text": f"<@{BOT_USER}> {QUESTION}",
            "ts": ts,
            "event_ts": ts,
        }
    )
    [post] = await api.wait_for_posts(1)
    assert (post.channel, post.text, post.thread_ts) == (PUBLIC, ANSWER, ts)
    turn = await slack.store.turn_for_message("slack", f"{PUBLIC}:{ts}")
    assert turn and turn.conversation_id == f"{PUBLIC}:{ts}"
    await slack.settled()
    assert len(api.posts) == 1


async def test_followed_thread_uses_the_thread_as_context(slack: Slack, api: FakeSlackApi) -> None:
    root = await slack.mention(QUESTION)
    await api.wait_for_posts(1)
    await slack.in_thread(QUESTION, thread_ts=root)  # no mention needed once the bot is in the thread
    posts = await api.wait_for_posts(2)
    assert posts[1].thread_ts == root
    history = await slack.store.history("slack", f"{PUBLIC}:{root}", session=1)
    assert len(history) == 2
    assert history[0].cached is False and history[1].cached is False  # with context, the cache stands aside
    # Threads the bot was never asked in, and plain channel messages, are left to the people there.
    await slack.in_thread(QUESTION, thread_ts=slack.ts())
    await slack.in_thread(QUESTION, thread_ts=None)
    await slack.settled()
    assert len(api.posts) == 2


async def test_reset_in_a_thread_starts_a_new_session(slack: Slack, api: FakeSlackApi) -> None:
    root = await slack.mention(QUESTION)
    await api.wait_for_posts(1)
    await slack.mention("reset", thread_ts=root)
    posts = await api.wait_for_posts(2)
    assert posts[1].text == "Started a new conversation." and posts[1].thread_ts == root
    ts = await slack.in_thread(QUESTION, thread_ts=root)
    await api.wait_for_posts(3)
    turn = await slack.store.turn_for_message("slack", f"{PUBLIC}:{ts}")
    assert turn and turn.session == 2 and turn.cached  # no context left, so the cached answer serves


async def test_retried_event_is_answered_once(slack: Slack, api: FakeSlackApi) -> None:
    ts = slack.ts()
    event = {"type": "message", "channel": DM, "channel_type": "im", "user": CUSTOMER, "text": QUESTION, "ts": ts}
    event_id = await slack.send(event)
    await slack.send(event, event_id, retry=1)
    await slack.send(event, event_id, retry=2)
    await api.wait_for_posts(1)
    await slack.settled()
    assert len(api.posts) == 1
    assert len(await slack.store.turns()) == 1


async def test_retry_after_a_restart_is_not_answered_again(slack: Slack, api: FakeSlackApi) -> None:
    ts = slack.ts()
    event = {"type": "message", "channel": DM, "channel_type": "im", "user": CUSTOMER, "text": QUESTION, "ts": ts}
    event_id = await slack.send(event)
    await api.wait_for_posts(1)
    await slack.restart()
    await slack.send(event, event_id, retry=1)
    await slack.send(event, event_id, retry=2)
    await slack.settled()
    assert len(api.posts) == 1


async def test_event_recorded_before_a_crash_is_answered_on_start(data_dir: Path, api: FakeSlackApi) -> None:
    ts = "1700000000.000001"
    event = {"type": "message", "channel": DM, "channel_type": "im", "user": CUSTOMER, "text": QUESTION, "ts": ts}
    store = await Store.open(data_dir / "bot.sqlite3")  # acknowledged, then the process died
    assert await store.inbox_add("slack", "EvCrash", envelope(event, "EvCrash"))
    await store.close()
    slack = await open_slack(data_dir, api)
    try:
        [post] = await api.wait_for_posts(1)
        assert post.text == ANSWER
        await slack.send(event, "EvCrash", retry=1)  # Slack's retry arrives after the restart
        await slack.settled()
        assert len(api.posts) == 1
    finally:
        await close_slack(slack)


async def test_answer_posted_just_before_a_crash_is_not_posted_again(mirrored: Slack, api: FakeSlackApi) -> None:
    await mirrored.dm(QUESTION)
    await api.wait_for_posts(2)  # the answer and its mirror
    await mirrored.settled()
    await mirrored.stop()
    with closing(sqlite3.connect(mirrored.data_dir / "bot.sqlite3")) as db, db:  # died before marking it done
        db.execute("UPDATE inbox SET done_at=NULL")
    await mirrored.start()
    await mirrored.settled()
    assert len(api.posts) == 2


async def test_reactions_rate_the_answer(slack: Slack, api: FakeSlackApi) -> None:
    ts = await slack.dm(QUESTION)
    [post] = await api.wait_for_posts(1)
    turn = await slack.store.turn_for_message("slack", f"{DM}:{ts}")
    assert turn
    await slack.react("+1::skin-tone-3", DM, post.ts, AGENT)
    await slack.react("-1", DM, post.ts, CUSTOMER)
    await slack.react("tada", DM, post.ts, AGENT)  # not a rating
    await slack.react("+1", DM, ts, AGENT)  # the customer's question, not an answer
    await slack.settled()
    ratings = {r["rater"]: (r["rating"], r["role"]) for r in await slack.store.ratings(turn.id)}
    assert ratings == {f"slack:{AGENT}": (1, "agent"), f"slack:{CUSTOMER}": (-1, "customer")}

    await slack.react("thumbsdown", DM, post.ts, AGENT, added=False)  # not the agent's rating: kept
    await slack.react("+1::skin-tone-3", DM, post.ts, AGENT, added=False)
    await slack.settled()
    assert [r["rater"] for r in await slack.store.ratings(turn.id)] == [f"slack:{CUSTOMER}"]
    assert len(api.posts) == 1


async def test_fix_by_an_agent_stores_a_correction(slack: Slack, api: FakeSlackApi) -> None:
    root = await slack.mention(QUESTION)
    await api.wait_for_posts(1)
    turn = await slack.store.turn_for_message("slack", f"{PUBLIC}:{root}")
    assert turn
    await slack.in_thread("!fix 请在“我的订单”页面输入订单号查看物流", thread_ts=root, user=AGENT)
    await api.wait_for_posts(2)
    [correction] = await slack.store.corrections()
    assert (correction["turn_id"], correction["rater"]) == (turn.id, f"slack:{AGENT}")
    assert correction["text"] == "请在“我的订单”页面输入订单号查看物流"
    # ... and it is what the next tune learns for that question.
    splits, _ = await asyncio.to_thread(dataset.build, slack.data_dir / "bot.sqlite3", [])
    [row] = [r for r in splits["train"] if r["source"] == "chats"]
    assert (row["channel"], row["label"], row["messages"][-1]["content"]) == (
        "slack",
        "corrected",
        "请在“我的订单”页面输入订单号查看物流",
    )

    await slack.in_thread("!fix something else", thread_ts=root, user=CUSTOMER)
    posts = await api.wait_for_posts(3)
    assert "only agents" in posts[2].text and posts[2].thread_ts == root
    assert len(await slack.store.corrections()) == 1
    assert len(await slack.store.turns()) == 1  # neither !fix was taken for a question


async def test_an_answer_streams_into_one_post_that_ends_as_the_stored_answer(slack: Slack, api: FakeSlackApi) -> None:
    ts = await slack.dm(STREAMED_Q)
    [post] = await api.wait_for_posts(1)
    await slack.settled()
    [post] = api.posts  # as it is now, after its updates
    texts = [text for updated, text in api.updates if updated == post.ts]
    assert texts and texts[-1] == post.text == STREAMED_A and post.channel == DM
    assert not api.stream_calls  # a DM outside a thread has no thread to stream into: posted and edited
    turn = await slack.store.turn_for_message("slack", f"{DM}:{ts}")
    assert turn is not None and turn.answer == STREAMED_A
    assert await slack.store.turn_for_answer_message("slack", DM, post.ts) == turn.id


@pytest.fixture
def append_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every clause of a streamed answer is appended as it comes (no pacing), so each is a call to check."""
    monkeypatch.setattr(adapters.slack, "STREAM_APPEND_EVERY_S", 0.0)


@pytest.fixture
async def paced_model() -> AsyncIterator[FakeModelServer]:
    """A model server answering PACED_A a word at a time, so that its clauses come one by one."""
    model = FakeModelServer(VERSION, PACED_A, chunk_delay=PACE_S)
    await model.start()
    yield model
    await model.stop()


@pytest.fixture
async def paced(data_dir: Path, api: FakeSlackApi, paced_model: FakeModelServer) -> AsyncIterator[Slack]:
    running = await open_slack(data_dir, api, bot={"model_backends": f"paced={paced_model.url}"})
    yield running
    await close_slack(running)


def feedback_buttons(blocks: list[dict[str, Any]] | None) -> dict[str, Any]:
    return next(b for b in blocks or [] if b["type"] == "context_actions")["elements"][0]


@pytest.mark.usefixtures("append_at_once")
async def test_a_thread_answer_streams_with_slacks_streaming_methods(paced: Slack, api: FakeSlackApi) -> None:
    slack = paced
    root = await slack.mention(STREAMED_Q)
    await api.wait_for_posts(1)
    await slack.settled()
    [post] = api.posts  # the streamed message, as it ended
    calls = api.streamed(post.ts)
    methods = [c.method for c in calls]
    assert methods[0] == "chat.startStream" and methods[-1] == "chat.stopStream"
    assert set(methods[1:-1]) == {"chat.appendStream"}  # at least one: the clauses came one by one
    # Each call sends only what is new; the texts shown so far grow clause by clause, in order, and
    # together they are the final answer (as Slack text: & escaped), which is the stored one.
    shown = list(itertools.accumulate(c.text for c in calls))
    assert all(c.text for c in calls) and all(text[-1] in ",." for text in shown[:-1])
    assert shown[0] == "We accept Alipay," and "WeChat Pay &amp; UnionPay cards," in shown[1]
    assert shown[-1] == post.text == escape(PACED_A)
    start = calls[0].args
    assert (post.channel, post.thread_ts, start["thread_ts"]) == (PUBLIC, root, root)
    assert (start["recipient_user_id"], start["recipient_team_id"]) == (CUSTOMER, "T1")
    buttons = feedback_buttons(calls[-1].blocks)  # the stop carries the feedback buttons
    assert (buttons["type"], buttons["action_id"]) == ("feedback_buttons", RATE_ACTION)
    assert not api.updates  # nothing posted and edited besides
    turn = await slack.store.turn_for_message("slack", f"{PUBLIC}:{root}")
    assert turn is not None and turn.answer == PACED_A and turn.outcome == "answered"
    assert await slack.store.turn_for_answer_message("slack", PUBLIC, post.ts) == turn.id  # rated by its buttons
    await slack.react("-1", PUBLIC, post.ts, CUSTOMER)
    await slack.settled()
    assert [r["rating"] for r in await slack.store.ratings(turn.id)] == [-1]


@pytest.mark.usefixtures("append_at_once")
async def test_a_blocked_word_is_never_appended_to_a_stream(
    data_dir: Path, api: FakeSlackApi, paced_model: FakeModelServer, tmp_path: Path
) -> None:
    """ "alipay" is masked in what is streamed; "wechat" blocks the answer: its clause is never sent, and
    the streamed message is edited to the blocked reply, which is what is stored."""
    lexicon = tmp_path / "words.txt"
    lexicon.write_text("wechat\tfraud\nalipay\tabuse\n", encoding="utf-8")
    bot = {"lexicons": str(lexicon), "model_backends": f"paced={paced_model.url}"}
    slack = await open_slack(data_dir, api, bot=bot)
    try:
        root = await slack.mention(STREAMED_Q)
        await api.wait_for_posts(1)
        await slack.settled()
        [post] = api.posts
        calls = api.streamed(post.ts)
        assert calls and [c.method for c in calls][-1] == "chat.stopStream"
        assert all("wechat" not in c.text.lower() and "alipay" not in c.text.lower() for c in calls)
        assert "".join(c.text for c in calls) == "We accept ******,"  # at most the first clause, masked
        turn = await slack.store.turn_for_message("slack", f"{PUBLIC}:{root}")
        assert turn is not None and turn.outcome == "blocked" and turn.answer
        assert post.text == turn.answer and api.updates[-1] == (post.ts, turn.answer)
        assert feedback_buttons(api.blocks[post.ts])["action_id"] == RATE_ACTION
    finally:
        await close_slack(slack)


@pytest.mark.parametrize("refusal", ["not_allowed", "unknown_method"])
async def test_a_refused_stream_falls_back_to_post_and_update(
    slack: Slack, api: FakeSlackApi, caplog: pytest.LogCaptureFixture, refusal: str
) -> None:
    caplog.set_level(logging.INFO, logger="adapters.slack")
    api.stream_error = refusal
    root = await slack.mention(STREAMED_Q)
    await api.wait_for_posts(1)
    await slack.settled()
    [post] = api.posts
    texts = [text for updated, text in api.updates if updated == post.ts]
    assert texts and texts[-1] == post.text == STREAMED_A and post.thread_ts == root
    assert feedback_buttons(api.blocks[post.ts])["action_id"] == RATE_ACTION
    turn = await slack.store.turn_for_message("slack", f"{PUBLIC}:{root}")
    assert turn is not None and turn.answer == STREAMED_A
    assert await slack.store.turn_for_answer_message("slack", PUBLIC, post.ts) == turn.id
    assert api.refused_streams == 1 and not api.stream_calls
    # Decided once: the next answer in a channel is posted and edited without asking again.
    await slack.in_thread(STREAMED_Q, thread_ts=root)
    second = (await api.wait_for_posts(2))[1]
    await slack.settled()
    assert api.refused_streams == 1 and second.thread_ts == root and second.text
    [line] = [r.getMessage() for r in caplog.records if refusal in r.getMessage()]
    assert "posted and edited" in line


@pytest.mark.usefixtures("append_at_once")
async def test_a_stream_that_breaks_off_is_finished_by_editing_it(paced: Slack, api: FakeSlackApi) -> None:
    api.append_error = "message_not_in_streaming_state"  # e.g. it expired on Slack's side
    root = await paced.mention(STREAMED_Q)
    await api.wait_for_posts(1)
    await paced.settled()
    [post] = api.posts
    assert [c.method for c in api.streamed(post.ts)] == ["chat.startStream"]
    assert api.updates and api.updates[-1] == (post.ts, escape(PACED_A)) and post.text == escape(PACED_A)
    assert feedback_buttons(api.blocks[post.ts])["action_id"] == RATE_ACTION
    turn = await paced.store.turn_for_message("slack", f"{PUBLIC}:{root}")
    assert turn is not None and await paced.store.turn_for_answer_message("slack", PUBLIC, post.ts) == turn.id
    api.append_error = None  # a passing fault: the next answer streams again (in the thread: not cached)
    await paced.in_thread(STREAMED_Q, thread_ts=root)
    await api.wait_for_posts(2)
    await paced.settled()
    assert [c.method for c in api.stream_calls][-1] == "chat.stopStream" and len(api.posts) == 2


async def test_feedback_buttons_under_an_answer_rate_it_like_a_reaction(slack: Slack, api: FakeSlackApi) -> None:
    ts = await slack.dm(QUESTION)
    [post] = await api.wait_for_posts(1)
    await slack.settled()
    buttons = next(b for b in api.blocks[post.ts] if b["type"] == "context_actions")["elements"][0]
    assert (buttons["type"], buttons["action_id"]) == ("feedback_buttons", RATE_ACTION)
    assert (buttons["positive_button"]["value"], buttons["negative_button"]["value"]) == ("1", "-1")

    async def click(user: str, value: str, action_ts: str) -> None:
        payload = {
            "type": "block_actions",
            "team": {"id": "T1"},
            "api_app_id": "A1",
            "token": "legacy",
            "user": {"id": user},
            "container": {"type": "message", "message_ts": post.ts, "channel_id": DM},
            "actions": [{"type": "feedback_buttons", "action_id": RATE_ACTION, "value": value, "action_ts": action_ts}],
        }
        form = "payload=" + urllib.parse.quote(json.dumps(payload))
        assert (await slack.post(form, content_type="application/x-www-form-urlencoded"))[0] == 200

    await click(CUSTOMER, "-1", "1700000100.1")
    await click(CUSTOMER, "-1", "1700000100.1")  # Slack retried the same click: recorded once
    await click(AGENT, "1", "1700000100.2")
    await slack.settled()
    turn = await slack.store.turn_for_message("slack", f"{DM}:{ts}")
    assert turn is not None
    ratings = {(r["rater"], r["role"], r["rating"]) for r in await slack.store.ratings(turn.id)}
    assert ratings == {(f"slack:{CUSTOMER}", "customer", -1), (f"slack:{AGENT}", "agent", 1)}


async def test_agent_channel_mirror_can_be_rated_and_fixed(mirrored: Slack, api: FakeSlackApi) -> None:
    ts = await mirrored.dm(QUESTION)
    answer, mirror = await api.wait_for_posts(2)
    assert answer.channel == DM and mirror.channel == AGENTS
    assert QUESTION in mirror.text and ANSWER in mirror.text and f"<@{CUSTOMER}>" in mirror.text
    turn = await mirrored.store.turn_for_message("slack", f"{DM}:{ts}")
    assert turn
    await mirrored.react("white_check_mark", AGENTS, mirror.ts, AGENT)
    await mirrored.in_thread("!fix 更好的答案", thread_ts=mirror.ts, user=AGENT, channel=AGENTS)
    await api.wait_for_posts(3)
    await mirrored.settled()
    assert [(r["rating"], r["role"]) for r in await mirrored.store.ratings(turn.id)] == [(1, "agent")]
    assert [(c["turn_id"], c["text"]) for c in await mirrored.store.corrections()] == [(turn.id, "更好的答案")]


async def test_two_downvotes_hand_off_and_an_agent_answers_in_the_thread(mirrored: Slack, api: FakeSlackApi) -> None:
    first_ts = await mirrored.dm(QUESTION)
    second_ts = await mirrored.dm("怎么退货?")
    await api.wait_for_posts(4)  # two answers, two mirrors
    answers = [p for p in api.posts if p.channel == DM]
    await mirrored.settled()
    assert first_ts and second_ts and len(answers) == 2
    for answer in answers:
        await mirrored.react("-1", DM, answer.ts, CUSTOMER)
    posts = await api.wait_for_posts(6)
    told, notice = posts[4:]
    assert (told.channel, told.text) == (DM, HANDED_OFF[1])
    assert notice.channel == AGENTS and "👎" in notice.text and ANSWER in notice.text

    await mirrored.dm("还在吗?")
    [waiting] = (await api.wait_for_posts(7))[6:]
    assert waiting.channel == AGENTS and "还在吗" in waiting.text
    await mirrored.in_thread("在的,我来帮您 &lt;退货&gt;", thread_ts=notice.ts, user=AGENT, channel=AGENTS)
    [relayed] = (await api.wait_for_posts(8))[7:]
    assert (relayed.channel, relayed.thread_ts, relayed.text) == (DM, None, "在的,我来帮您 &lt;退货&gt;")
    await mirrored.in_thread("!release", thread_ts=waiting.ts, user=AGENT, channel=AGENTS)
    back, confirmed = sorted((await api.wait_for_posts(10))[8:], key=lambda p: p.channel != DM)
    assert back.channel == DM and "智能客服" in back.text
    assert (confirmed.channel, confirmed.thread_ts) == (AGENTS, waiting.ts)
    await mirrored.settled()
    [agent_turn] = [t for t in await mirrored.store.turns() if t.outcome == "agent"]
    assert (agent_turn.user_text, agent_turn.answer) == ("还在吗?", "在的,我来帮您 <退货>")


async def test_long_mirror_is_split_and_every_part_rates_the_turn(mirrored: Slack, api: FakeSlackApi) -> None:
    question = "请问这个订单什么时候发货。" * 306  # 3978 characters: within BOT_MAX_MESSAGE_CHARS
    ts = await mirrored.dm(question)
    posts = await api.wait_for_posts(3)
    parts = [p for p in posts if p.channel == AGENTS]
    assert len(parts) == 2 and all(len(p.text) <= 4000 for p in parts)
    turn = await mirrored.store.turn_for_message("slack", f"{DM}:{ts}")
    assert turn
    for part in parts:
        assert await mirrored.store.turn_for_answer_message("slack", AGENTS, part.ts) == turn.id


async def test_bad_signatures_are_rejected(slack: Slack, api: FakeSlackApi) -> None:
    body = json.dumps(
        envelope(
            {
                "type": "message",
                "channel": DM,
                "channel_type": "im",
                "user": CUSTOMER,
                "text": QUESTION,
                "ts": slack.ts(),
            },
            "EvBad",
        )
    )
    assert (await slack.post(body, signature="v0=" + "0" * 64))[0] == 401
    assert (await slack.post(body, age_s=6 * 60))[0] == 401  # correctly signed, but stale (a replay)
    assert (await slack.post("{not json", signature="v0=forged"))[0] == 401
    assert (await slack.post(body, age_s=-6 * 60))[0] == 401
    await slack.settled()
    assert api.posts == [] and await slack.store.turns() == []
    assert len(await slack.store.audit_events(action="webhook_rejected")) == 4  # audited, bodies not kept


async def test_unreadable_or_unknown_events_are_acknowledged_and_ignored(
    slack: Slack, api: FakeSlackApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="adapters.slack")
    for body in [
        "{not json",
        "[1, 2]",
        '{"type": "event_callback", "authorizations": 5}',
        json.dumps(envelope({"type": "team_join", "user": {"id": "U9"}}, "EvUnknown")),
        json.dumps({"type": "event_callback", "event": {"type": "message"}}),
    ]:
        assert (await slack.post(body))[0] == 200, body
    await slack.settled()
    assert api.posts == [] and await slack.store.turns() == []
    assert "not a Slack payload" in caplog.text and "of type event_callback (event type team_join)" in caplog.text


async def test_url_verification_is_answered(slack: Slack) -> None:
    status, text = await slack.post(json.dumps({"token": "legacy", "challenge": "c-123", "type": "url_verification"}))
    assert status == 200 and "c-123" in text


async def test_rate_limited_post_is_sent_after_waiting(slack: Slack, api: FakeSlackApi) -> None:
    api.limit_next(1)
    began = time.perf_counter()
    await slack.dm(QUESTION)
    [post] = await api.wait_for_posts(1)
    assert post.text == ANSWER and api.rate_limited == 1
    assert post.at - began >= 1.0  # Retry-After: 1 was waited out
    await slack.settled()


async def test_bot_edits_and_own_messages_are_ignored(slack: Slack, api: FakeSlackApi) -> None:
    await slack.dm("from another bot", bot_id="B999")
    await slack.dm("edited", subtype="message_changed")
    await slack.dm("gone", subtype="message_deleted")
    await slack.dm("my own answer", user=BOT_USER)
    await slack.dm(QUESTION)
    [post] = await api.wait_for_posts(1)
    assert post.text == ANSWER
    await slack.settled()
    assert len(api.posts) == 1 and len(await slack.store.turns()) == 1


async def test_odd_input_is_handled(slack: Slack, api: FakeSlackApi) -> None:
    api.not_in_channels.add("CGONE")
    await slack.mention(QUESTION, channel="CGONE")  # the answer is refused: logged, not retried
    await slack.dm("", subtype="file_share", files=[{"id": "F1", "name": "photo.png"}])
    await slack.dm("订单" * 30_000)
    posts = await api.wait_for_posts(2)
    assert {p.text for p in posts} == {
        "Please type your question.",  # the file, with no text
        "您的消息太长了,请发送更简短的问题。",
    }
    await slack.settled()
    assert len(api.posts) == 2


async def test_socket_mode_is_set_up_without_http_route(slack: Slack) -> None:
    assert slack.server
    channel = SlackChannel(
        ChannelService(slack.server.bot, "slack"), SlackSettings(_env_file=None, bot_token=TOKEN, app_token="xapp-test")
    )
    app = web.Application()
    channel.add_routes(app)
    assert channel.socket is not None and not list(app.router.routes())
    await channel.stop()


def test_split_text_cuts_at_sentence_and_line_ends() -> None:
    text = "第一句话。" * 900 + "\n" + "Second sentence here. " * 200
    parts = split_text(text, limit=4000)
    assert all(len(p) <= 4000 for p in parts) and len(parts) == 3
    assert parts[0].endswith("。") and parts[1].endswith(".")
    assert "".join(parts).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace("\n", "")
    assert split_text("x" * 9000, limit=4000) == ["x" * 4000, "x" * 4000, "x" * 1000]
    assert split_text("short", limit=4000) == ["short"]
