"""Scale-out benchmark: messages/s and latency with one worker against two, and what PostgreSQL costs per
message against SQLite. Prints markdown tables.

    .venv/bin/python bench/workers_bench.py [--data-dir DIR] [--sections 1,2] [--rounds 5] [--messages 400]
                                            [--concurrency 8] [--turns 500]
                                            [--database-url postgresql://127.0.0.1:5432/test]
                                            [--redis-url redis://127.0.0.1:6379/0]

1. Workers. Real `python -m bot run` processes on a copy of the starter model, all sharing one fresh
   PostgreSQL schema (created and dropped here) and Redis (their keys deleted after), as README's "Several
   workers" runs them. Answer cache off (BOT_CACHE_SIZE=0) and rate limit off (BOT_USER_RATE_LIMIT=0), so
   every message reaches the model. A run fires --messages FAQ questions, each in a new conversation, over
   HTTP POST /chat with --concurrency requests in flight, spread round-robin over the run's workers; it
   measures messages/s (messages / wall time of the run) and each request's round trip. Configurations:
   one worker with BOT_MODEL_THREADS=1; two workers with 1 thread each (so the two compete fairly for the
   two cores); and as references one worker with 2 threads, and one worker with 1 thread but two answers at
   once (BOT_MODEL_CONCURRENCY=2). All workers run for the whole section (idle when not in a run) and each
   gets a warm-up first; --rounds rounds run the configurations in rotating order. Where the CPU went (psutil,
   as cores busy over the run's wall time): the run's workers, the load generator (aiohttp, this process, on
   the same cores), PostgreSQL and Redis, and whatever else ran on the machine (other people's work).
2. PostgreSQL vs SQLite. Bots in this process (`build_bot`), one on a SQLite file, one on a fresh
   PostgreSQL schema, and as a reference one on another schema with synchronous_commit=off (so its commits,
   like SQLite's in WAL mode with synchronous=NORMAL, do not wait for the disk); all cache off, 1 model
   thread; --turns messages each (conversations of 5 turns, so history is read too), the bots taking turns
   message by message in rotating order. The DialogueManager's
   observer gives each step's time: the store steps are `deduplicate` (turn_for_message), `hand_off`
   (handoff), `build_context` (session_for, history; and tokenising, the same for both) and `persist`
   (add_turn, audit).

DIR is a bot data dir with a registered model (models/state.json). Default: the newest starter the test
suite left in .venv/test-starter/, else one built now (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: import the project from the checkout

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
import psutil  # noqa: E402
import redis  # noqa: E402

from bench.core_bench import find_data_dir, load_note, ms, p50, p99, table, timed_steps  # noqa: E402
from bench.flood_bench import plain_questions  # noqa: E402
from bot.app import Bot, build_bot  # noqa: E402
from bot.config import BotSettings  # noqa: E402
from bot.message import UserMessage  # noqa: E402
from bot.models.registry import Registry  # noqa: E402
from bot.shared import namespace  # noqa: E402

STORE_STEPS = ("deduplicate", "hand_off", "build_context", "persist")
TURNS_PER_CONVERSATION = 5


# --- shared set-up ------------------------------------------------------------------------------


class Schema:
    """A fresh PostgreSQL schema, dropped on exit; `url` selects it (asyncpg passes search_path on)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.name = f"bench_{uuid.uuid4().hex[:12]}"
        self.url = f"{base_url}{'&' if '?' in base_url else '?'}search_path={self.name}"

    async def __aenter__(self) -> Schema:
        admin = await asyncpg.connect(self.base_url, timeout=5)
        try:
            await admin.execute(f"CREATE SCHEMA {self.name}")
        finally:
            await admin.close()
        return self

    async def __aexit__(self, *exc: object) -> None:
        admin = await asyncpg.connect(self.base_url, timeout=5)
        try:
            await admin.execute(f"DROP SCHEMA {self.name} CASCADE")
        finally:
            await admin.close()


def scratch_data_dir(data_dir: Path, scratch: Path, name: str) -> Path:
    """A data dir of our own: a copy of the models (the registry's state is per data dir)."""
    copy = scratch / name
    shutil.copytree(data_dir / "models", copy / "models")
    return copy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- 1. one worker vs two -----------------------------------------------------------------------


@dataclass
class Worker:
    """One `python -m bot run` process on its own port."""

    name: str
    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, cwd: Path) -> None:
        with self.log.open("ab") as out:  # cwd: a folder with no .env, so only our settings apply
            env = self.env | {"BOT_HTTP_PORT": str(self.port)}
            self.proc = subprocess.Popen([sys.executable, "-m", "bot", "run"], cwd=cwd, env=env, stdout=out, stderr=out)

    async def healthy(self, http: aiohttp.ClientSession, seconds: float = 180) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                sys.exit(f"worker {self.name} exited:\n{self.log.read_text()[-3000:]}")
            try:
                async with http.get(f"http://127.0.0.1:{self.port}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.3)
        sys.exit(f"worker {self.name} did not start:\n{self.log.read_text()[-3000:]}")

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


SERVICES = ("postgres", "redis-server")  # their processes' CPU counts as the shared services'


def cpu_snapshot(workers: list[Worker]) -> dict[str, float]:
    """CPU seconds so far: the run's workers, this process (the load generator), PostgreSQL and Redis
    (every process of theirs, by pid), and the whole machine (busy time over all cores)."""
    services = 0.0
    for proc in psutil.process_iter(["name", "cpu_times"]):
        if proc.info["name"] in SERVICES and proc.info["cpu_times"] is not None:
            services += proc.info["cpu_times"].user + proc.info["cpu_times"].system
    me, machine = psutil.Process().cpu_times(), psutil.cpu_times()
    busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq + machine.steal
    return {
        "workers": sum(w.cpu_seconds() for w in workers),
        "load generator": me.user + me.system,
        "PostgreSQL + Redis": services,
        "machine": busy,
    }


@dataclass
class Run:
    """One configuration's run: request latencies, outcomes, wall time and CPU seconds (cpu_snapshot's)."""

    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def cores(self, part: str) -> float:
        """Cores `part` kept busy on average; `other` is the machine's busy time nobody here used."""
        if part == "other":
            return self.cores("machine") - sum(self.cores(p) for p in self.cpu if p != "machine")
        return self.cpu[part] / self.seconds


async def fire(http: aiohttp.ClientSession, workers: list[Worker], texts: list[str], concurrency: int) -> Run:
    """Every text once, each in a new conversation, `concurrency` in flight, round-robin over the workers."""
    run = Run()
    todo = iter(enumerate(texts))

    async def client() -> None:
        for i, text in todo:  # one shared iterator: each text is sent by exactly one client
            worker = workers[i % len(workers)]
            conversation = uuid.uuid4().hex
            body = {"conversation_id": conversation, "user_id": conversation, "text": text}
            began = time.perf_counter()
            async with http.post(f"http://127.0.0.1:{worker.port}/chat", json=body) as response:
                reply = await response.json() if response.status == 200 else {"outcome": f"HTTP {response.status}"}
            run.latencies.append(time.perf_counter() - began)
            run.outcomes[reply["outcome"]] += 1

    before = cpu_snapshot(workers)
    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    run.seconds = time.perf_counter() - began
    after = cpu_snapshot(workers)
    run.cpu = {part: after[part] - before[part] for part in after}
    return run


async def workers_section(data_dir: Path, scratch: Path, args: argparse.Namespace) -> None:
    print("## 1. Messages/s and latency: one worker vs two\n")
    print(load_note() + "\n")
    texts = plain_questions()
    texts = list(itertools.islice(itertools.cycle(texts), args.messages))  # cache off: repeats cost the same
    shop = scratch_data_dir(data_dir, scratch, "shop")  # one data dir: the workers of one shop
    async with Schema(args.database_url) as schema:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("BOT_", "TELEGRAM_", "SLACK_"))}
        base |= {
            "PYTHONUNBUFFERED": "1",
            "BOT_DATA_DIR": str(shop),
            "BOT_DATABASE_URL": schema.url,
            "BOT_REDIS_URL": args.redis_url,
            "BOT_CACHE_SIZE": "0",
            "BOT_USER_RATE_LIMIT": "0",
            "BOT_REGISTRY_POLL_S": "600",  # no polling noise; nothing is promoted during the bench
        }

        def worker(name: str, threads: int, concurrency: int = 1) -> Worker:
            env = base | {"BOT_MODEL_THREADS": str(threads), "BOT_MODEL_CONCURRENCY": str(concurrency)}
            return Worker(name, env, scratch / f"{name}.log")

        a, b = worker("a", 1), worker("b", 1)
        two_threads, two_slots = worker("t2", 2), worker("c2", 1, concurrency=2)
        configs: dict[str, list[Worker]] = {
            "one worker, 1 thread": [a],
            "two workers, 1 thread each": [a, b],
            "reference: one worker, 2 threads": [two_threads],
            "reference: one worker, 1 thread, 2 answers at once": [two_slots],
        }
        everyone = [a, b, two_threads, two_slots]
        runs: dict[str, list[Run]] = {name: [] for name in configs}
        try:
            for w in everyone:  # one after another: concurrent migrations of a fresh schema would race
                w.start(scratch)
                async with aiohttp.ClientSession() as http:
                    await w.healthy(http)
            timeout = aiohttp.ClientTimeout(total=120)
            connector = aiohttp.TCPConnector(limit=args.concurrency * 2)
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
                for w in everyone:  # first-call costs (ORT arena, connection pools) out of the runs
                    await fire(http, [w], texts[:40], args.concurrency)
                names = list(configs)
                for r in range(args.rounds):
                    for name in names[r % len(names) :] + names[: r % len(names)]:
                        run = await fire(http, configs[name], texts, args.concurrency)
                        runs[name].append(run)
                        print(
                            f"_round {r + 1}, {name}: {run.rate:.1f}/s, load {os.getloadavg()[0]:.2f}_",
                            file=sys.stderr,
                        )
        finally:
            for w in everyone:
                w.stop()
            with redis.Redis.from_url(args.redis_url) as client:
                for key in client.scan_iter(namespace(shop) + "*"):
                    client.delete(key)

    print(
        f"Starter model; {args.messages} FAQ questions per run, each in a new conversation, {args.concurrency} "
        f"requests in flight over HTTP POST /chat, round-robin over the run's workers; answer cache and rate "
        f"limit off; workers share one PostgreSQL schema and Redis. {args.rounds} rounds, configurations in "
        f"rotating order; messages/s is the median over rounds, latencies (whole HTTP round trip) pooled.\n"
    )
    one = statistics.median(run.rate for run in runs["one worker, 1 thread"])
    rows = []
    for name, group in runs.items():
        latencies = [x for run in group for x in run.latencies]
        outcomes = sum((run.outcomes for run in group), Counter[str]())
        rate = statistics.median(run.rate for run in group)
        rows.append(
            [
                name,
                " / ".join(f"{k} {v:,}" for k, v in sorted(outcomes.items())),
                f"{rate:.1f}",
                f"{rate / one:.2f}x",
                " / ".join(f"{run.rate:.1f}" for run in group),
                ms(p50(latencies)),
                ms(p99(latencies)),
                ms(statistics.median(run.cpu["workers"] / len(run.latencies) for run in group)),
            ]
        )
    table(
        [
            "configuration",
            "outcomes",
            "messages/s (median)",
            "vs one worker",
            "messages/s per round",
            "p50 ms",
            "p99 ms",
            "workers' CPU ms per message",
        ],
        rows,
    )
    parts = ["workers", "load generator", "PostgreSQL + Redis", "other", "machine"]
    print("Where the CPU went during the runs, in cores busy (medians over rounds; the machine has 2):\n")
    table(
        [
            "configuration",
            "workers",
            "load generator (this process)",
            "PostgreSQL + Redis",
            "other processes",
            "machine busy",
        ],
        [
            [name, *(f"{statistics.median(run.cores(p) for run in group):.2f}" for p in parts)]
            for name, group in runs.items()
        ],
    )
    print(load_note().replace("at start", "at end") + "\n")


# --- 2. PostgreSQL vs SQLite --------------------------------------------------------------------


async def store_section(data_dir: Path, scratch: Path, args: argparse.Namespace) -> None:
    print("## 2. PostgreSQL vs SQLite: the store's time per message\n")
    print(load_note() + "\n")
    texts = plain_questions()
    # Each PostgreSQL bot has a schema of its own (the same conversation ids would otherwise share turns).
    async with Schema(args.database_url) as schema, Schema(args.database_url) as no_sync:
        common = dict(_env_file=None, cache_size=0, user_rate_limit=0, model_threads=1)
        bots: dict[str, Bot] = {
            "SQLite": await build_bot(BotSettings(data_dir=scratch_data_dir(data_dir, scratch, "sqlite"), **common)),
            "PostgreSQL": await build_bot(
                BotSettings(data_dir=scratch_data_dir(data_dir, scratch, "pg"), database_url=schema.url, **common)
            ),
            # Like SQLite's WAL + synchronous=NORMAL, a commit does not wait for the disk: what fsync costs.
            "reference: PostgreSQL, synchronous_commit=off": await build_bot(
                BotSettings(
                    data_dir=scratch_data_dir(data_dir, scratch, "pg-nosync"),
                    database_url=no_sync.url + "&synchronous_commit=off",
                    **common,
                )
            ),
        }
        steps: dict[str, dict[str, list[float]]] = {name: {s: [] for s in STORE_STEPS} for name in bots}
        store: dict[str, list[float]] = {name: [] for name in bots}
        model: dict[str, list[float]] = {name: [] for name in bots}
        turn: dict[str, list[float]] = {name: [] for name in bots}
        outcomes: dict[str, Counter[str]] = {name: Counter() for name in bots}
        try:
            for bot in bots.values():  # first-call costs (pools, prepared statements, the model)
                for i in range(20):
                    await bot.dialogue.handle(UserMessage("http", f"warm-{i}", "warm", f"warm-{i}", texts[i]))
            names = list(bots)
            for i in range(args.turns):
                conversation = f"conv-{i // TURNS_PER_CONVERSATION}"
                message = UserMessage("http", conversation, f"user-{conversation}", f"m{i}", texts[i % len(texts)])
                for name in names[i % len(names) :] + names[: i % len(names)]:  # rotating: none always first
                    began = time.perf_counter()
                    times, working = await timed_steps(bots[name].dialogue, message)
                    turn[name].append(time.perf_counter() - began)
                    for s in STORE_STEPS:
                        steps[name][s].append(times.get(s, 0.0))
                    store[name].append(sum(times.get(s, 0.0) for s in STORE_STEPS))
                    model[name].append(times.get("model", 0.0))
                    outcomes[name][working.outcome] += 1
        finally:
            for bot in bots.values():
                await bot.close()

    print(
        f"Starter model, 1 model thread, answer cache off; {args.turns} messages per store in conversations "
        f"of {TURNS_PER_CONVERSATION} turns, the bots taking turns message by message in rotating order (same "
        f"texts). The "
        f"store steps are {', '.join(f'`{s}`' for s in STORE_STEPS)} (`build_context` also tokenises, the "
        f"same work on both); the turn is the whole `handle()`, model included. PostgreSQL on 127.0.0.1 "
        f"(TCP, same machine), default settings (a commit waits for its WAL "
        f"fsync); SQLite runs in WAL mode with synchronous=NORMAL (a commit does not).\n"
    )
    rows = []
    for name in bots:
        rows.append(
            [
                name,
                " / ".join(f"{k} {v:,}" for k, v in sorted(outcomes[name].items())),
                *(f"{p50(steps[name][s]) * 1000:.2f}" for s in STORE_STEPS),
                ms(p50(store[name])),
                ms(p99(store[name])),
                ms(p50(model[name])),
                ms(p50(turn[name])),
                ms(p99(turn[name])),
                f"{sum(store[name]) / sum(turn[name]):.1%}",
            ]
        )
    table(
        [
            "store",
            "outcomes",
            *(f"`{s}` p50 ms" for s in STORE_STEPS),
            "store steps p50 ms",
            "store steps p99 ms",
            "model p50 ms",
            "turn p50 ms",
            "turn p99 ms",
            "store steps' share of turn time",
        ],
        rows,
    )
    for name in names[1:]:
        extra = [pg - lite for pg, lite in zip(store[name], store["SQLite"], strict=True)]
        print(
            f"- {name} over SQLite, per message (paired, same message): store steps p50 {ms(p50(extra))} ms, "
            f"p99 {ms(p99(extra))} ms; whole turn p50 {ms(p50(turn[name]) - p50(turn['SQLite']))} ms."
        )
    print()
    print(load_note().replace("at start", "at end") + "\n")


# --- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="bot data dir with a registered model (default: see above)")
    parser.add_argument("--sections", default="1,2", help="comma-separated sections to run")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the worker configurations")
    parser.add_argument("--messages", type=int, default=400, help="messages per worker run")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight in a worker run")
    parser.add_argument("--turns", type=int, default=500, help="messages per store in section 2")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BOT_TEST_DATABASE_URL", "postgresql://127.0.0.1:5432/test"),
        help="PostgreSQL to create the bench's schemas in (dropped after)",
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("BOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"), help="Redis"
    )
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory(prefix="workers-bench-") as tmp:
        scratch = Path(tmp)
        data_dir = find_data_dir(args.data_dir, scratch)
        print("# Workers and store benchmark\n")
        print(
            f"_{os.cpu_count()} CPUs ({platform.machine()}), Python {platform.python_version()}; data dir: "
            f"`{data_dir}` (model {Registry(data_dir).state().current})_\n"
        )
        if "1" in sections:
            began = time.perf_counter()
            asyncio.run(workers_section(data_dir, scratch, args))
            print(f"_section 1: {time.perf_counter() - began:.0f} s_\n", flush=True)
        if "2" in sections:
            began = time.perf_counter()
            asyncio.run(store_section(data_dir, scratch, args))
            print(f"_section 2: {time.perf_counter() - began:.0f} s_\n", flush=True)


if __name__ == "__main__":
    main()
