"""The few database operations the store needs, behind which SQLite (sqlite.py) and PostgreSQL
(postgres.py) differ. The store's SQL is the subset both accept, with `?` placeholders."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

Row = dict[str, Any]


class Duplicate(Exception):
    """A row with the same unique key is already there (the same message stored twice)."""


class Database(ABC):
    # Appended to a SELECT whose rows are about to be claimed: PostgreSQL passes over rows another
    # transaction is claiming; SQLite needs nothing (one writer at a time, a statement is atomic).
    skip_locked = ""

    @abstractmethod
    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement (committed unless inside `transaction`); the rows it changed."""

    @abstractmethod
    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """Rows of a SELECT, or of a write with RETURNING (committed unless inside `transaction`)."""

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, args)
        return rows[0] if rows else None

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Database]:
        """All or nothing, and no other writer in between: the statements of the `Database` it yields
        commit together at the end, or none does if the block raises."""

    @abstractmethod
    def exclusive(self, key: int) -> AbstractAsyncContextManager[Database]:
        """Statements that no other worker runs under the same key at the same time, so a read and
        the write depending on it do not race. SQLite yields itself: its statements commit one by one,
        and the caller's compare-and-swap settles races with other processes."""

    @abstractmethod
    def erasing(self) -> AbstractAsyncContextManager[Database]:
        """A transaction for deletes that must not leave the deleted text readable where it can help."""

    @abstractmethod
    async def migrate(self) -> None:
        """Bring the schema to the newest of the backend's migrations."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise if the database cannot be read."""

    @abstractmethod
    async def close(self) -> None: ...
