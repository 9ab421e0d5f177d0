"""The store: conversations, turns, ratings, the audit log, the inbox, roles, hand-offs and leases.

Its logic is written once against `Database` (bot/store/db.py), in SQL both backends accept: SQLite in
the data directory (bot/store/sqlite.py), or PostgreSQL when BOT_DATABASE_URL is set, shared by several
workers (bot/store/postgres.py). Every write commits before the caller acknowledges anything, so a
restart loses nothing acknowledged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bot.config import BotSettings, ConfigError
from bot.message import utcnow
from bot.store.db import Database, Duplicate, Row
from bot.store.postgres import Postgres
from bot.store.sqlite import MIGRATIONS, SQLite

__all__ = [
    "AUDIT_FIELDS",
    "AUDIT_GENESIS",
    "MIGRATIONS",
    "Duplicate",
    "Store",
    "StoredTurn",
    "audit_hash",
    "database_path",
    "open_store",
    "store_location",
]

DB_FILE = "bot.sqlite3"


def database_path(data_dir: Path) -> Path:
    """Where the store of a data directory lives (the bot and the tuning commands share it)."""
    return Path(data_dir) / DB_FILE


def store_location(data_dir: Path, database_url: str = "") -> Path | str:
    """Where the store is (for `Store.open`): the database URL (BOT_DATABASE_URL) if one is set, for
    PostgreSQL, else the SQLite file in the data directory."""
    return database_url or database_path(data_dir)


async def open_store(settings: BotSettings) -> Store:
    """The store the bot and the commands open (see `store_location`)."""
    return await Store.open(store_location(settings.data_dir, settings.database_url))


# Outcomes whose answers are part of a conversation: the bot's own, and an agent's during a hand-off.
CONVERSED = "('answered', 'agent')"
# What an inbox event must be for a worker to claim it (arguments: the worker, the time now): open, and
# not leased by another worker, or no longer (the worker died or hangs).
CLAIMABLE = "done_at IS NULL AND dead_at IS NULL AND (claimed_by IS NULL OR claimed_by = ? OR lease_until < ?)"
# The PostgreSQL advisory lock appends to the audit log take (postgres.MIGRATION_LOCK is the other key).
AUDIT_LOCK = 0x5B07_0002


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
    def __init__(self, db: Database) -> None:
        self._db = db
        # Appends from this process take turns, so they never race each other for the chain's head (the
        # compare-and-swap in `audit` is for other processes); under a flood they would starve.
        self._audit_lock = asyncio.Lock()

    @classmethod
    async def open(cls, location: Path | str) -> Store:
        """Open and migrate the store at `location`: a postgresql:// URL, else a SQLite file."""
        if isinstance(location, str) and "://" in location:
            if not location.startswith(("postgresql://", "postgres://")):
                raise ConfigError("config error: BOT_DATABASE_URL: not a postgresql:// URL")
            db: Database = await Postgres.connect(location)
        else:
            db = await SQLite.connect(location)
        store = cls(db)
        try:
            await db.migrate()
            await store._seal_audit()
        except BaseException:
            await db.close()
            raise
        return store

    async def close(self) -> None:
        await self._db.close()

    # --- sessions -------------------------------------------------------------------------------

    async def session_for(self, channel: str, conversation_id: str, idle: timedelta) -> int:
        """The conversation's current session; a new one after `idle` without a message."""
        now = utcnow()
        row = await self._db.fetchone(
            "SELECT session, last_at FROM conversations WHERE channel=? AND conversation_id=?",
            (channel, conversation_id),
        )
        if row is None:
            session = 1
        elif now - datetime.fromisoformat(row["last_at"]) > idle:
            session = row["session"] + 1
        else:
            session = row["session"]
        await self._db.execute(
            "INSERT INTO conversations (channel, conversation_id, session, last_at) VALUES (?,?,?,?) "
            "ON CONFLICT (channel, conversation_id) DO UPDATE SET session=excluded.session, last_at=excluded.last_at",
            (channel, conversation_id, session, now.isoformat()),
        )
        return session

    async def new_session(self, channel: str, conversation_id: str) -> int:
        now = utcnow().isoformat()
        row = await self._db.fetchone(
            "INSERT INTO conversations (channel, conversation_id, session, last_at) VALUES (?,?,2,?) "
            "ON CONFLICT (channel, conversation_id) DO UPDATE SET session=conversations.session+1, "
            "last_at=excluded.last_at RETURNING session",
            (channel, conversation_id, now),
        )
        assert row is not None  # RETURNING gives the row written
        return int(row["session"])

    # --- turns ----------------------------------------------------------------------------------

    async def add_turn(self, **fields: Any) -> int:
        """Store a turn; its id. Raises `Duplicate` if the channel's message is stored already."""
        fields.setdefault("created_at", utcnow().isoformat())
        fields["cached"] = int(fields.get("cached", False))
        names = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        row = await self._db.fetchone(
            f"INSERT INTO turns ({names}) VALUES ({marks}) RETURNING id", tuple(fields.values())
        )
        assert row is not None  # RETURNING gives the row written
        return int(row["id"])

    async def turn(self, turn_id: int) -> StoredTurn | None:
        row = await self._db.fetchone("SELECT * FROM turns WHERE id=?", (turn_id,))
        return _turn(row) if row else None

    async def turn_for_message(self, channel: str, message_id: str) -> StoredTurn | None:
        row = await self._db.fetchone("SELECT * FROM turns WHERE channel=? AND message_id=?", (channel, message_id))
        return _turn(row) if row else None

    async def history(self, channel: str, conversation_id: str, session: int, limit: int = 50) -> list[StoredTurn]:
        """Answered turns of one session (by the bot or an agent), oldest first."""
        rows = await self._db.fetchall(
            "SELECT * FROM (SELECT * FROM turns WHERE channel=? AND conversation_id=? AND session=? "
            f"AND outcome IN {CONVERSED} AND user_text != '' ORDER BY id DESC LIMIT ?) AS recent ORDER BY id",
            (channel, conversation_id, session, limit),
        )
        return [_turn(r) for r in rows]

    async def latest_turn(self, channel: str, conversation_id: str) -> StoredTurn | None:
        """The conversation's most recent turn, in any session (None: the bot never answered there)."""
        row = await self._db.fetchone(
            "SELECT * FROM turns WHERE channel=? AND conversation_id=? ORDER BY id DESC LIMIT 1",
            (channel, conversation_id),
        )
        return _turn(row) if row else None

    async def session_turns(self, channel: str, conversation_id: str, session: int, before_id: int) -> list[StoredTurn]:
        rows = await self._db.fetchall(
            "SELECT * FROM turns WHERE channel=? AND conversation_id=? AND session=? AND id<? "
            f"AND outcome IN {CONVERSED} AND user_text != '' ORDER BY id",
            (channel, conversation_id, session, before_id),
        )
        return [_turn(r) for r in rows]

    async def turns(self, outcome: str | None = None) -> list[StoredTurn]:
        if outcome is None:
            return [_turn(r) for r in await self._db.fetchall("SELECT * FROM turns ORDER BY id", ())]
        return [
            _turn(r) for r in await self._db.fetchall("SELECT * FROM turns WHERE outcome=? ORDER BY id", (outcome,))
        ]

    # --- platform message ids of answers, so reactions find their turn ---------------------------

    async def link_answer_message(self, channel: str, chat_id: str, message_id: str, turn_id: int) -> None:
        await self._db.execute(
            "INSERT INTO answer_messages (channel, chat_id, message_id, turn_id) VALUES (?,?,?,?) "
            "ON CONFLICT (channel, chat_id, message_id) DO UPDATE SET turn_id=excluded.turn_id",
            (channel, str(chat_id), str(message_id), turn_id),
        )

    async def answer_was_sent(self, channel: str, chat_id: str, turn_id: int) -> bool:
        """Whether a message of this answer is already in the chat (a replay must not send it again)."""
        row = await self._db.fetchone(
            "SELECT 1 FROM answer_messages WHERE channel=? AND chat_id=? AND turn_id=?",
            (channel, str(chat_id), turn_id),
        )
        return row is not None

    async def turn_for_answer_message(self, channel: str, chat_id: str, message_id: str) -> int | None:
        row = await self._db.fetchone(
            "SELECT turn_id FROM answer_messages WHERE channel=? AND chat_id=? AND message_id=?",
            (channel, str(chat_id), str(message_id)),
        )
        return int(row["turn_id"]) if row else None

    # --- ratings and corrections ----------------------------------------------------------------

    async def set_rating(self, turn_id: int, rater: str, role: str, rating: int | None) -> None:
        """A later rating by the same rater replaces the earlier one; None retracts it."""
        if rating is None:
            await self._db.execute("DELETE FROM ratings WHERE turn_id=? AND rater=?", (turn_id, rater))
            return
        await self._db.execute(
            "INSERT INTO ratings (turn_id, rater, role, rating, created_at) VALUES (?,?,?,?,?) "
            "ON CONFLICT (turn_id, rater) DO UPDATE SET role=excluded.role, rating=excluded.rating, "
            "created_at=excluded.created_at",
            (turn_id, rater, role, rating, utcnow().isoformat()),
        )

    async def ratings(self, turn_id: int | None = None) -> list[dict[str, Any]]:
        if turn_id is None:
            rows = await self._db.fetchall("SELECT * FROM ratings ORDER BY created_at", ())
        else:
            rows = await self._db.fetchall("SELECT * FROM ratings WHERE turn_id=? ORDER BY created_at", (turn_id,))
        return [dict(r) for r in rows]

    async def add_correction(self, turn_id: int, rater: str, text: str) -> None:
        await self._db.execute(
            "INSERT INTO corrections (turn_id, rater, text, created_at) VALUES (?,?,?,?)",
            (turn_id, rater, text, utcnow().isoformat()),
        )

    async def corrections(self) -> list[dict[str, Any]]:
        return [dict(r) for r in await self._db.fetchall("SELECT * FROM corrections ORDER BY id", ())]

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
        another one, never fork the chain: the loser reads the new last row and tries again. On
        PostgreSQL the read and the INSERT also run under an advisory lock (`Database.exclusive`): its
        concurrent transactions would each see the same last row, and both would append to it."""
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
            async with self._db.exclusive(AUDIT_LOCK) as db:
                last = await db.fetchone("SELECT hash FROM audit ORDER BY id DESC LIMIT 1", ())
                prev = AUDIT_GENESIS if last is None else last["hash"] or ""
                row["at"] = utcnow().isoformat()
                inserted = await db.fetchone(
                    "INSERT INTO audit (at, actor, role, action, target, channel, outcome, detail, prev_hash, hash) "
                    "SELECT ?,?,?,?,?,?,?,?,?,? "
                    "WHERE COALESCE((SELECT COALESCE(hash, '') FROM audit ORDER BY id DESC LIMIT 1), ?) = ? "
                    "RETURNING id",
                    (*(row[name] for name in AUDIT_FIELDS), prev, audit_hash(prev, row), AUDIT_GENESIS, prev),
                )
            if inserted is not None:
                return int(inserted["id"])
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
            rows = await self._db.fetchall(sql + " ORDER BY id", args)
        else:
            rows = await self._db.fetchall(
                f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT ?) AS newest ORDER BY id", [*args, limit]
            )
        return [dict(r) for r in rows]

    async def _seal_audit(self) -> None:
        """Chain the rows written before the log had a hash chain (once, at the first open after the
        migration). Only a log without any hashed row is sealed: a hashless row slipped in later stays
        unhashed, so `verify` reports it instead of this step blessing it."""
        if await self._db.fetchone("SELECT 1 FROM audit WHERE hash IS NULL LIMIT 1", ()) is None:
            return
        async with self._db.transaction() as tx:  # another process may be opening the store too
            if await tx.fetchone("SELECT 1 FROM audit WHERE hash IS NOT NULL LIMIT 1", ()) is None:
                prev = AUDIT_GENESIS
                for row in await tx.fetchall("SELECT * FROM audit ORDER BY id", ()):
                    digest = audit_hash(prev, row)
                    await tx.execute("UPDATE audit SET prev_hash=?, hash=? WHERE id=?", (prev, digest, row["id"]))
                    prev = digest

    # --- inbox: platform events recorded before they are acknowledged ---------------------------

    async def inbox_add(self, channel: str, key: str, payload: dict[str, Any]) -> bool:
        """Record an incoming event; False if it was recorded before (a redelivery)."""
        added = await self._db.execute(
            "INSERT INTO inbox (channel, key, payload, received_at) VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
            (channel, key, json.dumps(payload, ensure_ascii=False), utcnow().isoformat()),
        )
        return added == 1

    async def inbox_take(self, channel: str, key: str, worker: str, lease: timedelta) -> dict[str, Any] | None:
        """Claim one event for `worker` until `lease` from now, if it is neither done nor dead and no
        other worker's lease on it is live; its payload if taken, else None."""
        now = utcnow()
        row = await self._db.fetchone(
            f"UPDATE inbox SET claimed_by=?, lease_until=? WHERE channel=? AND key=? AND {CLAIMABLE} RETURNING payload",
            (worker, (now + lease).isoformat(), channel, key, worker, now.isoformat()),
        )
        return json.loads(row["payload"]) if row else None

    async def inbox_claim(
        self, channel: str, worker: str, lease: timedelta, limit: int = 100
    ) -> list[tuple[str, dict[str, Any]]]:
        """Claim up to `limit` events as `inbox_take` does, oldest first: those recorded but not yet
        answered (a restart's backlog, or a dead worker's). Two workers claiming at once never get the
        same event (PostgreSQL skips the rows the other is claiming)."""
        now = utcnow()
        # Picked once (MATERIALIZED): PostgreSQL may run a LIMIT subquery inside the UPDATE again, and
        # skipping the rows it just locked itself, pick more than `limit`.
        rows = await self._db.fetchall(
            f"WITH picked AS MATERIALIZED (SELECT key FROM inbox WHERE channel=? AND {CLAIMABLE} "
            f"ORDER BY received_at, key LIMIT ?{self._db.skip_locked}) "
            "UPDATE inbox SET claimed_by=?, lease_until=? WHERE channel=? AND key IN (SELECT key FROM picked) "
            "RETURNING key, payload, received_at",
            (channel, worker, now.isoformat(), limit, worker, (now + lease).isoformat(), channel),
        )
        rows.sort(key=lambda r: (r["received_at"], r["key"]))  # RETURNING keeps no order
        return [(r["key"], json.loads(r["payload"])) for r in rows]

    async def inbox_done(self, channel: str, key: str) -> None:
        """Mark an event done and free its lease; its payload (the platform's text, names) is dropped,
        the key stays for dedup."""
        await self._db.execute(
            "UPDATE inbox SET done_at=?, payload='{}', claimed_by=NULL, lease_until=NULL WHERE channel=? AND key=?",
            (utcnow().isoformat(), channel, key),
        )

    async def inbox_prune(self, channel: str, older_than: timedelta) -> int:
        """Forget events finished longer ago than `older_than` (platforms redeliver within minutes)."""
        cutoff = (utcnow() - older_than).isoformat()
        return await self._db.execute(
            "DELETE FROM inbox WHERE channel=? AND COALESCE(done_at, dead_at) < ?", (channel, cutoff)
        )

    async def inbox_failed(self, channel: str, key: str, error: str, max_attempts: int) -> tuple[int, bool]:
        """Count a failed attempt; at `max_attempts` the event is set aside for good (a dead letter).
        Returns the attempts so far and whether the event is now dead. The worker's lease stays: the
        retry is its own, or another worker's once the lease runs out."""
        row = await self._db.fetchone(
            "UPDATE inbox SET attempts=attempts+1, last_error=?, "
            "dead_at=CASE WHEN attempts+1 >= ? THEN ? ELSE NULL END, "
            "payload=CASE WHEN attempts+1 >= ? THEN '{}' ELSE payload END WHERE channel=? AND key=? "
            "RETURNING attempts, dead_at",
            (error[:500], max_attempts, utcnow().isoformat(), max_attempts, channel, key),
        )
        return (int(row["attempts"]), row["dead_at"] is not None) if row else (0, False)

    async def inbox_pending(self, channel: str) -> list[tuple[str, dict[str, Any]]]:
        """Events recorded but neither done nor dead, oldest first."""
        rows = await self._db.fetchall(
            "SELECT key, payload FROM inbox WHERE channel=? AND done_at IS NULL AND dead_at IS NULL "
            "ORDER BY received_at",
            (channel,),
        )
        return [(r["key"], json.loads(r["payload"])) for r in rows]

    async def inbox_dead(self, channel: str) -> list[dict[str, Any]]:
        rows = await self._db.fetchall(
            "SELECT key, attempts, last_error, dead_at FROM inbox WHERE channel=? AND dead_at IS NOT NULL "
            "ORDER BY received_at",
            (channel,),
        )
        return [dict(r) for r in rows]

    # --- named leases: jobs one worker at a time does (Telegram's long polling) -------------------

    async def lease(self, name: str, holder: str, ttl: timedelta) -> bool:
        """Hold lease `name` until `ttl` from now: taken if free or expired, renewed if `holder` has it;
        False while another holder's lease is live."""
        now = utcnow()
        row = await self._db.fetchone(
            "INSERT INTO leases (name, holder, expires_at) VALUES (?,?,?) "
            "ON CONFLICT (name) DO UPDATE SET holder=excluded.holder, expires_at=excluded.expires_at "
            "WHERE leases.holder=excluded.holder OR leases.expires_at < ? RETURNING holder",
            (name, holder, (now + ttl).isoformat(), now.isoformat()),
        )
        return row is not None

    async def lease_release(self, name: str, holder: str) -> None:
        """Give lease `name` up, if `holder` has it (another worker may take it at once)."""
        await self._db.execute("DELETE FROM leases WHERE name=? AND holder=?", (name, holder))

    # --- roles granted at run time (bot/feedback.py decides with them) ----------------------------

    async def granted_role(self, subject: str) -> str | None:
        row = await self._db.fetchone("SELECT role FROM roles WHERE subject=?", (subject,))
        return str(row["role"]) if row else None

    async def grant_role(self, subject: str, role: str, granted_by: str) -> None:
        await self._db.execute(
            "INSERT INTO roles (subject, role, granted_by, granted_at) VALUES (?,?,?,?) ON CONFLICT (subject) "
            "DO UPDATE SET role=excluded.role, granted_by=excluded.granted_by, granted_at=excluded.granted_at",
            (subject, role, granted_by, utcnow().isoformat()),
        )

    async def revoke_role(self, subject: str) -> bool:
        """Drop `subject`'s granted role; whether it had one."""
        return await self._db.execute("DELETE FROM roles WHERE subject=?", (subject,)) == 1

    async def granted_roles(self) -> list[dict[str, Any]]:
        return [dict(r) for r in await self._db.fetchall("SELECT * FROM roles ORDER BY subject", ())]

    # --- hand-offs: conversations agents answer instead of the bot (bot/handoff.py) -------------

    async def handoff(self, channel: str, conversation_id: str) -> dict[str, Any] | None:
        row = await self._db.fetchone(
            "SELECT * FROM handoffs WHERE channel=? AND conversation_id=?", (channel, conversation_id)
        )
        return dict(row) if row else None

    async def handoff_start(self, channel: str, conversation_id: str, reason: str, started_by: str) -> bool:
        """Mark the conversation handed off; False if it already was."""
        now = utcnow().isoformat()
        started = await self._db.execute(
            "INSERT INTO handoffs (channel, conversation_id, reason, started_by, started_at, last_at) "
            "VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING",
            (channel, conversation_id, reason, started_by, now, now),
        )
        return started == 1

    async def handoff_touch(self, channel: str, conversation_id: str) -> None:
        await self._db.execute(
            "UPDATE handoffs SET last_at=? WHERE channel=? AND conversation_id=?",
            (utcnow().isoformat(), channel, conversation_id),
        )

    async def handoff_end(self, channel: str, conversation_id: str) -> bool:
        """Give the conversation back to the bot; whether it was handed off."""
        ended = await self._db.execute(
            "DELETE FROM handoffs WHERE channel=? AND conversation_id=?", (channel, conversation_id)
        )
        return ended == 1

    async def handoffs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in await self._db.fetchall("SELECT * FROM handoffs ORDER BY started_at", ())]

    async def add_agent_answer(
        self, channel: str, conversation_id: str, agent: str, text: str, message_id: str, session_idle: timedelta
    ) -> tuple[int, bool]:
        """An agent's reply in a handed-off conversation. It answers the customer's latest message if
        that is still waiting for a person (or adds to the agent's answer to it); otherwise it is kept
        as a turn of its own without a question. The turn id, and whether it answers a question."""
        latest = await self.latest_turn(channel, conversation_id)
        if latest is not None and latest.outcome in ("with_agent", "agent"):
            answer = f"{latest.answer}\n{text}" if latest.answer else text
            await self._db.execute(
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
        pages overwritten where the backend can (`Database.erasing`); the rows deleted per table. Audit
        rows are kept (they hold no text)."""
        old_turns = "SELECT id FROM turns WHERE created_at < ?"
        statements = {
            "answer_messages": f"DELETE FROM answer_messages WHERE turn_id IN ({old_turns})",
            "ratings": f"DELETE FROM ratings WHERE turn_id IN ({old_turns})",
            "corrections": f"DELETE FROM corrections WHERE turn_id IN ({old_turns})",
            "turns": "DELETE FROM turns WHERE created_at < ?",
            "inbox": "DELETE FROM inbox WHERE COALESCE(done_at, dead_at, received_at) < ?",
            "conversations": "DELETE FROM conversations WHERE last_at < ?",
        }
        async with self._db.erasing() as tx:
            return {table: await tx.execute(sql, (cutoff,)) for table, sql in statements.items()}

    async def ping(self) -> None:
        """A read of the database itself (health checks): raises if it cannot be read."""
        await self._db.ping()


def _turn(row: Row) -> StoredTurn:
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
