"""The store on both backends (the `store`/`store_at` fixtures: a SQLite file, a PostgreSQL schema),
and what several workers sharing PostgreSQL need: leases on inbox events, named leases."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from bot.config import ConfigError
from bot.store import MIGRATIONS, Duplicate, Store
from bot.store import postgres as pg


async def _turn(store: Store, message_id: str = "m1", session: int = 1) -> int:
    return await store.add_turn(
        channel="http",
        conversation_id="c",
        session=session,
        user_id="u",
        message_id=message_id,
        user_text="q",
        answer="a",
        model_version="v0001",
        latency_ms=1.0,
    )


async def schema(store_at: Path | str) -> tuple[int, dict[str, list[str]]]:
    """The schema version and the columns of each table, read past the store."""
    if isinstance(store_at, Path):
        with closing(sqlite3.connect(store_at)) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            columns = {t: [r[1] for r in db.execute(f"PRAGMA table_info({t})")] for t in tables}
            return db.execute("PRAGMA user_version").fetchone()[0], columns
    db = await asyncpg.connect(store_at)
    try:
        rows = await db.fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        )
        columns = {}
        for row in rows:
            columns.setdefault(row["table_name"], []).append(row["column_name"])
        del columns["schema_version"]  # PostgreSQL's user_version
        return await db.fetchval("SELECT version FROM schema_version"), columns
    finally:
        await db.close()


async def test_schema_is_migrated_and_survives_reopen(store_at: Path | str) -> None:
    store = await Store.open(store_at)
    turn_id = await _turn(store)
    await store.set_rating(turn_id, "http:alice", "agent", 1)
    await store.close()
    assert (await schema(store_at))[0] == len(MIGRATIONS)
    store = await Store.open(store_at)  # a second open migrates nothing and loses nothing
    assert (await store.turn(turn_id)).answer == "a"
    assert [r["rating"] for r in await store.ratings(turn_id)] == [1]
    await store.close()


async def test_both_backends_migrate_to_the_same_tables_and_columns(tmp_path: Path, pg_url: str) -> None:
    assert len(pg.MIGRATIONS) == len(MIGRATIONS)
    for location in (tmp_path / "bot.sqlite3", pg_url):
        await (await Store.open(location)).close()
    sqlite_schema, pg_schema = await schema(tmp_path / "bot.sqlite3"), await schema(pg_url)
    assert sqlite_schema == pg_schema
    assert "claimed_by" in sqlite_schema[1]["inbox"] and "leases" in sqlite_schema[1]


async def test_two_workers_starting_at_once_migrate_once(pg_url: str) -> None:
    stores = await asyncio.gather(*(Store.open(pg_url) for _ in range(4)))  # advisory lock: no races
    await asyncio.gather(*(s.close() for s in stores))
    assert (await schema(pg_url))[0] == len(MIGRATIONS)


async def test_ratings_replace_and_retract(store: Store) -> None:
    turn_id = await _turn(store)
    await store.set_rating(turn_id, "telegram:1", "agent", 1)
    await store.set_rating(turn_id, "telegram:1", "agent", -1)
    assert [r["rating"] for r in await store.ratings(turn_id)] == [-1]
    await store.set_rating(turn_id, "telegram:1", "agent", None)
    assert await store.ratings(turn_id) == []


async def test_sessions_reset_and_idle(store: Store) -> None:
    assert await store.session_for("http", "c", timedelta(minutes=30)) == 1
    assert await store.session_for("http", "c", timedelta(minutes=30)) == 1
    assert await store.new_session("http", "c") == 2
    assert await store.session_for("http", "c", timedelta(seconds=0)) == 3  # idle longer than the timeout


async def test_inbox_records_once_until_done(store: Store) -> None:
    assert await store.inbox_add("telegram", "17", {"update_id": 17})
    assert not await store.inbox_add("telegram", "17", {"update_id": 17})
    assert await store.inbox_pending("telegram") == [("17", {"update_id": 17})]
    await store.inbox_done("telegram", "17")
    assert await store.inbox_pending("telegram") == []


async def test_answer_messages_find_their_turn(store: Store) -> None:
    turn_id = await _turn(store)
    await store.link_answer_message("telegram", "42", "1001", turn_id)
    await store.link_answer_message("telegram", "42", "1001", turn_id)  # a replay links it again
    assert await store.turn_for_answer_message("telegram", "42", "1001") == turn_id
    assert await store.turn_for_answer_message("telegram", "42", "1002") is None
    assert await store.answer_was_sent("telegram", "42", turn_id)


async def test_the_same_message_twice_is_a_duplicate(store: Store) -> None:
    first = await _turn(store)
    with pytest.raises(Duplicate):
        await _turn(store)
    assert [t.id for t in await store.turns()] == [first]
    assert await _turn(store, "m2") != first  # the store goes on after the refusal


LEASE = timedelta(seconds=60)


async def test_inbox_take_leases_an_event_to_one_worker(store: Store) -> None:
    await store.inbox_add("telegram", "1", {"update_id": 1})
    assert await store.inbox_take("telegram", "1", "w1", LEASE) == {"update_id": 1}
    assert await store.inbox_take("telegram", "1", "w2", LEASE) is None  # w1's lease is live
    assert await store.inbox_take("telegram", "1", "w1", LEASE) == {"update_id": 1}  # w1 renews its own
    assert await store.inbox_failed("telegram", "1", "boom", max_attempts=5) == (1, False)
    assert await store.inbox_take("telegram", "1", "w2", LEASE) is None  # a failure keeps the lease
    assert await store.inbox_take("telegram", "1", "w1", timedelta(seconds=-1)) is not None  # lapsed at once
    assert await store.inbox_take("telegram", "1", "w2", LEASE) == {"update_id": 1}  # w1 died: w2 takes over
    await store.inbox_done("telegram", "1")
    assert await store.inbox_take("telegram", "1", "w2", LEASE) is None  # done: nobody takes it
    assert await store.inbox_take("telegram", "2", "w2", LEASE) is None  # never recorded


async def test_inbox_claim_takes_pending_events_oldest_first(store: Store) -> None:
    for key in ("a", "b", "c", "d", "e"):
        await store.inbox_add("slack", key, {"k": key})
    await store.inbox_add("telegram", "t", {})  # another channel's
    await store.inbox_done("slack", "a")
    await store.inbox_take("slack", "b", "w1", LEASE)
    await store.inbox_failed("slack", "c", "boom", max_attempts=1)  # dead
    assert await store.inbox_claim("slack", "w2", LEASE, limit=1) == [("d", {"k": "d"})]
    assert await store.inbox_claim("slack", "w2", LEASE) == [("d", {"k": "d"}), ("e", {"k": "e"})]  # d: its own
    assert await store.inbox_claim("slack", "w3", LEASE) == []
    assert await store.inbox_claim("slack", "w1", LEASE) == [("b", {"k": "b"})]


async def test_two_workers_claiming_at_once_never_get_the_same_event(store_at: Path | str) -> None:
    workers = [await Store.open(store_at) for _ in range(2)]
    try:
        for round_ in range(5):
            keys = {f"{round_}-{i}" for i in range(40)}
            for key in sorted(keys):
                await workers[0].inbox_add("telegram", key, {"key": key})
            first, second = await asyncio.gather(
                *(w.inbox_claim("telegram", f"w{i}", LEASE, limit=25) for i, w in enumerate(workers))
            )
            one, two = {k for k, _ in first}, {k for k, _ in second}
            assert not one & two and one | two == keys, round_
            for key in keys:
                await workers[0].inbox_done("telegram", key)
    finally:
        for worker in workers:
            await worker.close()


async def test_a_named_lease_is_exclusive_until_it_expires(store: Store) -> None:
    assert await store.lease("telegram-poll", "w1", timedelta(milliseconds=300))
    assert not await store.lease("telegram-poll", "w2", LEASE)
    assert await store.lease("telegram-poll", "w1", timedelta(milliseconds=300))  # renewed
    assert await store.lease("slack-sweep", "w2", LEASE)  # another name: another lease
    await asyncio.sleep(0.4)
    assert await store.lease("telegram-poll", "w2", LEASE)  # w1 stopped renewing
    assert not await store.lease("telegram-poll", "w1", LEASE)
    await store.lease_release("telegram-poll", "w1")  # not w1's: nothing happens
    assert not await store.lease("telegram-poll", "w1", LEASE)
    await store.lease_release("telegram-poll", "w2")
    assert await store.lease("telegram-poll", "w1", LEASE)


async def test_purge_deletes_old_conversations_in_one_go(store: Store) -> None:
    old = await store.add_turn(
        channel="http",
        conversation_id="c",
        session=1,
        user_id="u",
        message_id="old",
        user_text="q",
        answer="a",
        model_version="v0001",
        latency_ms=1.0,
        created_at="2020-01-01T00:00:00+00:00",
    )
    await store.set_rating(old, "http:alice", "agent", 1)
    await store.add_correction(old, "http:alice", "better")
    await store.link_answer_message("http", "c", "1", old)
    new = await _turn(store)
    deleted = await store.purge_before("2021-01-01T00:00:00+00:00")
    assert deleted == {
        "answer_messages": 1,
        "ratings": 1,
        "corrections": 1,
        "turns": 1,
        "inbox": 0,
        "conversations": 0,
    }
    assert [t.id for t in await store.turns()] == [new]
    await store.ping()


async def test_an_unreachable_database_url_stops_with_one_line() -> None:
    with pytest.raises(ConfigError) as refused:
        await Store.open("postgresql://bot:s3cret@127.0.0.1:5999/test")
    line = str(refused.value)
    assert line.startswith("config error: BOT_DATABASE_URL: cannot connect to postgresql://bot@127.0.0.1:5999/test: ")
    assert "s3cret" not in line and "\n" not in line
    with pytest.raises(ConfigError, match="not a postgresql:// URL"):
        await Store.open("mysql://127.0.0.1/test")
