"""The tamper-evident audit log: rows written through the real store verify (on SQLite and PostgreSQL,
the `store_at` fixture); editing, deleting, inserting or reordering rows with plain sqlite3 makes
`verify` name the row, and an edit on PostgreSQL too; the real command line."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import datetime, timedelta, timezone
from itertools import pairwise
from pathlib import Path

import asyncpg
import pytest

from bot.audit import verify, verify_rows
from bot.store import AUDIT_GENESIS, MIGRATIONS, Store, audit_hash, database_path
from tests.test_cli import env_for


async def write_events(location: Path | str) -> list[dict]:
    """Eight rows the way the bot and the operators write them, some concurrently."""
    store = await Store.open(location)
    try:
        await store.audit("http:bob", "input_filtered", categories=["insult"], blocked=True, message_id="m1")
        await store.audit("telegram:42", "rating", turn_id=1, rating=1, role="agent")
        await store.audit("telegram:42", "correction", turn_id=1)
        await store.audit("operator", "promote", target="model:v0002", outcome="ok", version="v0002")
        await asyncio.gather(*(store.audit("bot", "output_filtered", n=i) for i in range(3)))
        await store.audit("slack:U1", "correction_refused", role="customer", outcome="refused", turn_id=2)
        return await store.audit_events()
    finally:
        await store.close()


def tamper(path: Path, *statements: tuple[str, tuple]) -> None:
    """What someone with the file and the sqlite3 shell does: drop the append-only triggers, edit."""
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER IF EXISTS audit_no_update")
    db.execute("DROP TRIGGER IF EXISTS audit_no_delete")
    for sql, args in statements:
        db.execute(sql, args)
    db.commit()
    db.close()


async def verdict_of(location: Path | str):
    store = await Store.open(location)
    try:
        return await verify(store)
    finally:
        await store.close()


def audit_cli(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", "audit", *args],
        cwd=data_dir,
        env=env_for(data_dir, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_events_through_the_store_form_an_intact_chain(store_at: Path | str) -> None:
    events = await write_events(store_at)
    assert [e["id"] for e in events] == list(range(1, 9))
    assert events[0]["prev_hash"] == AUDIT_GENESIS
    assert all(e["prev_hash"] == before["hash"] for before, e in pairwise(events))
    rating = events[1]
    assert (rating["actor"], rating["role"], rating["channel"], rating["outcome"]) == (
        "telegram:42",
        "agent",
        "telegram",
        "ok",
    )
    assert json.loads(rating["detail"]) == {"turn_id": 1, "rating": 1}
    assert (events[3]["target"], events[3]["channel"]) == ("model:v0002", None)
    assert events[-1]["outcome"] == "refused"
    verdict = await verdict_of(store_at)  # reopened: nothing re-sealed, still intact
    assert verdict.ok and verdict.rows == 8 and verdict.head == events[-1]["hash"]
    assert verdict.line == f"8 rows, chain intact (head {events[-1]['hash'][:16]})"


async def test_the_table_refuses_updates_and_deletes(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    await write_events(path)
    db = sqlite3.connect(path)
    for sql in ("UPDATE audit SET detail='{}' WHERE id=2", "DELETE FROM audit WHERE id=2"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(sql)
    db.close()


async def test_postgresql_refuses_updates_deletes_and_truncate_and_verify_finds_an_edit(pg_url: str) -> None:
    await write_events(pg_url)
    db = await asyncpg.connect(pg_url)
    try:
        for sql in ("UPDATE audit SET detail='{}' WHERE id=2", "DELETE FROM audit WHERE id=2", "TRUNCATE audit"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await db.execute(sql)
        # The table's owner can switch the triggers off; the chain still shows the edit.
        await db.execute("ALTER TABLE audit DISABLE TRIGGER USER")
        await db.execute("""UPDATE audit SET detail='{"turn_id": 2}' WHERE id=3""")
    finally:
        await db.close()
    verdict = await verdict_of(pg_url)
    assert not verdict.ok and verdict.line.startswith("audit chain broken at row 3: edited"), verdict.line


def test_the_command_line_verifies_a_postgresql_store(tmp_path: Path, pg_url: str) -> None:
    events = asyncio.run(write_events(pg_url))
    ok = audit_cli(tmp_path, "verify", BOT_DATABASE_URL=pg_url)
    assert ok.returncode == 0 and ok.stdout == f"8 rows, chain intact (head {events[-1]['hash'][:16]})\n", ok.stderr
    assert not database_path(tmp_path).exists()  # the SQLite file was never the store
    down = audit_cli(tmp_path, "verify", BOT_DATABASE_URL="postgresql://bot:s3cret@127.0.0.1:5999/test")
    [line] = down.stderr.splitlines()  # one line, no traceback
    assert down.returncode == 1 and "s3cret" not in line
    assert line.startswith("config error: BOT_DATABASE_URL: cannot connect to postgresql://bot@127.0.0.1:5999/test: ")


def forge_row_3(path: Path) -> list[tuple[str, tuple]]:
    """Make room at id 3 and put a row there whose own hash is right and that chains from row 2."""
    db = sqlite3.connect(path)
    prev = db.execute("SELECT hash FROM audit WHERE id=2").fetchone()[0]
    db.close()
    row = {
        "at": "2020-01-01T00:00:00+00:00",
        "actor": "telegram:42",
        "role": "agent",
        "action": "rating",
        "target": None,
        "channel": "telegram",
        "outcome": "ok",
        "detail": '{"turn_id": 9, "rating": 1}',
    }
    return [
        ("UPDATE audit SET id = id + 1000 WHERE id >= 3", ()),
        ("UPDATE audit SET id = id - 999 WHERE id >= 1000", ()),
        (
            "INSERT INTO audit (id, at, actor, role, action, target, channel, outcome, detail, prev_hash, hash) "
            "VALUES (3,?,?,?,?,?,?,?,?,?,?)",
            (*row.values(), prev, audit_hash(prev, row)),
        ),
    ]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("edit_detail", "audit chain broken at row 3: edited"),
        ("edit_actor", "audit chain broken at row 5: edited"),
        ("delete_middle", "audit chain broken at row 4: missing (row 4 between rows 3 and 5 deleted)"),
        ("delete_two", "audit chain broken at row 4: missing (rows 4-5 between rows 3 and 6 deleted)"),
        ("delete_first", "audit chain broken at row 1: missing (row 1 before row 2 deleted)"),
        ("insert_hashless", "audit chain broken at row 9: inserted (it has no hash"),
        ("insert_forged_hash", "audit chain broken at row 9: edited"),
        ("insert_chained", "audit chain broken at row 3: inserted (row 4 follows row 2, not row 3)"),
        ("swap", "audit chain broken at row 3: out of order (it follows row 4, which comes after it)"),
    ],
)
async def test_tampering_is_found_at_the_right_row(tmp_path: Path, case: str, expected: str) -> None:
    path = tmp_path / "bot.sqlite3"
    events = await write_events(path)
    forged = "INSERT INTO audit (id, at, actor, action, detail, prev_hash, hash) VALUES (9, ?, 'operator', 'promote', '{}', ?, ?)"
    statements = {
        "edit_detail": lambda: [("UPDATE audit SET detail=? WHERE id=3", ('{"turn_id": 2}',))],
        "edit_actor": lambda: [("UPDATE audit SET actor='bot2' WHERE id=5", ())],
        "delete_middle": lambda: [("DELETE FROM audit WHERE id=4", ())],
        "delete_two": lambda: [("DELETE FROM audit WHERE id IN (4, 5)", ())],
        "delete_first": lambda: [("DELETE FROM audit WHERE id=1", ())],
        "insert_hashless": lambda: [(forged, (events[-1]["at"], None, None))],
        "insert_forged_hash": lambda: [(forged, (events[-1]["at"], events[-1]["hash"], "f" * 64))],
        "insert_chained": lambda: forge_row_3(path),
        "swap": lambda: [
            ("UPDATE audit SET id=100 WHERE id=3", ()),
            ("UPDATE audit SET id=3 WHERE id=4", ()),
            ("UPDATE audit SET id=4 WHERE id=100", ()),
        ],
    }[case]()
    tamper(path, *statements)
    verdict = await verdict_of(path)
    assert not verdict.ok and verdict.line.startswith(expected), verdict.line
    assert verdict.row_id == int(expected.split("row ")[1].split(":")[0])


def test_verify_rows_on_an_empty_log() -> None:
    assert verify_rows([]).line == "0 rows, chain intact (head 0000000000000000)"


async def test_rows_from_before_the_chain_are_sealed_once_at_open(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    chained = next(i for i, script in enumerate(MIGRATIONS) if "prev_hash" in script)
    db = sqlite3.connect(path)  # a store as the previous release left it
    for number, script in enumerate(MIGRATIONS[:chained], start=1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")
    db.executemany(
        "INSERT INTO audit (at, actor, action, detail) VALUES (?,?,?,?)",
        [
            ("2024-01-01T00:00:00+00:00", "telegram:42", "rating", '{"turn_id": 1, "rating": 1, "role": "agent"}'),
            ("2024-01-02T00:00:00+00:00", "operator", "promote", '{"version": "v0002"}'),
        ],
    )
    db.commit()
    db.close()

    store = await Store.open(path)
    await store.audit("bot", "output_filtered", n=1)
    events = await store.audit_events()
    assert (events[0]["role"], events[0]["channel"], events[0]["outcome"]) == ("agent", "telegram", "ok")
    assert (await verify(store)).line.startswith("3 rows, chain intact")
    await store.close()

    # A hashless row slipped in later is not blessed by the next open.
    tamper(path, ("INSERT INTO audit (at, actor, action, detail) VALUES ('2024-02-01', 'x', 'y', '{}')", ()))
    assert (await verdict_of(path)).line.startswith("audit chain broken at row 4: inserted")


async def test_two_connections_appending_at_once_keep_one_chain(store_at: Path | str) -> None:
    """Two stores on one database, as two workers or the bot and a tuning command: appends interleave,
    the chain holds."""
    first, second = await Store.open(store_at), await Store.open(store_at)
    try:
        await asyncio.gather(*(s.audit(f"actor{i % 2}", "x", i=i) for i in range(40) for s in (first, second)))
        verdict = await verify(first)
        assert verdict.ok and verdict.rows == 80
    finally:
        await first.close()
        await second.close()


async def test_store_filters_and_limit(store_at: Path | str) -> None:
    events = await write_events(store_at)
    store = await Store.open(store_at)
    try:
        assert [e["id"] for e in await store.audit_events(actor="telegram:42")] == [2, 3]
        assert [e["id"] for e in await store.audit_events(action="output_filtered", limit=2)] == [6, 7]
        assert [e["id"] for e in await store.audit_events(since=events[6]["at"])] == [7, 8]
        assert await store.audit_events(actor="telegram:42", action="promote") == []
    finally:
        await store.close()


def test_the_command_line_verifies_and_shows(tmp_path: Path) -> None:
    assert audit_cli(tmp_path, "verify").returncode == 2  # no store yet: says so, creates nothing
    assert not database_path(tmp_path).exists()
    events = asyncio.run(write_events(database_path(tmp_path)))

    ok = audit_cli(tmp_path, "verify")
    assert ok.returncode == 0 and ok.stdout.startswith("8 rows, chain intact"), ok.stderr
    assert len(ok.stdout.splitlines()) == 1

    shown = audit_cli(tmp_path, "show", "--actor", "telegram:42")
    rows = [json.loads(line) for line in shown.stdout.splitlines()]
    assert shown.returncode == 0 and [r["action"] for r in rows] == ["rating", "correction"]
    assert rows[0]["detail"] == {"turn_id": 1, "rating": 1} and rows[0]["role"] == "agent"
    shown = audit_cli(tmp_path, "show", "--action", "output_filtered", "--limit", "1")
    assert [json.loads(line)["id"] for line in shown.stdout.splitlines()] == [7]
    shown = audit_cli(tmp_path, "show", "--since", events[7]["at"])
    assert [json.loads(line)["id"] for line in shown.stdout.splitlines()] == [8]
    assert audit_cli(tmp_path, "show", "--since", "2999-01-01").stdout == ""
    assert len(audit_cli(tmp_path, "show", "--since", "2000-01-01").stdout.splitlines()) == 8
    assert audit_cli(tmp_path, "show", "--since", "yesterday").returncode == 2

    tamper(database_path(tmp_path), ("UPDATE audit SET detail='{\"turn_id\": 7}' WHERE id=3", ()))
    broken = audit_cli(tmp_path, "verify")
    assert broken.returncode == 1
    assert broken.stdout.strip() == "audit chain broken at row 3: edited (its content does not match its hash)"


async def old_and_new_turns(path: Path) -> None:
    """A conversation from 40 days ago with a rating and a correction, and one from today."""
    store = await Store.open(path)
    try:
        long_ago = (datetime.now(timezone.utc) - timedelta(days=40)).isoformat()
        for created_at, text in ((long_ago, "旧问题 old-secret-question"), (None, "new question")):
            turn_id = await store.add_turn(
                channel="telegram",
                conversation_id="c1",
                session=1,
                user_id="u1",
                message_id=text,
                user_text=text,
                answer=f"answer to {text}",
                model_version="v0001",
                latency_ms=1.0,
                **({"created_at": created_at} if created_at else {}),
            )
            await store.set_rating(turn_id, "telegram:42", "agent", -1)
            await store.add_correction(turn_id, "telegram:42", f"fixed {text}")
            await store.audit("telegram:u1", "message", target=f"turn:{turn_id}")
    finally:
        await store.close()


def test_retention_deletes_old_conversation_text_and_the_chain_still_verifies(tmp_path: Path) -> None:
    path = database_path(tmp_path)
    asyncio.run(old_and_new_turns(path))

    def retention(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "bot", "retention", *args]
        return subprocess.run(command, cwd=tmp_path, env=env_for(tmp_path), capture_output=True, text=True, timeout=120)

    refused = retention("--days", "0")
    assert refused.returncode == 2 and "--days: a whole number of days" in refused.stderr
    done = retention("--days", "30")
    assert done.returncode == 0, done.stderr
    deleted = json.loads(done.stdout)["deleted"]
    assert (deleted["turns"], deleted["ratings"], deleted["corrections"]) == (1, 1, 1)
    with closing(sqlite3.connect(path)) as db:
        assert [r[0] for r in db.execute("SELECT user_text FROM turns")] == ["new question"]
        assert [r[0] for r in db.execute("SELECT text FROM corrections")] == ["fixed new question"]
    # Overwritten, not only unlinked: the old text is in no file of the data directory.
    for file in tmp_path.iterdir():
        assert b"old-secret-question" not in file.read_bytes(), file
    assert audit_cli(tmp_path, "verify").returncode == 0
    shown = audit_cli(tmp_path, "show", "--action", "retention")
    [row] = [json.loads(line) for line in shown.stdout.splitlines()]
    assert row["actor"].startswith("cli:") and row["detail"]["deleted"]["turns"] == 1
