"""A whole bot on PostgreSQL (BOT_DATABASE_URL): the HTTP API answers, and the turn, its audit row and
the health check are in the shared database, not in a SQLite file; a database lost mid-run loses no event."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from bot.__main__ import start
from bot.audit import verify
from bot.config import SlackSettings
from bot.store import Store, database_path
from tests.fakes.slack_api import FakeSlackApi
from tests.support import ORDER_A, ORDER_Q, TcpRelay, get, make_settings, post
from tests.test_slack import CUSTOMER, DM, SECRET, TOKEN, envelope, signed


async def test_a_bot_on_postgresql_stores_its_answers_there(data_dir: Path, pg_url: str) -> None:
    running = await start(make_settings(data_dir, database_url=pg_url), {})
    try:
        status, reply = await post(running, "/chat", {"conversation_id": "c1", "user_id": "u1", "text": ORDER_Q})
        health_status, health = await get(running, "/healthz")
    finally:
        await running.stop()
    assert status == 200 and reply["answer"] == ORDER_A
    assert health_status == 200 and health["status"] == "ok", health
    assert not database_path(data_dir).exists()
    store = await Store.open(pg_url)
    try:
        [turn] = await store.turns()
        assert (turn.id, turn.user_text, turn.answer) == (reply["turn_id"], ORDER_Q, ORDER_A)
        assert [e["target"] for e in await store.audit_events(action="message")] == [f"turn:{turn.id}"]
        assert (await verify(store)).ok
    finally:
        await store.close()


async def test_an_event_that_arrives_while_the_database_is_away_is_answered_when_slack_sends_it_again(
    data_dir: Path, pg_url: str
) -> None:
    relay = TcpRelay(pg_url)
    api = FakeSlackApi(TOKEN)
    await api.start()
    slack = SlackSettings(_env_file=None, bot_token=TOKEN, signing_secret=SECRET, api_base=api.url)
    running = await start(make_settings(data_dir, database_url=await relay.start()), {"slack": slack})
    url = f"http://127.0.0.1:{running.port}/slack/events"

    async def deliver(http: aiohttp.ClientSession, event_id: str, retry: int | None = None) -> int:
        ts = f"1700000000.{event_id[-6:]}"
        event = {"type": "message", "channel": DM, "channel_type": "im", "user": CUSTOMER, "text": ORDER_Q}
        body = json.dumps(envelope(event | {"ts": ts, "event_ts": ts}, event_id), ensure_ascii=False)
        async with http.post(url, data=body.encode(), headers=signed(body, retry=retry)) as response:
            return response.status

    try:
        async with aiohttp.ClientSession() as http:
            assert await deliver(http, "Ev000001") == 200
            await api.wait_for_posts(1)
            relay.cut()
            assert await deliver(http, "Ev000002") >= 500  # not recorded, so not acknowledged
            await relay.start()
            assert await deliver(http, "Ev000002", retry=1) == 200  # Slack's retry
            posts = await api.wait_for_posts(2)
    finally:
        await running.stop()
        await api.stop()
    assert [p.text for p in posts] == [ORDER_A, ORDER_A]
