"""Slack channel benchmark, starter model on 2 cores, fake Slack Web API on 127.0.0.1.

Measures events acknowledged per second, the time from event to chat.postMessage (one event at a
time, and in a burst queued behind the model), and the acknowledgement time while the model is busy
(Slack wants it under 3 s). Prints a markdown table.

    .venv/bin/python bench/slack_bench.py [--data-dir DIR] [--sequential 20] [--burst 200]

--data-dir: a folder holding a built model (its `models/`); without it the starter model is built
into a temporary folder first (a minute or more).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from slack_sdk.signature import SignatureVerifier

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the project and its test fakes

from bot.__main__ import start  # noqa: E402
from bot.config import BotSettings, SlackSettings  # noqa: E402
from tests.fakes.slack_api import FakeSlackApi  # noqa: E402
from tuning.bootstrap import bootstrap  # noqa: E402

TOKEN, SECRET = "xoxb-bench-token", "bench-signing-secret"
ACK_LIMIT_S = 3.0


def questions() -> list[str]:
    with open(ROOT / "data" / "sample" / "faq.csv", encoding="utf-8") as f:
        return list(dict.fromkeys(row["instruction"] for row in csv.DictReader(f)))


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


class Sender:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.count = 0

    async def dm(self, channel: str, text: str) -> tuple[float, float]:
        """Send one DM event; returns (sent at, seconds until acknowledged)."""
        self.count += 1
        ts = f"1700000000.{self.count:06d}"
        body = json.dumps(
            {
                "type": "event_callback",
                "team_id": "T1",
                "event_id": f"EvB{self.count:06d}",
                "event": {
                    "type": "message",
                    "channel_type": "im",
                    "channel": channel,
                    "user": "UCUST",
                    "text": text,
                    "ts": ts,
                },
            },
            ensure_ascii=False,
        )
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": SignatureVerifier(SECRET).generate_signature(timestamp=stamp, body=body),
        }
        began = time.perf_counter()
        async with self.http.post(self.url, data=body.encode(), headers=headers) as response:
            assert response.status == 200, response.status
        return began, time.perf_counter() - began


async def wait_for(api: FakeSlackApi, channels: set[str], timeout: float) -> dict[str, float]:
    """When the answer to each channel arrived."""
    deadline = time.monotonic() + timeout
    while True:
        arrived = {p.channel: p.at for p in api.posts if p.channel in channels}
        if len(arrived) == len(channels) or time.monotonic() > deadline:
            return arrived
        await asyncio.sleep(0.01)


async def run(data_dir: Path, sequential: int, burst: int) -> list[tuple[str, str]]:
    api = FakeSlackApi(TOKEN)
    await api.start()
    settings = BotSettings(_env_file=None, data_dir=data_dir, http_port=0, user_rate_limit=0)  # floods on purpose
    server = await start(
        settings, {"slack": SlackSettings(_env_file=None, bot_token=TOKEN, signing_secret=SECRET, api_base=api.url)}
    )
    texts = questions()
    try:
        async with aiohttp.ClientSession() as http:
            sender = Sender(http, f"http://127.0.0.1:{server.port}/slack/events")
            await sender.dm("DWARM", "你好")  # first request: bolt's auth.test, model warm-up
            await wait_for(api, {"DWARM"}, 60)

            one_by_one = []
            for i in range(sequential):
                began, _ = await sender.dm(f"DS{i}", texts[i % len(texts)] + f" ({i})")
                arrived = await wait_for(api, {f"DS{i}"}, 60)
                one_by_one.append(arrived[f"DS{i}"] - began)

            # A burst: every event is acknowledged while the model works through the queue.
            limit = asyncio.Semaphore(32)

            async def send(i: int) -> tuple[float, float]:
                async with limit:
                    return await sender.dm(f"DB{i}", texts[(sequential + i) % len(texts)] + f" [{i}]")

            first = time.perf_counter()
            results = await asyncio.gather(*(send(i) for i in range(burst)))
            acked_in = time.perf_counter() - first
            arrived = await wait_for(api, {f"DB{i}" for i in range(burst)}, 60 + burst * 5)
            acks = [ack for _, ack in results]
            queued = [arrived[f"DB{i}"] - results[i][0] for i in range(burst) if f"DB{i}" in arrived]
    finally:
        await server.stop()
        await api.stop()

    return [
        ("model concurrency (answers generated at once)", str(settings.model_concurrency)),
        (f"events acknowledged per second (burst of {burst})", f"{burst / acked_in:.0f}"),
        ("ack p50 / p99 while the model is busy", f"{ms(pct(acks, 50))} / {ms(pct(acks, 99))}"),
        (f"ack p99 under {ACK_LIMIT_S:.0f} s", "yes" if pct(acks, 99) < ACK_LIMIT_S else "NO"),
        (
            f"event to chat.postMessage p50 / p99, one at a time ({sequential})",
            f"{ms(pct(one_by_one, 50))} / {ms(pct(one_by_one, 99))}",
        ),
        (
            "event to chat.postMessage p50 / p99, burst (queued behind the model)",
            f"{ms(pct(queued, 50))} / {ms(pct(queued, 99))}",
        ),
        ("answers posted in the burst", f"{len(queued)} of {burst}"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="a folder with a built model (models/)")
    parser.add_argument("--sequential", type=int, default=20)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # Two cores, as on a small server; threads started from here on (the model runtime's) inherit it.
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])
    with tempfile.TemporaryDirectory(prefix="slack-bench-") as tmp:
        data_dir = Path(tmp) / "var"
        if args.data_dir:
            shutil.copytree(args.data_dir / "models", data_dir / "models")
        else:
            print("building the starter model (a minute or more)...", file=sys.stderr)
            bootstrap(data_dir, BotSettings(_env_file=None).system_prompt)
        rows = asyncio.run(run(data_dir, args.sequential, args.burst))
    print(f"Slack channel, starter model, {len(os.sched_getaffinity(0))} cores\n")
    print("| metric | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
