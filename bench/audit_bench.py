"""Audit log benchmark: what the hash chain costs per appended event, and how long `verify` takes.

    .venv/bin/python bench/audit_bench.py [--appends 10000] [--rows 100000]

1. Append: `Store.audit` on a file DB (WAL, synchronous=NORMAL, one commit per event), interleaved
   with a plain one-row write of the same store (`inbox_add`) as the baseline; median and p99 in µs.
2. Verify: a log of --rows chained rows (written directly with the store's hash, to save time),
   read through the store and walked (`bot.audit.verify`), then the real `python -m bot audit verify`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: import the project from the checkout

from bot.audit import verify, verify_rows  # noqa: E402
from bot.store import AUDIT_FIELDS, AUDIT_GENESIS, Store, audit_hash, database_path  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench_append(folder: Path, count: int) -> None:
    store = await Store.open(database_path(folder))
    chained: list[float] = []
    plain: list[float] = []
    try:
        for i in range(count):
            t = time.perf_counter_ns()
            await store.audit(f"telegram:{i % 50}", "rating", role="agent", target=f"turn:{i}", turn_id=i, rating=1)
            chained.append((time.perf_counter_ns() - t) / 1000)
            t = time.perf_counter_ns()
            await store.inbox_add("bench", str(i), {"update_id": i})
            plain.append((time.perf_counter_ns() - t) / 1000)
        assert (await verify(store)).ok
    finally:
        await store.close()
    print(f"## Append ({count} events, file DB, one commit each)\n")
    print("| write | median µs | p99 µs |\n| --- | ---: | ---: |")
    for name, values in (("Store.audit (hash-chained)", chained), ("inbox_add (plain one-row insert)", plain)):
        print(f"| {name} | {statistics.median(values):.0f} | {percentile(values, 0.99):.0f} |")
    print(f"\nchained / plain median: {statistics.median(chained) / statistics.median(plain):.2f}x\n")


def write_log(path: Path, rows: int) -> None:
    """A chained log of `rows` rows, written in one transaction with the store's own hash."""
    import sqlite3

    async def create() -> None:
        await (await Store.open(path)).close()  # the schema, migrated

    asyncio.run(create())
    db = sqlite3.connect(path)
    prev, values = AUDIT_GENESIS, []
    for i in range(rows):
        row = {
            "at": f"2025-01-01T00:00:{i % 60:02d}.{i:06d}+00:00",
            "actor": f"telegram:{i % 50}",
            "role": "agent",
            "action": "rating",
            "target": f"turn:{i}",
            "channel": "telegram",
            "outcome": "ok",
            "detail": json.dumps({"turn_id": i, "rating": 1}),
        }
        digest = audit_hash(prev, row)
        values.append((*(row[name] for name in AUDIT_FIELDS), prev, digest))
        prev = digest
    names = ", ".join((*AUDIT_FIELDS, "prev_hash", "hash"))
    db.executemany(f"INSERT INTO audit ({names}) VALUES ({', '.join('?' * (len(AUDIT_FIELDS) + 2))})", values)
    db.commit()
    db.close()


async def bench_verify_in_process(path: Path) -> tuple[float, float, int]:
    store = await Store.open(path)
    try:
        t = time.perf_counter()
        rows = await store.audit_events()
        read_s = time.perf_counter() - t
        t = time.perf_counter()
        verdict = verify_rows(rows)
        walk_s = time.perf_counter() - t
        assert verdict.ok, verdict.line
        return read_s, walk_s, verdict.rows
    finally:
        await store.close()


def bench_verify(folder: Path, rows: int) -> None:
    path = database_path(folder)
    write_log(path, rows)
    read_s, walk_s, counted = asyncio.run(bench_verify_in_process(path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")} | {"BOT_DATA_DIR": str(folder)}
    t = time.perf_counter()
    cli = subprocess.run(
        [sys.executable, "-m", "bot", "audit", "verify"], cwd=folder, env=env, capture_output=True, text=True
    )
    cli_s = time.perf_counter() - t
    assert cli.returncode == 0, cli.stdout + cli.stderr
    print(f"## Verify ({counted} rows)\n")
    print("| step | seconds |\n| --- | ---: |")
    print(f"| read all rows through the store | {read_s:.2f} |")
    print(f"| walk the chain (SHA-256 per row) | {walk_s:.2f} |")
    print(f"| `python -m bot audit verify`, whole process | {cli_s:.2f} |")
    print(f"\n`{cli.stdout.strip()}`")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appends", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as scratch:
        asyncio.run(bench_append(Path(scratch) / "append", args.appends))
        bench_verify(Path(scratch) / "verify", args.rows)


if __name__ == "__main__":
    main()
