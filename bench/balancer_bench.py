"""Model-server balancer benchmark: what the balancer adds to an answer, and whether traffic follows the
weights. No model: fake OpenAI-compatible servers on 127.0.0.1 (tests/fakes/openai_server.py), in this
process, stream a 12-word answer as 14 server-sent events. Prints markdown.

    .venv/bin/python bench/balancer_bench.py [--requests 500] [--rounds 5] [--shares 280] [--concurrency 14]

1. Overhead: one answer at a time, the three ways interleaved in rotating order, --requests per way
   per round: `direct` is the same streamed request from a bare httpx client that parses each chunk
   (what any client pays), `backend` is RemoteBackend.generate (adds the deadline timers and the
   checks), `balancer` is Balancer.generate over three servers (adds the choice and the metrics).
   Medians and p99 over all rounds, and the median of each round.
2. Shares: three servers weighted 4:2:1, equally fast (10 ms between chunks); --shares answers one at
   a time, then --shares answers with --concurrency in flight. Each server's share against its weight's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: import the project from the checkout

from bench.core_bench import load_note, p50, p99, table  # noqa: E402
from bot.models.backends import Balancer, RemoteBackend  # noqa: E402
from bot.models.runtime import GenerationSettings  # noqa: E402
from tests.fakes.openai_server import FakeModelServer  # noqa: E402

VERSION = "v0007"
MESSAGES = [{"role": "user", "content": "When will my order arrive?"}]
ANSWER = "You can follow your parcel on the My Orders page, usually within two days."


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f}"


async def direct(client: httpx.AsyncClient, url: str) -> str:
    """The floor: the streamed request, read and parsed by hand, nothing else."""
    body = {"model": VERSION, "messages": MESSAGES, "stream": True, "max_tokens": 96}
    text = ""
    async with client.stream("POST", f"{url}/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:") and line != "data: [DONE]":
                text += json.loads(line[5:])["choices"][0]["delta"].get("content") or ""
    return text.strip()


async def started(weights: dict[str, float], chunk_delay: float = 0.0) -> tuple[list[FakeModelServer], Balancer]:
    servers = [FakeModelServer(VERSION, ANSWER, chunk_delay=chunk_delay) for _ in weights]
    for server in servers:
        await server.start()
    backends = [
        RemoteBackend(name, server.url, weight, GenerationSettings())
        for (name, weight), server in zip(weights.items(), servers, strict=True)
    ]
    balancer = Balancer(backends, backends[-1], timeout_s=20.0)
    await balancer.start()
    return servers, balancer


async def overhead(requests: int, rounds: int) -> None:
    servers, balancer = await started({"a": 1.0, "b": 1.0, "c": 1.0})
    first = balancer.backends[0]
    client = httpx.AsyncClient(timeout=None, trust_env=False)
    url = servers[0].url
    ways: dict[str, Callable[[], Awaitable[object]]] = {
        "direct (httpx, parse)": lambda: direct(client, url),
        "RemoteBackend.generate": lambda: first.generate(MESSAGES, VERSION, time.monotonic() + 20.0, None),
        "Balancer.generate (3 servers)": lambda: balancer.generate(MESSAGES, VERSION),
    }
    times: dict[str, list[list[float]]] = {name: [] for name in ways}
    try:
        for way in ways.values():  # warm: connections open, code paths run once
            await way()
        for _ in range(rounds):
            for name in ways:
                times[name].append([])
            for i in range(requests):
                names = list(ways)
                for name in names[i % 3 :] + names[: i % 3]:  # each way in each position equally often
                    way = ways[name]
                    began = time.perf_counter()
                    await way()
                    times[name][-1].append(time.perf_counter() - began)
    finally:
        await client.aclose()
        await balancer.close()
        for server in servers:
            await server.stop()
    pooled = {name: [t for run in runs for t in run] for name, runs in times.items()}
    base = p50(next(iter(pooled.values())))  # direct
    print(f"## 1. Overhead per answer ({requests} x {rounds} rounds per way, one at a time)\n")
    rows = [
        [
            name,
            us(p50(all_)),
            us(p99(all_)),
            f"{(p50(all_) - base) * 1e6:+.0f}",
            " / ".join(us(p50(r)) for r in times[name]),
        ]
        for name, all_ in pooled.items()
    ]
    table(["way", "p50 µs", "p99 µs", "p50 over direct µs", "median per round µs"], rows)


async def shares(count: int, concurrency: int) -> None:
    weights = {"w4": 4.0, "w2": 2.0, "w1": 1.0}
    servers, balancer = await started(weights, chunk_delay=0.01)
    try:
        sequential = Counter([(await balancer.generate(MESSAGES, VERSION)).backend for _ in range(count)])
        gate = asyncio.Semaphore(concurrency)

        async def one() -> str:
            async with gate:
                return (await balancer.generate(MESSAGES, VERSION)).backend

        concurrent = Counter(await asyncio.gather(*(one() for _ in range(count))))
    finally:
        await balancer.close()
        for server in servers:
            await server.stop()
    total = sum(weights.values())
    print(f"## 2. Shares against weights ({count} answers each way, servers equally fast)\n")
    rows = [
        [
            name,
            f"{weight:g}",
            f"{weight / total:.1%}",
            f"{sequential[name] / count:.1%} ({sequential[name]})",
            f"{concurrent[name] / count:.1%} ({concurrent[name]})",
        ]
        for name, weight in weights.items()
    ]
    table(["server", "weight", "weight's share", "one at a time", f"{concurrency} in flight"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shares", type=int, default=280)
    parser.add_argument("--concurrency", type=int, default=14)
    args = parser.parse_args()
    print(
        f"_{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}); Python "
        f"{platform.python_version()}, httpx {httpx.__version__}; fake servers in the same process_\n"
    )
    print(load_note() + "\n")
    asyncio.run(overhead(args.requests, args.rounds))
    asyncio.run(shares(args.shares, args.concurrency))


if __name__ == "__main__":
    main()
