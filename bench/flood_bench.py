"""Flood benchmark: what one flooding user does to a normal user's answers, with and without the per-user
limits; and what masking personal data adds to a turn. Prints markdown tables.

    .venv/bin/python bench/flood_bench.py [--data-dir DIR] [--rounds 6] [--questions 20] [--flood 20]
                                          [--think 0.2] [--per-class 300]

1. Flood. The real bot in this process (`build_bot`, BotSettings from the environment, the starter model),
   one fresh bot (empty store, empty answer cache) per run. A normal user asks --questions distinct FAQ
   questions one after another, each in a new conversation (so no history makes later prompts longer)
   and --think seconds apart (20 fit the default rate limit's burst, so the normal user is never limited).
   Three scenarios: the normal user alone; the same while a flooding user keeps --flood messages in flight
   in one conversation, each text unique so the answer cache cannot answer it, with the default limits
   (BOT_USER_RATE_LIMIT 20 per 60 s, model queue 8); and the same flood with the rate limit effectively
   off (1,000,000 per 60 s, same model queue). The flood starts with the normal user's first question
   and stops after their last. --rounds rounds, each running the three scenarios in a rotating order
   with the same questions; latencies are pooled over the rounds.
   An exception out of `handle()` counts as the outcome `error` (the HTTP channel answers it with a 500).
2. Masking. `mask_personal_data`'s step time (from a DialogueManager observer) against the whole turn
   (`handle()`, model included), on messages with personal data, messages with numbers that are not
   personal data, and plain FAQ questions, interleaved, each the first turn of its own conversation. The
   answer cache is off here (cache_size 0): the generated messages come from 16 templates, so once masked
   most are the same question and the cache would answer them without the model.

DIR is a bot data dir with a registered model (models/state.json). Default: the newest starter the test
suite left in .venv/test-starter/, else one built now (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: import the project from the checkout

from bench.core_bench import find_data_dir, load_note, ms, p50, p99, questions, table, timed_steps  # noqa: E402
from bench.privacy_bench import messages as privacy_messages  # noqa: E402
from bot.app import Bot, build_bot, build_word_filter  # noqa: E402
from bot.cache import normalise_question  # noqa: E402
from bot.config import BotSettings  # noqa: E402
from bot.message import UserMessage  # noqa: E402
from bot.models.registry import Registry  # noqa: E402
from bot.pipeline import WorkingTurn  # noqa: E402

# Scenario -> (flood or not, settings overrides). "Off" keeps the code path: a bucket nobody empties.
SCENARIOS: dict[str, tuple[bool, dict[str, Any]]] = {
    "alone": (False, {}),
    "flood, limits on (defaults)": (True, {}),
    "flood, rate limit off": (True, {"user_rate_limit": 1_000_000}),
}


async def fresh_bot(data_dir: Path, scratch: Path, **overrides: Any) -> Bot:
    """The real bot on a copy of the models with an empty store and cache, so runs never see each other."""
    copy = Path(tempfile.mkdtemp(prefix="bot-", dir=scratch))
    shutil.copytree(data_dir / "models", copy / "models")
    return await build_bot(BotSettings(_env_file=None, data_dir=copy, **overrides))


def plain_questions() -> list[str]:
    """FAQ questions, one per normalised form (so none is another's cache hit), without those the word
    filter blocks or that ask for a person (either ends the turn before the model), in a fixed shuffle."""
    settings = BotSettings(_env_file=None)
    words = build_word_filter(settings)
    person = [phrase.casefold() for phrase in settings.handoff_phrases]
    distinct = {normalise_question(q): q for q in questions()}.values()
    kept = [q for q in distinct if not words.check(q).blocked and not any(p in q.casefold() for p in person)]
    random.Random(4).shuffle(kept)
    return kept


# --- 1. flood -----------------------------------------------------------------------------------


@dataclass
class Run:
    """One scenario run: the normal user's latencies and outcomes, and what happened to the flood."""

    latencies: list[float] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    flood: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # exceptions out of handle(): HTTP would answer 500
    seconds: float = 0.0


async def ask(bot: Bot, message: UserMessage, outcome: dict[str, str], run: Run) -> tuple[float, str]:
    """One message through the real DialogueManager: seconds and outcome (`error` if handle() raised)."""
    began = time.perf_counter()
    try:
        await bot.dialogue.handle(message)
        result = outcome.pop(message.message_id)
    except Exception as exc:
        outcome.pop(message.message_id, None)
        run.errors[f"{type(exc).__name__}: {exc}"] += 1
        result = "error"
    return time.perf_counter() - began, result


async def run_scenario(
    data_dir: Path, scratch: Path, asked: list[str], flood_texts: list[str], args: argparse.Namespace, name: str
) -> Run:
    flooding, overrides = SCENARIOS[name]
    bot = await fresh_bot(data_dir, scratch, **overrides)
    outcome: dict[str, str] = {}  # message id -> outcome so far, from the observer

    def observe(step: str, seconds: float, turn: WorkingTurn) -> None:
        outcome[turn.message.message_id] = turn.outcome

    bot.dialogue.observers.append(observe)
    run, stop = Run(), asyncio.Event()

    async def flooder(worker: int) -> None:
        sent = 0
        while not stop.is_set():
            sent += 1
            text = f"{flood_texts[(worker * 997 + sent) % len(flood_texts)]} (#{worker}-{sent})"
            message = UserMessage("http", "flood", "flooder", f"flood-{worker}-{sent}", text)
            run.flood[(await ask(bot, message, outcome, run))[1]] += 1

    workers: list[asyncio.Task[None]] = []
    try:
        await ask(bot, UserMessage("http", "warm-up", "warm-up", "warm-up", "你好"), outcome, run)  # first-call costs
        run.errors.clear()
        workers = [asyncio.create_task(flooder(w)) for w in range(args.flood if flooding else 0)]
        began = time.perf_counter()
        for i, question in enumerate(asked):
            seconds, result = await ask(
                bot, UserMessage("http", f"normal-{i}", "normal", f"normal-{i}", question), outcome, run
            )
            run.latencies.append(seconds)
            run.outcomes.append(result)
            await asyncio.sleep(args.think)
        run.seconds = time.perf_counter() - began
    finally:
        stop.set()
        await asyncio.gather(*workers)
        await bot.close()
    return run


def flood(data_dir: Path, scratch: Path, args: argparse.Namespace) -> None:
    print("## 1. A normal user's answers while another user floods\n")
    print(load_note() + "\n")
    pool = plain_questions()
    if len(pool) < args.rounds * args.questions + 50:
        sys.exit(f"only {len(pool)} distinct FAQ questions: lower --rounds or --questions")
    flood_texts = pool[args.rounds * args.questions :]  # never one of the normal user's questions
    names = list(SCENARIOS)
    runs: dict[str, list[Run]] = {name: [] for name in names}
    for r in range(args.rounds):
        asked = pool[r * args.questions : (r + 1) * args.questions]
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run = asyncio.run(run_scenario(data_dir, scratch, asked, flood_texts, args, name))
            runs[name].append(run)
            print(f"_round {r + 1}, {name}: {run.seconds:.1f} s, {os.getloadavg()[0]:.2f} load_", file=sys.stderr)

    print(
        f"Normal user: {args.questions} distinct FAQ questions per round, each in a new conversation, "
        f"{args.think} s apart; flooder: {args.flood} messages in flight in one conversation, unique texts. "
        f"{args.rounds} rounds, scenarios in rotating order, fresh bot per run; latencies (whole `handle()`) "
        f"pooled over the rounds. Outcomes: `answered` is a real answer (model or cache), `busy` the "
        f"model-queue-full reply, `fallback` the model error/timeout reply, `error` an exception out of "
        f"`handle()` (the HTTP channel answers it with a 500).\n"
    )
    alone = [x for run in runs["alone"] for x in run.latencies]
    rows = []
    for name in names:
        latencies = [x for run in runs[name] for x in run.latencies]
        answered = [
            x for run in runs[name] for x, o in zip(run.latencies, run.outcomes, strict=True) if o == "answered"
        ]
        outcomes = Counter(o for run in runs[name] for o in run.outcomes)
        rows.append(
            [
                name,
                " / ".join(f"{k} {v}" for k, v in sorted(outcomes.items())),
                ms(p50(latencies)),
                ms(p99(latencies)),
                f"{p50(latencies) / p50(alone):.1f}x / {p99(latencies) / p99(alone):.1f}x",
                ms(p50(answered)) if answered else "-",
                ms(p99(answered)) if answered else "-",
                " / ".join(ms(p50(run.latencies)) for run in runs[name]),
            ]
        )
    table(
        [
            "scenario",
            "normal user's outcomes",
            "p50 ms",
            "p99 ms",
            "p50 / p99 vs alone",
            "answered only: p50 ms",
            "answered only: p99 ms",
            "p50 ms per round",
        ],
        rows,
    )
    rows = []
    for name in names[1:]:
        total = sum((run.flood for run in runs[name]), Counter[str]())
        seconds = sum(run.seconds for run in runs[name])
        rows.append(
            [
                name,
                f"{total.total():,}",
                f"{total.total() / seconds:,.0f}",
                " / ".join(f"{k} {v:,}" for k, v in sorted(total.items())),
            ]
        )
    table(["flood", "messages handled", "per s", "outcomes"], rows)
    for name in names:
        errors = sum((run.errors for run in runs[name]), Counter[str]())
        for error, count in errors.most_common():
            print(f"- {name}: {count:,} x `handle()` raised `{error}`")
    print()
    print(load_note().replace("at start", "at end") + "\n")


# --- 2. masking ---------------------------------------------------------------------------------


def masking_classes(per_class: int) -> dict[str, list[str]]:
    generated = privacy_messages(per_class * 8, seed=7)
    personal = list(dict.fromkeys(text for text, expected in generated if text != expected))
    numbers = list(dict.fromkeys(text for text, expected in generated if text == expected))
    return {
        "with personal data (phone, e-mail, ID, card, IBAN)": personal[:per_class],
        "numbers, no personal data (orders, prices, tracking)": numbers[:per_class],
        "plain FAQ questions": plain_questions()[:per_class],
    }


async def masking(data_dir: Path, scratch: Path, per_class: int) -> None:
    print("## 2. Masking personal data: its step's time against the whole turn\n")
    print(load_note() + "\n")
    classes = masking_classes(per_class)
    bot = await fresh_bot(data_dir, scratch, user_rate_limit=0, cache_size=0)  # see the docstring
    warm = [text for text, expected in privacy_messages(50, seed=8) if text != expected]  # random: never repeated
    for i, text in enumerate(warm):  # phonenumbers and stdnum load their data on first use
        await bot.dialogue.handle(UserMessage("http", f"warm-up-{i}", "warm-up", f"warm-up-{i}", text))
    mask: dict[str, list[float]] = {label: [] for label in classes}
    turn: dict[str, list[float]] = {label: [] for label in classes}
    outcomes: dict[str, Counter[str]] = {label: Counter() for label in classes}
    count = 0
    for i in range(max(len(texts) for texts in classes.values())):  # interleaved: one of each class in turn
        for label, texts in classes.items():
            if i >= len(texts):
                continue
            count += 1
            message = UserMessage("http", f"conv-{count}", f"user-{count}", f"m{count}", texts[i])
            began = time.perf_counter()
            times, working = await timed_steps(bot.dialogue, message)
            turn[label].append(time.perf_counter() - began)
            mask[label].append(times["mask_personal_data"])
            outcomes[label][working.outcome + (" (cache)" if working.cached else "")] += 1
    await bot.close()
    print(
        f"Each message is the first turn of its own conversation (the shortest prompt, so the share of the "
        f"turn is at its highest); classes interleaved, {count} messages. `mask_personal_data` is timed by "
        f"the DialogueManager's observer hook; the turn is the whole `handle()`, model included. Answer cache "
        f"off: masked, most generated messages would be the same question and never reach the model.\n"
    )
    rows = []
    for label in classes:
        m, t = mask[label], turn[label]
        rows.append(
            [
                label,
                len(t),
                " / ".join(f"{k} {v}" for k, v in sorted(outcomes[label].items())),
                f"{p50(m) * 1e6:.0f}",
                f"{p99(m) * 1e6:.0f}",
                ms(p50(t)),
                ms(p99(t)),
                f"{p99(m) / p99(t):.2%}",
                f"{sum(m) / sum(t):.2%}",
            ]
        )
    table(
        [
            "messages",
            "count",
            "outcomes",
            "mask p50 µs",
            "mask p99 µs",
            "turn p50 ms",
            "turn p99 ms",
            "mask p99 / turn p99",
            "mask share of all turn time",
        ],
        rows,
    )


# --- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="bot data dir with a registered model (default: see above)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of the three flood scenarios")
    parser.add_argument(
        "--questions",
        type=int,
        default=20,
        help="the normal user's questions per run (at most the rate limit's burst, 20)",
    )
    parser.add_argument("--flood", type=int, default=20, help="flood messages kept in flight")
    parser.add_argument("--think", type=float, default=0.2, help="seconds between the normal user's questions")
    parser.add_argument("--per-class", type=int, default=300, help="messages per class in section 2")
    parser.add_argument("--sections", default="1,2", help="comma-separated sections to run")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")  # no per-busy warnings
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    with tempfile.TemporaryDirectory(prefix="flood-bench-") as tmp:
        scratch = Path(tmp)
        data_dir = find_data_dir(args.data_dir, scratch)
        print("# Flood and masking benchmark\n")
        print(f"_{os.cpu_count()} CPUs; data dir: `{data_dir}` (model {Registry(data_dir).state().current})_\n")
        if "1" in sections:
            began = time.perf_counter()
            flood(data_dir, scratch, args)
            print(f"_section 1: {time.perf_counter() - began:.0f} s_\n", flush=True)
        if "2" in sections:
            began = time.perf_counter()
            asyncio.run(masking(data_dir, scratch, args.per_class))
            print(f"_section 2: {time.perf_counter() - began:.0f} s_\n", flush=True)


if __name__ == "__main__":
    main()
