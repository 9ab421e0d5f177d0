"""PostgreSQL (asyncpg pool): several workers share one database. Statements outside a transaction
commit on their own, as on SQLite; what must not race between workers takes an advisory lock."""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bot.config import ConfigError
from bot.store.db import Database, Duplicate, Row

# Append-only, entry for entry the same schema as SQLite's list (bot/store/sqlite.py); the version is
# the one row of `schema_version` (PostgreSQL has no user_version).
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
        id BIGSERIAL PRIMARY KEY,
        channel TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        session INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        user_text TEXT NOT NULL,
        answer TEXT NOT NULL,
        model_version TEXT NOT NULL,
        variant TEXT NOT NULL DEFAULT 'current',
        latency_ms DOUBLE PRECISION NOT NULL,
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
        turn_id BIGINT NOT NULL REFERENCES turns(id),
        PRIMARY KEY (channel, chat_id, message_id)
    );
    CREATE TABLE ratings (
        turn_id BIGINT NOT NULL REFERENCES turns(id),
        rater TEXT NOT NULL,
        role TEXT NOT NULL,
        rating INTEGER NOT NULL CHECK (rating IN (-1, 1)),
        created_at TEXT NOT NULL,
        PRIMARY KEY (turn_id, rater)
    );
    CREATE TABLE corrections (
        id BIGSERIAL PRIMARY KEY,
        turn_id BIGINT NOT NULL REFERENCES turns(id),
        rater TEXT NOT NULL,
        text TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE audit (
        id BIGSERIAL PRIMARY KEY,
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
    """
    ALTER TABLE inbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0,
        ADD COLUMN last_error TEXT,
        ADD COLUMN dead_at TEXT;
    """,
    # The hash chain. No PostgreSQL store predates it, so there are no old rows to fill in (SQLite's
    # UPDATEs); TRUNCATE, which skips row triggers, is refused too.
    """
    ALTER TABLE audit ADD COLUMN role TEXT,
        ADD COLUMN target TEXT,
        ADD COLUMN channel TEXT,
        ADD COLUMN outcome TEXT NOT NULL DEFAULT 'ok',
        ADD COLUMN prev_hash TEXT,
        ADD COLUMN hash TEXT;
    CREATE INDEX audit_unsealed ON audit (id) WHERE hash IS NULL;
    CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'audit rows are append-only'; END $$;
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit FOR EACH ROW WHEN (OLD.hash IS NOT NULL)
        EXECUTE FUNCTION audit_append_only();
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit FOR EACH ROW EXECUTE FUNCTION audit_append_only();
    CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit EXECUTE FUNCTION audit_append_only();
    """,
    """
    CREATE TABLE roles (
        subject TEXT PRIMARY KEY,
        role TEXT NOT NULL CHECK (role IN ('agent', 'admin')),
        granted_by TEXT NOT NULL,
        granted_at TEXT NOT NULL
    );
    """,
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
    """
    ALTER TABLE inbox ADD COLUMN claimed_by TEXT,
        ADD COLUMN lease_until TEXT;
    CREATE INDEX inbox_open ON inbox (channel, received_at) WHERE done_at IS NULL AND dead_at IS NULL;
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at TEXT NOT NULL
    );
    """,
]
SCHEMA_VERSION = """
    CREATE TABLE IF NOT EXISTS schema_version (
        one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
        version INTEGER NOT NULL
    );
    INSERT INTO schema_version (version) VALUES (0) ON CONFLICT DO NOTHING;
"""
# Advisory lock keys (one namespace per database): workers migrating at once, and the schema-version
# table's creation with them, go one after the other.
MIGRATION_LOCK = 0x5B07_0001
POOL_SIZE = 10
CONNECT_TIMEOUT_S = 10.0


class Postgres(Database):
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, pool: asyncpg.Pool, conn: asyncpg.Connection | None = None) -> None:
        """Statements go to the pool, or to `conn` inside a transaction."""
        self._pool = pool
        self._conn = conn

    @classmethod
    async def connect(cls, url: str) -> Postgres:
        """A pool on `url`; one ConfigError line if the database cannot be reached (the password never shown)."""
        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=POOL_SIZE, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            password = urlsplit(url).password
            reason = str(exc) or type(exc).__name__
            if password:
                reason = reason.replace(password, "***")
            raise ConfigError(f"config error: BOT_DATABASE_URL: cannot connect to {shown(url)}: {reason}") from None
        return cls(pool)

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        try:
            status = await (self._conn or self._pool).execute(numbered(sql), *args)
        except asyncpg.UniqueViolationError as exc:
            raise Duplicate(str(exc)) from exc
        count = status.rsplit(" ", 1)[-1]  # "UPDATE 3", "INSERT 0 1"
        return int(count) if count.isdigit() else 0

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        try:
            return [dict(r) for r in await (self._conn or self._pool).fetch(numbered(sql), *args)]
        except asyncpg.UniqueViolationError as exc:
            raise Duplicate(str(exc)) from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Database]:
        assert self._conn is None, "transactions do not nest"
        async with self._pool.acquire() as conn, conn.transaction():
            yield Postgres(self._pool, conn)

    @asynccontextmanager
    async def exclusive(self, key: int) -> AsyncIterator[Database]:
        async with self.transaction() as tx:
            await tx.execute("SELECT pg_advisory_xact_lock(?)", (key,))
            yield tx

    def erasing(self) -> AbstractAsyncContextManager[Database]:
        # A plain transaction: PostgreSQL has no secure_delete nor a WAL to truncate on demand. Deleted
        # rows stay in the table's pages until VACUUM reuses them, and in its WAL and backups until those
        # are recycled: there, retention also depends on the database's vacuum and backup settings.
        return self.transaction()

    async def migrate(self) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
            try:
                await conn.execute(SCHEMA_VERSION)
                version = await conn.fetchval("SELECT version FROM schema_version")
                for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    async with conn.transaction():
                        await conn.execute(script)
                        await conn.execute("UPDATE schema_version SET version=$1", number)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")

    async def close(self) -> None:
        await self._pool.close()


@functools.lru_cache(maxsize=1024)
def numbered(sql: str) -> str:
    """The store's `?` placeholders as PostgreSQL's $1, $2, ...; quoted text is left alone."""
    count = itertools.count(1)
    parts = sql.split("'")
    for i in range(0, len(parts), 2):  # the even parts are outside quotes
        parts[i] = re.sub(r"\?", lambda _: f"${next(count)}", parts[i])
    return "'".join(parts)


def shown(url: str) -> str:
    """The URL as messages may show it: without password and query."""
    parts = urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit((parts.scheme, f"{user}@{host}" if user else host, parts.path, "", ""))
