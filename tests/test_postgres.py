"""A whole bot on PostgreSQL (BOT_DATABASE_URL): the HTTP API answers, and the turn, its audit row and
the health check are in the shared database, not in a SQLite file."""

from __future__ import annotations

from pathlib import Path

from bot.__main__ import start
from bot.audit import verify
from bot.store import Store, database_path
from tests.support import ORDER_A, ORDER_Q, get, make_settings, post


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
