"""The tamper-evident audit log: check its hash chain and read it (`python -m bot audit verify|show`).

Every audit row (bot/store.py, `Store.audit`) keeps `prev_hash`, the hash of the row before it (the
first row: `AUDIT_GENESIS`, 64 zeros), and `hash` = SHA-256 of `prev_hash` followed by the row's
canonical content (`audit_hash`). Changing a row's content, deleting, inserting or reordering rows
breaks the chain at that row, and `verify` names it. The id is not hashed: the chain, not the
numbering, fixes the order. Rows written before the chain existed are chained at the first open
after the migration (`Store._seal_audit`). Triggers (SQLite's, PostgreSQL's) refuse UPDATE and
DELETE on chained rows.

A hash chain without a secret proves consistency, not authorship: whoever can write the file can
also recompute every hash after an edit. `verify` prints the head hash; keep it somewhere else (a
ticket, a log shipper) to pin the log down to that point.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bot.config import BotSettings
from bot.store import AUDIT_GENESIS, Store, audit_hash, store_location


@dataclass(frozen=True)
class Verdict:
    """What `verify` found: `ok`, the number of rows, the first bad row's id, one line saying so."""

    ok: bool
    rows: int
    line: str
    row_id: int | None = None
    head: str = AUDIT_GENESIS


def cli_actor() -> str:
    """Who runs a command-line operation, as the audit log names them: `cli:<OS user>`."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no user name in the environment nor the password database
        return "cli:unknown"


def verify_rows(rows: Sequence[Mapping[str, Any]]) -> Verdict:
    """Walk the chain over rows in id order; the first row that breaks it, with what happened to it."""
    position = {row["hash"]: i for i, row in enumerate(rows) if row["hash"]}
    expected = AUDIT_GENESIS
    for i, row in enumerate(rows):
        rid = row["id"]
        if not row["hash"]:
            return _broken(len(rows), rid, "inserted (it has no hash: written outside the store)")
        if audit_hash(row["prev_hash"] or "", row) != row["hash"]:
            return _broken(len(rows), rid, "edited (its content does not match its hash)")
        if row["prev_hash"] != expected:
            before = rows[i - 1]["id"] if i else None
            j = position.get(row["prev_hash"])
            if j is not None and j > i:
                return _broken(len(rows), rid, f"out of order (it follows row {rows[j]['id']}, which comes after it)")
            if j is not None and j < i - 1:
                first = rows[j + 1]["id"]
                return _broken(len(rows), first, f"inserted (row {rid} follows row {rows[j]['id']}, not row {before})")
            if before is None:
                if rid > 1:
                    return _broken(len(rows), 1, f"missing ({_ids(1, rid - 1)} before row {rid} deleted)")
                return _broken(len(rows), rid, "does not start the chain (rows before it deleted)")
            if rid > before + 1:
                gap = _ids(before + 1, rid - 1)
                return _broken(len(rows), before + 1, f"missing ({gap} between rows {before} and {rid} deleted)")
            return _broken(len(rows), rid, f"does not follow row {before} (a row between them removed or replaced)")
        expected = row["hash"]
    return Verdict(True, len(rows), f"{len(rows)} rows, chain intact (head {expected[:16]})", head=expected)


def _broken(total: int, rid: int, what: str) -> Verdict:
    return Verdict(False, total, f"audit chain broken at row {rid}: {what}", row_id=rid)


def _ids(first: int, last: int) -> str:
    return f"row {first}" if first == last else f"rows {first}-{last}"


async def verify(store: Store) -> Verdict:
    return verify_rows(await store.audit_events())


def since_utc(text: str) -> str:
    """An ISO date or time (no zone: UTC) as the store writes times, so they compare as text."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat()


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


def show_line(row: Mapping[str, Any]) -> str:
    """One audit row as one JSON line (detail parsed; the hashes are left to `verify`)."""
    shown = {k: v for k, v in row.items() if k not in ("prev_hash", "hash")}
    try:
        shown["detail"] = json.loads(row["detail"])
    except (TypeError, ValueError):
        pass  # not JSON (edited by hand?): shown as stored
    return json.dumps(shown, ensure_ascii=False)


def add_commands(parser: argparse.ArgumentParser) -> None:
    """The `audit` command's own subcommands, for `python -m bot audit ...`."""
    commands = parser.add_subparsers(dest="audit_command", required=True, metavar="{verify,show}")
    commands.add_parser(
        "verify",
        help="check the hash chain",
        description="Walk the audit log's hash chain. Prints one line: 'N rows, chain intact (head H)' and "
        "exits 0, or 'audit chain broken at row ID: edited|inserted|missing|out of order (...)' and exits 1.",
    )
    show = commands.add_parser(
        "show",
        help="print audit rows",
        description="Print audit rows oldest first, one JSON object per line (id, at, actor, role, action, "
        "target, channel, outcome, detail). Filters combine; --limit keeps the newest N.",
    )
    show.add_argument("--actor", help="only this actor, e.g. telegram:42, operator")
    show.add_argument("--action", help="only this action, e.g. rating, correction, promote")
    show.add_argument("--since", type=since_utc, help="only rows at or after this ISO date/time (UTC if no zone)")
    show.add_argument("--limit", type=_positive, help="only the newest N rows")


def main(args: argparse.Namespace, settings: BotSettings) -> int:
    """Run `audit verify` or `audit show`; the exit status (verify: 0 intact, 1 broken, 2 no store)."""
    location = store_location(settings.data_dir, settings.database_url)
    if isinstance(location, Path) and not location.exists():  # a SQLite file: opening would create it
        print(f"no store at {location} (check BOT_DATA_DIR)", flush=True)
        return 2

    async def go() -> int:
        store = await Store.open(location)
        try:
            if args.audit_command == "verify":
                verdict = await verify(store)
                print(verdict.line, flush=True)
                return 0 if verdict.ok else 1
            events = await store.audit_events(args.actor, args.action, args.since, args.limit)
            for row in events:
                print(show_line(row))
            return 0
        finally:
            await store.close()

    return asyncio.run(go())
