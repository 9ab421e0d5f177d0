"""SQLite (aiosqlite): one connection, so one writer; WAL so readers never wait on it. Every statement
outside a transaction commits before the caller acknowledges anything, so a restart loses nothing
acknowledged."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any

import aiosqlite

from bot.store.db import Database, Duplicate, Row

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
    # Several workers share one database: a worker leases an inbox event while it answers it (another
    # takes it over once the lease runs out), and named leases keep one-at-a-time jobs to one worker.
    """
    ALTER TABLE inbox ADD COLUMN claimed_by TEXT;
    ALTER TABLE inbox ADD COLUMN lease_until TEXT;
    CREATE INDEX inbox_open ON inbox (channel, received_at) WHERE done_at IS NULL AND dead_at IS NULL;
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at TEXT NOT NULL
    );
    """,
]


class SQLite(Database):
    def __init__(self, conn: aiosqlite.Connection, lock: asyncio.Lock | None) -> None:
        """`lock` keeps this process's statements out of a transaction in progress on the shared
        connection: each statement takes it, a transaction holds it; None inside a transaction."""
        self._conn = conn
        self._lock = lock

    @classmethod
    async def connect(cls, path: Path | str) -> SQLite:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(str(path))
        conn.row_factory = aiosqlite.Row
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA busy_timeout=5000")
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process kill
        return cls(conn, asyncio.Lock())

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return (await self._run(sql, args, fetch=False))[1]

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return (await self._run(sql, args, fetch=True))[0]

    async def _run(self, sql: str, args: Sequence[Any], fetch: bool) -> tuple[list[Row], int]:
        alone = self._lock is not None  # not inside a transaction: commit (or undo) this statement now
        async with self._lock or nullcontext():
            try:
                cursor = await self._conn.execute(sql, tuple(args))
                rows = [dict(r) for r in await cursor.fetchall()] if fetch else []
                if alone and self._conn.in_transaction:
                    await self._conn.commit()
                return rows, cursor.rowcount
            except BaseException as exc:
                if alone and self._conn.in_transaction:  # a failed write must not keep the write lock
                    await self._conn.rollback()
                if isinstance(exc, sqlite3.IntegrityError) and exc.sqlite_errorname in UNIQUE_ERRORS:
                    raise Duplicate(str(exc)) from exc
                raise

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Database]:
        assert self._lock is not None, "transactions do not nest"
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")  # the write lock now: other processes wait for it
            try:
                yield SQLite(self._conn, None)
            except BaseException:
                await self._conn.rollback()
                raise
            await self._conn.commit()

    @asynccontextmanager
    async def exclusive(self, key: int) -> AsyncIterator[Database]:
        yield self

    @asynccontextmanager
    async def erasing(self) -> AsyncIterator[Database]:
        await self.execute("PRAGMA secure_delete=ON")  # freed pages are overwritten, not only unlinked
        try:
            async with self.transaction() as tx:
                yield tx
        finally:
            await self.execute("PRAGMA secure_delete=OFF")
        await self.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # old page images leave the WAL too

    async def migrate(self) -> None:
        row = await self.fetchone("PRAGMA user_version")
        version = int(row["user_version"]) if row else 0
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await self._conn.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")

    async def ping(self) -> None:
        await self.fetchone("SELECT count(*) FROM sqlite_master")  # a read of the file itself

    async def close(self) -> None:
        await self._conn.close()


UNIQUE_ERRORS = ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY")
