import sqlite3
from datetime import timedelta
from pathlib import Path

from bot.store import MIGRATIONS, Store


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


async def test_schema_is_migrated_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    store = await Store.open(path)
    turn_id = await _turn(store)
    await store.set_rating(turn_id, "http:alice", "agent", 1)
    await store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    store = await Store.open(path)  # a second open migrates nothing and loses nothing
    assert (await store.turn(turn_id)).answer == "a"
    assert [r["rating"] for r in await store.ratings(turn_id)] == [1]
    await store.close()


async def test_ratings_replace_and_retract(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "bot.sqlite3")
    turn_id = await _turn(store)
    await store.set_rating(turn_id, "telegram:1", "agent", 1)
    await store.set_rating(turn_id, "telegram:1", "agent", -1)
    assert [r["rating"] for r in await store.ratings(turn_id)] == [-1]
    await store.set_rating(turn_id, "telegram:1", "agent", None)
    assert await store.ratings(turn_id) == []
    await store.close()


async def test_sessions_reset_and_idle(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "bot.sqlite3")
    assert await store.session_for("http", "c", timedelta(minutes=30)) == 1
    assert await store.session_for("http", "c", timedelta(minutes=30)) == 1
    assert await store.new_session("http", "c") == 2
    assert await store.session_for("http", "c", timedelta(seconds=0)) == 3  # idle longer than the timeout
    await store.close()


async def test_inbox_records_once_until_done(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "bot.sqlite3")
    assert await store.inbox_add("telegram", "17", {"update_id": 17})
    assert not await store.inbox_add("telegram", "17", {"update_id": 17})
    assert await store.inbox_pending("telegram") == [("17", {"update_id": 17})]
    await store.inbox_done("telegram", "17")
    assert await store.inbox_pending("telegram") == []
    await store.close()


async def test_answer_messages_find_their_turn(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "bot.sqlite3")
    turn_id = await _turn(store)
    await store.link_answer_message("telegram", "42", "1001", turn_id)
    assert await store.turn_for_answer_message("telegram", "42", "1001") == turn_id
    assert await store.turn_for_answer_message("telegram", "42", "1002") is None
    await store.close()
