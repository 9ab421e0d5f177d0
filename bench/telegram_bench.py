"""Telegram channel benchmark: the whole bot (long polling, inbox, pipeline, starter model, sending)
against the fake Bot API server on 127.0.0.1. Latency runs from queueing an update at the fake
to the fake receiving the answer's sendMessage. Each simulated customer waits for an answer before
asking again; cases run with Telegram's flood limits on, and off to show what the bot itself can do.

    .venv/bin/python bench/telegram_bench.py [--data-dir DIR_WITH_A_REGISTERED_MODEL]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the project and its test fakes

import adapters.telegram as telegram  # noqa: E402
from bot.__main__ import start  # noqa: E402
from bot.config import BotSettings, TelegramSettings  # noqa: E402
from tests.fakes.telegram_api import TOKEN, FakeTelegram, message  # noqa: E402
from tuning.bootstrap import bootstrap  # noqa: E402

TELEGRAM_RATES = (telegram.CHAT_RATE, telegram.GROUP_RATE, telegram.OVERALL_RATE)
NO_RATES = ((1_000_000, 1.0),) * 3
CASES = ((1, 30), (50, 3))  # (concurrent chats, messages each)


def questions() -> list[str]:
    with open(ROOT / "data" / "sample" / "faq.csv", encoding="utf-8") as f:
        return list(dict.fromkeys(row["instruction"] for row in csv.DictReader(f)))


async def run_case(models: Path, chats: int, per_chat: int) -> dict[str, float]:
    asked = questions()
    fake = FakeTelegram()
    await fake.start()
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch)
        shutil.copytree(models, data_dir / "models")
        settings = BotSettings(_env_file=None, data_dir=data_dir, http_port=0, user_rate_limit=0)  # floods on purpose
        server = await start(
            settings, {"telegram": TelegramSettings(_env_file=None, bot_token=TOKEN, api_base=fake.url)}
        )
        latencies: list[float] = []

        async def customer(chat_id: int) -> None:
            for i in range(per_chat):
                began = time.perf_counter()
                await fake.push(message(chat_id, asked[(chat_id * 7 + i) % len(asked)]))
                latencies.append((await fake.wait_sent(i + 1, timeout=300, chat_id=chat_id))[i].at - began)

        began = time.perf_counter()
        await asyncio.gather(*(customer(10_000 + n) for n in range(chats)))
        elapsed = time.perf_counter() - began
        hits = server.bot.cache.hits
        await server.stop()
    await fake.stop()
    latencies.sort()
    return {
        "messages": len(latencies),
        "per_s": len(latencies) / elapsed,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "cache_hits": hits,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="a data dir holding a registered model (default: build one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as built:
        data_dir = args.data_dir
        if data_dir is None:
            print("building the starter model (a minute or more)...", file=sys.stderr)
            data_dir = Path(built)
            bootstrap(data_dir, BotSettings(_env_file=None).system_prompt)
        rows = []
        for limits in (True, False):
            telegram.CHAT_RATE, telegram.GROUP_RATE, telegram.OVERALL_RATE = TELEGRAM_RATES if limits else NO_RATES
            for chats, per_chat in CASES:
                result = await run_case(data_dir / "models", chats, per_chat)
                rows.append((chats, "on" if limits else "off", result))
    print(
        "| concurrent chats | Telegram limits | messages | messages/s | p50 latency (ms) | p99 latency (ms) "
        "| cache hits |"
    )
    print("|---:|:---:|---:|---:|---:|---:|---:|")
    for chats, limits, r in rows:
        print(
            f"| {chats} | {limits} | {r['messages']:.0f} | {r['per_s']:.1f} | {r['p50'] * 1000:.0f} "
            f"| {r['p99'] * 1000:.0f} | {r['cache_hits']:.0f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
