"""`python -m bot retention --days N`: delete conversation text older than N days.

Turns (questions and answers), their ratings, corrections and message links, finished inbox rows and idle
conversations older than the cut-off are deleted, with SQLite's `secure_delete` on so the freed pages are
overwritten, and the write-ahead log is truncated afterwards (PostgreSQL has neither: there the deleted
rows linger until VACUUM reuses their space, and in its WAL and backups). Audit rows stay: they hold
digests, never the texts, so `audit verify` still passes. The run itself is audited (`retention`, with
its counts). Run it from cron; it prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import timedelta

from bot.audit import cli_actor
from bot.config import BotSettings
from bot.message import utcnow
from bot.store import Store, open_store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--days", type=_days, required=True, help="keep the last N days of conversations")


def _days(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 36_500:
        raise argparse.ArgumentTypeError(f"--days: a whole number of days from 1 to 36500, got {text!r}")
    return int(text)


async def purge(store: Store, days: int, actor: str) -> dict[str, int]:
    """Delete what is older than `days` days; the rows deleted per table (audited)."""
    cutoff = (utcnow() - timedelta(days=days)).isoformat()
    deleted = await store.purge_before(cutoff)
    await store.audit(actor, "retention", days=days, cutoff=cutoff, deleted=deleted)
    return deleted


def main(args: argparse.Namespace, settings: BotSettings) -> int:
    async def go() -> dict[str, int]:
        store = await open_store(settings)
        try:
            return await purge(store, args.days, cli_actor())
        finally:
            await store.close()

    print(json.dumps({"days": args.days, "deleted": asyncio.run(go())}))
    return 0
