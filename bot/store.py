"""SQLite store (aiosqlite): one connection, so one writer; WAL so readers never wait on it.

Every write commits before the caller acknowledges anything, so a restart loses nothing acknowledged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite

from bot.message import utcnow

DB_FILE = "bot.sqlite3"


def database_path(data_dir: Path) -> Path:
    """Where the store of a data directory lives (the bot and the tuning commands share it)."""
    return Path(data_dir) / DB_FILE


# Append-only: each entry moves the schema one version up (PRAGMA user_version).
MIGRATIONS: list[str] = [
    """
    CREATE TABLE conversations (
        channel TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        session INTEGER NOT NULL DEFAULT 1,
        last_at TEXT NOT NULL,
        PRIMARY KEY (channel, conversation_id)
    );
    CREATE TABLE turns (
        id INTEGER PRIMARY KEY,
        channel TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        session INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        user_text TEXT NOT NULL,
        answer TEXT NOT NULL,
        model_version TEXT NOT NULL,
        variant TEXT NOT NULL DEFAULT 'current',
        latency_ms REAL NOT NULL,
        cached INTEGER NOT NULL DEFAULT 0,
        outcome TEXT NOT NULL DEFAULT 'answered',
        created_at TEXT NOT NULL,
        UNIQUE (channel, message_id)
    );
    CREATE INDEX turns_by_conversation ON turns (channel, conversation_id, session, id);
    CREATE TABLE answer_messages (
        channel TEXT NOT NULL,
        chat_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        turn_id INTEGER NOT NULL REFERENCES turns(id),
        PRIMARY KEY (channel, chat_id, message_id)
    );
    CREATE TABLE ratings (
        turn_id INTEGER NOT NULL REFERENCES turns(id),
        rater TEXT NOT NULL,
        role TEXT NOT NULL,
        rating INTEGER NOT NULL CHECK (rating IN (-1, 1)),
        created_at TEXT NOT NULL,
        PRIMARY KEY (turn_id, rater)
    );
    CREATE TABLE corrections (
        id INTEGER PRIMARY KEY,
        turn_id INTEGER NOT NULL REFERENCES turns(id),
        rater TEXT NOT NULL,
        text TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE TABLE inbox (
        channel TEXT NOT NULL,
        key TEXT NOT NULL,
        payload TEXT NOT NULL,
        received_at TEXT NOT NULL,
        done_at TEXT,
        PRIMARY KEY (channel, key)
    );
    """,
    # Events that keep failing are retried a bounded number of times, then set aside (dead letters).
    """
    ALTER TABLE inbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE inbox ADD COLUMN last_error TEXT;
    ALTER TABLE inbox ADD COLUMN dead_at TEXT;
    """,
    # Tamper-evident audit log: who, role, what, target, channel, outcome, and a hash chain (see
    # bot/audit.py). Rows written before this migration get their hashes at the next open (_seal_audit).
    """
    ALTER TABLE audit ADD COLUMN role TEXT;
    ALTER TABLE audit ADD COLUMN target TEXT;
    ALTER TABLE audit ADD COLUMN channel TEXT;
    ALTER TABLE audit ADD COLUMN outcome TEXT NOT NULL DEFAULT 'ok';
    ALTER TABLE audit ADD COLUMN prev_hash TEXT;
    ALTER TABLE audit ADD COLUMN hash TEXT;
    UPDATE audit SET channel = substr(actor, 1, instr(actor, ':') - 1) WHERE instr(actor, ':') > 1;
    UPDATE audit SET role = json_extract(detail, '$.role') WHERE json_valid(detail);
    CREATE INDEX audit_unsealed ON audit (id) WHERE hash IS NULL;
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit WHEN OLD.hash IS NOT NULL
    BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END;
    """,
    # Roles granted at run time by an admin (bot/feedback.py `Roles`); a subject not listed has only
    # the roles the settings give it.
    """
    CREATE TABLE roles (
        subject TEXT PRIMARY KEY,
        role TEXT NOT NULL CHECK (role IN ('agent', 'admin')),
        granted_by TEXT NOT NULL,
        granted_at TEXT NOT NULL
    );
    """,
    # Conversations handed off to a person (bot/handoff.py): a row while agents answer instead of the bot.
    """
    CREATE TABLE handoffs (
        channel TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        started_by TEXT NOT NULL,
        started_at TEXT NOT NULL,
        last_at TEXT NOT NULL,
        PRIMARY KEY (channel, conversation_id)
    );
    """,
]
# Outcomes whose answers are part of a conversation: the bot's own, and an agent's during a hand-off.
CONVERSED = "('answered', 'agent')"


@dataclass(frozen=True)
class StoredTurn:
    """A turn as the store keeps it (the pipeline's working turn is `pipeline.WorkingTurn`)."""

    id: int
    channel: str
    conversation_id: str
    session: int
    user_id: str
    message_id: str
    user_text: str
    answer: str
    model_version: str
    variant: str
    latency_ms: float
    cached: bool
    outcome: str
    created_at: str


class Store:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        # Appends from this process take turns, so they never race each other for the chain's head (the
        # compare-and-swap in `audit` is for other processes); under a flood they would starve.
        self._audit_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path | str) -> Store:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(str(path))
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA busy_timeout=5000")
        await db.execute("PRAGMA foreign_keys=ON")
        await db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process kill
        store = cls(db)
        await store._migrate()
        await store._seal_audit()
        return store

    async def close(self) -> None:
        await self._db.close()

    async def _migrate(self) -> None:
        row = await self._fetchone("PRAGMA user_version", ())
        version = int(row[0]) if row else 0
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await self._db.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")

    # --- sessions -------------------------------------------------------------------------------

    async def session_for(self, channel: str, conversation_id: str, idle: timedelta) -> int:
        """The conversation's current session; a new one after `idle` without a message."""
        now = utcnow()
        row = await self._fetchone(
            "SELECT session, last_at FROM conversations WHERE channel=? AND conversation_id=?",
            (channel, conversation_id),
        )
        if row is None:
            session = 1
        elif now - datetime.fromisoformat(row["last_at"]) > idle:
            session = row["session"] + 1
        else:
            session = row["session"]
        await self._write(
            "INSERT INTO conversations (channel, conversation_id, session, last_at) VALUES (?,?,?,?) "
            "ON CONFLICT (channel, conversation_id) DO UPDATE SET session=excluded.session, last_at=excluded.last_at",
            (channel, conversation_id, session, now.isoformat()),
        )
        return session

    async def new_session(self, channel: str, conversation_id: str) -> int:
        now = utcnow().isoformat()
        await self._write(
            "INSERT INTO conversations (channel, conversation_id, session, last_at) VALUES (?,?,2,?) "
            "ON CONFLICT (channel, conversation_id) DO UPDATE SET session=session+1, last_at=excluded.last_at",
            (channel, conversation_id, now),
        )
        row = await self._fetchone(
            "SELECT session FROM conversations WHERE channel=? AND conversation_id=?", (channel, conversation_id)
        )
        assert row is not None  # just written
        return int(row["session"])

    # --- turns ----------------------------------------------------------------------------------

    async def add_turn(self, **fields: Any) -> int:
        fields.setdefault("created_at", utcnow().isoformat())
        fields["cached"] = int(fields.get("cached", False))
        names = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        cursor = await self._write(f"INSERT INTO turns ({names}) VALUES ({marks})", tuple(fields.values()))
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    async def turn(self, turn_id: int) -> StoredTurn | None:
        row = await self._fetchone("SELECT * FROM turns WHERE id=?", (turn_id,))
        return _turn(row) if row else None

    async def turn_for_message(self, channel: str, message_id: str) -> StoredTurn | None:
        row = await self._fetchone("SELECT * FROM turns WHERE channel=? AND message_id=?", (channel, message_id))
        return _turn(row) if row else None

    async def history(self, channel: str, conversation_id: str, session: int, limit: int = 50) -> list[StoredTurn]:
        """Answered turns of one session (by the bot or an agent), oldest first."""
        rows = await self._fetchall(
            "SELECT * FROM (SELECT * FROM turns WHERE channel=? AND conversation_id=? AND session=? "
            f"AND outcome IN {CONVERSED} AND user_text != '' ORDER BY id DESC LIMIT ?) ORDER BY id",
            (channel, conversation_id, session, limit),
        )
        return [_turn(r) for r in rows]

    async def latest_turn(self, channel: str, conversation_id: str) -> StoredTurn | None:
        """The conversation's most recent turn, in any session (None: the bot never answered there)."""
        row = await self._fetchone(
            "SELECT * FROM turns WHERE channel=? AND conversation_id=? ORDER BY id DESC LIMIT 1",
            (channel, conversation_id),
        )
        return _turn(row) if row else None

    async def session_turns(self, channel: str, conversation_id: str, session: int, before_id: int) -> list[StoredTurn]:
        rows = await self._fetchall(
            "SELECT * FROM turns WHERE channel=? AND conversation_id=? AND session=? AND id<? "
            f"AND outcome IN {CONVERSED} AND user_text != '' ORDER BY id",
            (channel, conversation_id, session, before_id),
        )
        return [_turn(r) for r in rows]

    async def turns(self, outcome: str | None = None) -> list[StoredTurn]:
        if outcome is None:
            return [_turn(r) for r in await self._fetchall("SELECT * FROM turns ORDER BY id", ())]
        return [_turn(r) for r in await self._fetchall("SELECT * FROM turns WHERE outcome=? ORDER BY id", (outcome,))]

    # --- platform message ids of answers, so reactions find their turn ---------------------------

    async def link_answer_message(self, channel: str, chat_id: str, message_id: str, turn_id: int) -> None:
        await self._write(
            "INSERT OR REPLACE INTO answer_messages (channel, chat_id, message_id, turn_id) VALUES (?,?,?,?)",
            (channel, str(chat_id), str(message_id), turn_id),
        )

    async def answer_was_sent(self, channel: str, chat_id: str, turn_id: int) -> bool:
        """Whether a message of this answer is already in the chat (a replay must not send it again)."""
        row = await self._fetchone(
            "SELECT 1 FROM answer_messages WHERE channel=? AND chat_id=? AND turn_id=?",
            (channel, str(chat_id), turn_id),
        )
        return row is not None

    async def turn_for_answer_message(self, channel: str, chat_id: str, message_id: str) -> int | None:
        row = await self._fetchone(
            "SELECT turn_id FROM answer_messages WHERE channel=? AND chat_id=? AND message_id=?",
            (channel, str(chat_id), str(message_id)),
        )
        return int(row["turn_id"]) if row else None

    # --- ratings and corrections ----------------------------------------------------------------

    async def set_rating(self, turn_id: int, rater: str, role: str, rating: int | None) -> None:
        """A later rating by the same rater replaces the earlier one; None retracts it."""
        if rating is None:
            await self._write("DELETE FROM ratings WHERE turn_id=? AND rater=?", (turn_id, rater))
            return
        await self._write(
            "INSERT OR REPLACE INTO ratings (turn_id, rater, role, rating, created_at) VALUES (?,?,?,?,?)",
            (turn_id, rater, role, rating, utcnow().isoformat()),
        )

    async def ratings(self, turn_id: int | None = None) -> list[dict[str, Any]]:
        if turn_id is None:
            rows = await self._fetchall("SELECT * FROM ratings ORDER BY created_at", ())
        else:
            rows = await self._fetchall("SELECT * FROM ratings WHERE turn_id=? ORDER BY created_at", (turn_id,))
        return [dict(r) for r in rows]

    async def add_correction(self, turn_id: int, rater: str, text: str) -> None:
        await self._write(
            "INSERT INTO corrections (turn_id, rater, text, created_at) VALUES (?,?,?,?)",
            (turn_id, rater, text, utcnow().isoformat()),
        )

    async def corrections(self) -> list[dict[str, Any]]:
        return [dict(r) for r in await self._fetchall("SELECT * FROM corrections ORDER BY id", ())]

    # --- audit log --------------------------------------------------------------------------------

    async def audit(
        self,
        actor: str,
        action: str,
        *,
        role: str | None = None,
        target: object = None,
        channel: str | None = None,
        outcome: str = "ok",
        **detail: Any,
    ) -> int:
        """Append one row to the hash-chained audit log; its id. `channel` defaults to the actor's
        prefix (`telegram:42` -> `telegram`). The row links to the log's last row inside the INSERT
        itself (a compare-and-swap on that row's hash), so concurrent writers, in this process or
        another one, never fork the chain: the loser reads the new last row and tries again."""
        if channel is None and ":" in actor:
            channel = actor.split(":", 1)[0]
        row = {
            "actor": actor,
            "role": role,
            "action": action,
            "target": None if target is None else str(target),
            "channel": channel,
            "outcome": outcome,
            "detail": json.dumps(detail, ensure_ascii=False, default=str),
        }
        async with self._audit_lock:
            return await self._append_audit(row)

    async def _append_audit(self, row: dict[str, Any]) -> int:
        for _ in range(100):
            last = await self._fetchone("SELECT hash FROM audit ORDER BY id DESC LIMIT 1", ())
            prev = AUDIT_GENESIS if last is None else last["hash"] or ""
            row["at"] = utcnow().isoformat()
            cursor = await self._write(
                "INSERT INTO audit (at, actor, role, action, target, channel, outcome, detail, prev_hash, hash) "
                "SELECT ?,?,?,?,?,?,?,?,?,? "
                "WHERE COALESCE((SELECT IFNULL(hash, '') FROM audit ORDER BY id DESC LIMIT 1), ?) = ?",
                (*(row[name] for name in AUDIT_FIELDS), prev, audit_hash(prev, row), AUDIT_GENESIS, prev),
            )
            if cursor.rowcount == 1 and cursor.lastrowid is not None:
                return cursor.lastrowid
        raise RuntimeError("audit log: could not append after 100 concurrent writes")

    async def audit_events(
        self,
        actor: str | None = None,
        action: str | None = None,
        since: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Audit rows, oldest first, with their hashes (`detail` is the stored JSON text). Filters:
        actor, action, `at` >= since (an ISO time in UTC); `limit` keeps the newest rows."""
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("actor = ?", actor), ("action = ?", action), ("at >= ?", since)):
            if value is not None:
                where.append(column)
                args.append(value)
        sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "")
        if limit is None:
            rows = await self._fetchall(sql + " ORDER BY id", args)
        else:
            rows = await self._fetchall(f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT ?) ORDER BY id", [*args, limit])
        return [dict(r) for r in rows]

    async def _seal_audit(self) -> None:
        """Chain the rows written before the log had a hash chain (once, at the first open after the
        migration). Only a log without any hashed row is sealed: a hashless row slipped in later stays
        unhashed, so `verify` reports it instead of this step blessing it."""
        if await self._fetchone("SELECT 1 FROM audit WHERE hash IS NULL LIMIT 1", ()) is None:
            return
        await self._db.execute("BEGIN IMMEDIATE")  # another process may be opening the store too
        try:
            if await self._fetchone("SELECT 1 FROM audit WHERE hash IS NOT NULL LIMIT 1", ()) is None:
                prev, updates = AUDIT_GENESIS, []
                for row in await self._fetchall("SELECT * FROM audit ORDER BY id", ()):
                    digest = audit_hash(prev, dict(row))
                    updates.append((prev, digest, row["id"]))
                    prev = digest
                await self._db.executemany("UPDATE audit SET prev_hash=?, hash=? WHERE id=?", updates)
            await self._db.commit()
        except BaseException:
            await self._db.rollback()
            raise

    # --- inbox: platform events recorded before they are acknowledged ---------------------------

    async def inbox_add(self, channel: str, key: str, payload: dict[str, Any]) -> bool:
        """Record an incoming event; False if it was recorded before (a redelivery)."""
        cursor = await self._write(
            "INSERT OR IGNORE INTO inbox (channel, key, payload, received_at) VALUES (?,?,?,?)",
            (channel, key, json.dumps(payload, ensure_ascii=False), utcnow().isoformat()),
        )
        return cursor.rowcount == 1

    async def inbox_done(self, channel: str, key: str) -> None:
        """Mark an event done; its payload (the platform's text, names) is dropped, the key stays for dedup."""
        await self._write(
            "UPDATE inbox SET done_at=?, payload='{}' WHERE channel=? AND key=?", (utcnow().isoformat(), channel, key)
        )

    async def inbox_prune(self, channel: str, older_than: timedelta) -> int:
        """Forget events finished longer ago than `older_than` (platforms redeliver within minutes)."""
        cutoff = (utcnow() - older_than).isoformat()
        cursor = await self._write(
            "DELETE FROM inbox WHERE channel=? AND COALESCE(done_at, dead_at) < ?", (channel, cutoff)
        )
        return cursor.rowcount

    async def inbox_failed(self, channel: str, key: str, error: str, max_attempts: int) -> tuple[int, bool]:
        """Count a failed attempt; at `max_attempts` the event is set aside for good (a dead letter).
        Returns the attempts so far and whether the event is now dead."""
        await self._write(
            "UPDATE inbox SET attempts=attempts+1, last_error=?, "
            "dead_at=CASE WHEN attempts+1 >= ? THEN ? ELSE NULL END, "
            "payload=CASE WHEN attempts+1 >= ? THEN '{}' ELSE payload END WHERE channel=? AND key=?",
            (error[:500], max_attempts, utcnow().isoformat(), max_attempts, channel, key),
        )
        row = await self._fetchone("SELECT attempts, dead_at FROM inbox WHERE channel=? AND key=?", (channel, key))
        return (int(row["attempts"]), row["dead_at"] is not None) if row else (0, False)

    async def inbox_pending(self, channel: str) -> list[tuple[str, dict[str, Any]]]:
        """Events recorded but neither done nor dead, oldest first."""
        rows = await self._fetchall(
            "SELECT key, payload FROM inbox WHERE channel=? AND done_at IS NULL AND dead_at IS NULL "
            "ORDER BY received_at",
            (channel,),
        )
        return [(r["key"], json.loads(r["payload"])) for r in rows]

    async def inbox_dead(self, channel: str) -> list[dict[str, Any]]:
        rows = await self._fetchall(
            "SELECT key, attempts, last_error, dead_at FROM inbox WHERE channel=? AND dead_at IS NOT NULL "
            "ORDER BY received_at",
            (channel,),
        )
        return [dict(r) for r in rows]

    # --- roles granted at run time (bot/feedback.py decides with them) ----------------------------

    async def granted_role(self, subject: str) -> str | None:
        row = await self._fetchone("SELECT role FROM roles WHERE subject=?", (subject,))
        return str(row["role"]) if row else None

    async def grant_role(self, subject: str, role: str, granted_by: str) -> None:
        await self._write(
            "INSERT OR REPLACE INTO roles (subject, role, granted_by, granted_at) VALUES (?,?,?,?)",
            (subject, role, granted_by, utcnow().isoformat()),
        )

    async def revoke_role(self, subject: str) -> bool:
        """Drop `subject`'s granted role; whether it had one."""
        return (await self._write("DELETE FROM roles WHERE subject=?", (subject,))).rowcount == 1

    async def granted_roles(self) -> list[dict[str, Any]]:
        return [dict(r) for r in await self._fetchall("SELECT * FROM roles ORDER BY subject", ())]

    # --- hand-offs: conversations agents answer instead of the bot (bot/handoff.py) -------------

    async def handoff(self, channel: str, conversation_id: str) -> dict[str, Any] | None:
        row = await self._fetchone(
            "SELECT * FROM handoffs WHERE channel=? AND conversation_id=?", (channel, conversation_id)
        )
        return dict(row) if row else None

    async def handoff_start(self, channel: str, conversation_id: str, reason: str, started_by: str) -> bool:
        """Mark the conversation handed off; False if it already was."""
        now = utcnow().isoformat()
        cursor = await self._write(
            "INSERT OR IGNORE INTO handoffs (channel, conversation_id, reason, started_by, started_at, last_at) "
            "VALUES (?,?,?,?,?,?)",
            (channel, conversation_id, reason, started_by, now, now),
        )
        return cursor.rowcount == 1

    async def handoff_touch(self, channel: str, conversation_id: str) -> None:
        await self._write(
            "UPDATE handoffs SET last_at=? WHERE channel=? AND conversation_id=?",
            (utcnow().isoformat(), channel, conversation_id),
        )

    async def handoff_end(self, channel: str, conversation_id: str) -> bool:
        """Give the conversation back to the bot; whether it was handed off."""
        cursor = await self._write(
            "DELETE FROM handoffs WHERE channel=? AND conversation_id=?", (channel, conversation_id)
        )
        return cursor.rowcount == 1

    async def handoffs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in await self._fetchall("SELECT * FROM handoffs ORDER BY started_at", ())]

    async def add_agent_answer(
        self, channel: str, conversation_id: str, agent: str, text: str, message_id: str, session_idle: timedelta
    ) -> tuple[int, bool]:
        """An agent's reply in a handed-off conversation. It answers the customer's latest message if
        that is still waiting for a person (or adds to the agent's answer to it); otherwise it is kept
        as a turn of its own without a question. The turn id, and whether it answers a question."""
        latest = await self.latest_turn(channel, conversation_id)
        if latest is not None and latest.outcome in ("with_agent", "agent"):
            answer = f"{latest.answer}\n{text}" if latest.answer else text
            await self._write(
                "UPDATE turns SET answer=?, outcome='agent', model_version='agent', variant='agent' WHERE id=?",
                (answer, latest.id),
            )
            return latest.id, True
        turn_id = await self.add_turn(
            channel=channel,
            conversation_id=conversation_id,
            session=await self.session_for(channel, conversation_id, session_idle),
            user_id=agent,
            message_id=f"agent:{message_id}",
            user_text="",
            answer=text,
            model_version="agent",
            variant="agent",
            latency_ms=0.0,
            outcome="agent",
        )
        return turn_id, False

    # --- retention (bot/retention.py) -------------------------------------------------------------

    async def purge_before(self, cutoff: str) -> dict[str, int]:
        """Delete conversation text created before `cutoff` (ISO time, UTC) in one transaction, with freed
        pages overwritten; the rows deleted per table. Audit rows are kept (they hold no text)."""
        old_turns = "SELECT id FROM turns WHERE created_at < ?"
        statements = {
            "answer_messages": f"DELETE FROM answer_messages WHERE turn_id IN ({old_turns})",
            "ratings": f"DELETE FROM ratings WHERE turn_id IN ({old_turns})",
            "corrections": f"DELETE FROM corrections WHERE turn_id IN ({old_turns})",
            "turns": "DELETE FROM turns WHERE created_at < ?",
            "inbox": "DELETE FROM inbox WHERE COALESCE(done_at, dead_at, received_at) < ?",
            "conversations": "DELETE FROM conversations WHERE last_at < ?",
        }
        deleted: dict[str, int] = {}
        await self._db.execute("PRAGMA secure_delete=ON")
        try:
            await self._db.execute("BEGIN IMMEDIATE")
            for table, sql in statements.items():
                deleted[table] = (await self._db.execute(sql, (cutoff,))).rowcount
            await self._db.commit()
        except BaseException:
            await self._db.rollback()
            raise
        finally:
            await self._db.execute("PRAGMA secure_delete=OFF")
        await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # old page images leave the WAL too
        return deleted

    async def ping(self) -> None:
        """A read of the database file itself (health checks): raises if it cannot be read."""
        await self._fetchone("SELECT count(*) FROM sqlite_master", ())

    # --- plumbing -------------------------------------------------------------------------------

    async def _write(self, sql: str, args: Iterable[Any]) -> aiosqlite.Cursor:
        cursor = await self._db.execute(sql, tuple(args))
        await self._db.commit()
        return cursor

    async def _fetchone(self, sql: str, args: Iterable[Any]) -> aiosqlite.Row | None:
        return await (await self._db.execute(sql, tuple(args))).fetchone()

    async def _fetchall(self, sql: str, args: Iterable[Any]) -> list[aiosqlite.Row]:
        return list(await (await self._db.execute(sql, tuple(args))).fetchall())


def _turn(row: aiosqlite.Row) -> StoredTurn:
    values = dict(row)
    values["cached"] = bool(values["cached"])
    return StoredTurn(**values)


# --- the audit log's hash chain (bot/audit.py verifies it) ---------------------------------------

# What the first row chains from.
AUDIT_GENESIS = "0" * 64
# The hashed content of a row, in this order; the id is not part of it, the chain fixes the order.
AUDIT_FIELDS = ("at", "actor", "role", "action", "target", "channel", "outcome", "detail")


def audit_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the previous row's hash followed by this row's canonical content: a compact
    JSON array of AUDIT_FIELDS (UTF-8, `detail` as the stored text, so any edit shows)."""
    content = json.dumps([row[name] for name in AUDIT_FIELDS], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256((prev_hash + content).encode("utf-8")).hexdigest()
