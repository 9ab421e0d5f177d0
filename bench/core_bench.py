"""Core bot benchmarks: pipeline overhead, answer cache, sensitive-word filter, ONNX Runtime vs
PyTorch generation, INT8/INT4 quantisation. Prints markdown tables.

Every number is measured next to its baseline in the same run (interleaved where the two can
alternate), because on a small shared machine absolute timings drift by tens of percent; read the
ratios and medians, not the absolute values.

    .venv/bin/python bench/core_bench.py [--data-dir DIR] [--sections 1,2,3,4,5] [--reps 5]

DIR is a bot data dir with a registered model (models/state.json). Default: the newest starter
the test suite left in .venv/test-starter/, else one built now (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import logging
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: import the project from the checkout

import psutil  # noqa: E402
import torch  # noqa: E402

from bot.app import Bot, build_bot  # noqa: E402
from bot.cache import normalise_question  # noqa: E402
from bot.config import BotSettings  # noqa: E402
from bot.message import UserMessage  # noqa: E402
from bot.models.registry import Registry  # noqa: E402
from bot.pipeline import DialogueManager, WorkingTurn  # noqa: E402
from bot.wordfilter import WordFilter  # noqa: E402

FAQ = ROOT / "data" / "sample" / "faq.csv"
LEXICON = ROOT.parent / "shared" / "data" / "lexicons" / "houbb-sensitive-word" / "sensitive_word_dict.txt"
NEW_TOKENS = 64
# ~100M Qwen2 shape (tied embeddings, like Qwen2-0.5B): 12 x 768, GQA 12 query / 2 KV heads.
SHAPE_100M = dict(
    hidden_size=768,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    vocab_size=32000,
    tie_word_embeddings=True,
)


# --- small helpers ------------------------------------------------------------------------------


def p50(values: list[float]) -> float:
    return statistics.median(values)


def p99(values: list[float]) -> float:
    ordered = sorted(values)  # nearest rank: with ~300 samples this is the 3rd-largest value
    return ordered[min(len(ordered) - 1, max(0, math.ceil(0.99 * len(ordered)) - 1))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def table(headers: list[str], rows: list[list[Any]]) -> None:
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    print()


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"_load average at start: {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs_"


def faq_rows() -> list[dict[str, str]]:
    with open(FAQ, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def questions() -> list[str]:
    return list(dict.fromkeys(row["instruction"] for row in faq_rows()))


def file_mb(folder: Path) -> float:
    """The model's weight files: model.onnx plus any external-data files beside it."""
    files = [p for p in folder.iterdir() if p.suffix in (".onnx", ".data", ".safetensors") or p.name.endswith("_data")]
    return sum(p.stat().st_size for p in files) / 2**20


# --- data dir and bot ---------------------------------------------------------------------------


def find_data_dir(given: Path | None, scratch: Path) -> Path:
    if given is not None:
        if not Registry(given).state().current:
            sys.exit(f"{given}: no registered current model (models/state.json)")
        return given
    found = [p for p in (ROOT / ".venv" / "test-starter").glob("*/") if (p / "models" / "state.json").exists()]
    if found:
        return max(found, key=lambda p: (p / "models" / "state.json").stat().st_mtime)
    from tuning.bootstrap import bootstrap

    print("building the starter model (a minute or more)...", file=sys.stderr)
    built = scratch / "starter"
    bootstrap(built, BotSettings(_env_file=None).system_prompt)
    return built


async def fresh_bot(data_dir: Path, scratch: Path) -> Bot:
    """The real bot on a copy of the models with an empty store, so runs never see each other's turns."""
    copy = Path(tempfile.mkdtemp(prefix="bot-", dir=scratch))
    shutil.copytree(data_dir / "models", copy / "models")
    return await build_bot(BotSettings(_env_file=None, data_dir=copy, user_rate_limit=0))  # floods on purpose


class Messages:
    """Unique message ids, one user per conversation."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, conversation: str, text: str) -> UserMessage:
        self.count += 1
        return UserMessage("http", conversation, f"user-{conversation}", f"m{self.count}", text)


async def timed_steps(dialogue: DialogueManager, message: UserMessage) -> tuple[dict[str, float], WorkingTurn]:
    """One message through the real DialogueManager, with the time of each step from its observer hook."""
    times: dict[str, float] = {}
    seen: list[WorkingTurn] = []

    def observe(name: str, seconds: float, turn: WorkingTurn) -> None:
        times[name] = seconds
        seen[:] = [turn]

    dialogue.observers.append(observe)
    try:
        await dialogue.handle(message)
    finally:
        dialogue.observers.remove(observe)
    return times, seen[0]


# --- 1. pipeline overhead -----------------------------------------------------------------------


async def pipeline_overhead(data_dir: Path, scratch: Path) -> None:
    print("## 1. Pipeline overhead per message, without the model\n")
    print(load_note() + "\n")
    bot = await fresh_bot(data_dir, scratch)
    new = Messages()
    asked = questions()
    random.Random(1).shuffle(asked)
    # Ten conversations of different lengths (300 messages) taking turns, as concurrent customers
    # would; long ones show how building the context grows with the history.
    lengths = [5, 10, 15, 20, 25, 30, 35, 40, 50, 70]
    plan = [(c, k) for k in range(max(lengths)) for c, length in enumerate(lengths) if k < length]
    await timed_steps(bot.dialogue, new("warm-up", "你好"))  # first-call costs (template compile, sqlite)
    samples: list[tuple[int, dict[str, float], WorkingTurn]] = []
    for i, (conversation, k) in enumerate(plan):
        times, turn = await timed_steps(bot.dialogue, new(f"conv-{conversation}", asked[i % len(asked)]))
        samples.append((k, times, turn))
    await bot.close()

    names = [s.name for s in bot.dialogue.steps]
    overhead = [sum(t for n, t in times.items() if n != "model") for _, times, _ in samples]
    model = [times.get("model", 0.0) for _, times, _ in samples]
    whole = [sum(times.values()) for _, times, _ in samples]
    outcomes = {o: sum(1 for *_, t in samples if t.outcome == o) for o in sorted({t.outcome for *_, t in samples})}
    cached = sum(1 for *_, t in samples if t.cached)
    print(
        f"{len(samples)} messages in {len(lengths)} conversations (lengths {lengths}), outcomes {outcomes}, "
        f"{cached} answer-cache hits. Baseline: the model step of the same messages.\n"
    )
    table(
        ["per message", "p50 ms", "p99 ms", "mean ms"],
        [
            [
                "pipeline overhead (all steps but `model`)",
                ms(p50(overhead)),
                ms(p99(overhead)),
                ms(statistics.mean(overhead)),
            ],
            ["baseline: `model` step", ms(p50(model)), ms(p99(model)), ms(statistics.mean(model))],
            ["whole turn (sum of steps)", ms(p50(whole)), ms(p99(whole)), ms(statistics.mean(whole))],
        ],
    )
    print(
        f"Overhead is {sum(overhead) / sum(whole):.1%} of total step time; "
        f"p50 overhead / p50 model = {p50(overhead) / p50(model):.2f}.\n"
    )
    rows = []
    total_overhead = sum(overhead)
    for name in names:
        if name == "model":
            continue
        values = [times.get(name, 0.0) for _, times, _ in samples]
        rows.append(
            [
                f"`{name}`",
                ms(p50(values)),
                ms(p99(values)),
                ms(statistics.mean(values)),
                f"{sum(values) / total_overhead:.1%}",
            ]
        )
    table(["step", "p50 ms", "p99 ms", "mean ms", "share of overhead"], rows)
    # Context building re-tokenises the growing prompt for every past turn it adds.
    buckets = [(0, 0), (1, 4), (5, 19), (20, 39), (40, 69)]
    rows = []
    for lo, hi in buckets:
        chosen = [(times, turn) for k, times, turn in samples if lo <= k <= hi]
        if not chosen:
            continue
        over = [sum(t for n, t in times.items() if n != "model") for times, _ in chosen]
        context = [times.get("build_context", 0.0) for times, _ in chosen]
        model_step = [times.get("model", 0.0) for times, _ in chosen]
        turns_in_prompt = [(len(turn.prompt) - 2) // 2 for _, turn in chosen if turn.prompt]
        rows.append(
            [
                f"{lo + 1}" if lo == hi else f"{lo + 1}-{hi + 1}",
                len(chosen),
                ms(p50(over)),
                ms(p99(over)),
                ms(p50(context)),
                ms(p50(model_step)),
                f"{statistics.mean(turns_in_prompt):.1f}" if turns_in_prompt else "-",
            ]
        )
    table(
        [
            "turn # in conversation",
            "messages",
            "overhead p50 ms",
            "overhead p99 ms",
            "`build_context` p50 ms",
            "baseline: `model` p50 ms",
            "past turns in prompt (mean)",
        ],
        rows,
    )


# --- 2. answer cache ----------------------------------------------------------------------------


async def cache_hit_vs_miss(data_dir: Path, scratch: Path, count: int = 100) -> None:
    print("## 2. Answer cache: hit vs miss (whole `handle()`)\n")
    print(load_note() + "\n")
    bot = await fresh_bot(data_dir, scratch)
    new = Messages()
    distinct = list({normalise_question(q): q for q in questions()}.values())
    random.Random(2).shuffle(distinct)
    warm, chosen = distinct[0], distinct[1 : count + 1]
    for conversation in ("warm-a", "warm-b"):
        await bot.dialogue.handle(new(conversation, warm))
    miss, hit, wrong = [], [], 0
    # Interleaved: each question misses in one fresh conversation, then hits in another.
    for i, question in enumerate(chosen):
        for kind, samples in (("miss", miss), ("hit", hit)):
            began = time.perf_counter()
            reply = await bot.dialogue.handle(new(f"{kind}-{i}", question))
            samples.append(time.perf_counter() - began)
            wrong += reply.cached != (kind == "hit")
    await bot.close()
    print(
        f"{len(chosen)} distinct FAQ questions; each asked in a fresh conversation (miss: the model runs), "
        f"then again in another fresh conversation (hit). Replies whose `cached` flag was not as expected: {wrong}.\n"
    )
    table(
        ["case", "p50 ms", "p99 ms", "mean ms"],
        [
            ["miss (model runs)", ms(p50(miss)), ms(p99(miss)), ms(statistics.mean(miss))],
            ["hit", ms(p50(hit)), ms(p99(hit)), ms(statistics.mean(hit))],
            [
                "ratio miss / hit",
                f"{p50(miss) / p50(hit):.1f}x",
                f"{p99(miss) / p99(hit):.1f}x",
                f"{statistics.mean(miss) / statistics.mean(hit):.1f}x",
            ],
        ],
    )


# --- 3. sensitive-word filter -------------------------------------------------------------------


def word_filter(rounds: int = 3) -> None:
    print("## 3. Sensitive-word filter throughput (64k-word Chinese lexicon)\n")
    if not LEXICON.exists():
        print(f"_skipped: {LEXICON} is not there (the shared data folder is absent)._\n")
        return
    print(load_note() + "\n")
    words = [line.strip() for line in LEXICON.read_text(encoding="utf-8").splitlines() if line.strip()]
    entries = [(w, "default") for w in words]
    policies = {"default": "mask"}

    # Memory first, in a clean state: RSS around the first build, then tracemalloc around another.
    process = psutil.Process()
    gc.collect()
    rss_before = process.memory_info().rss
    began = time.perf_counter()
    wf = WordFilter(entries, [], policies)
    builds = [time.perf_counter() - began]
    gc.collect()
    rss_delta = process.memory_info().rss - rss_before
    stats = wf._words.get_stats()  # pyahocorasick's own count of its trie
    for _ in range(2):
        began = time.perf_counter()
        WordFilter(entries, [], policies)
        builds.append(time.perf_counter() - began)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = WordFilter(entries, [], policies)
    traced_delta = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del kept

    rows = faq_rows()
    short = list(dict.fromkeys([r["instruction"] for r in rows] + [r["response"] for r in rows]))
    rng = random.Random(3)
    classes = {
        "FAQ questions + answers (zh+en)": short,
        "10 FAQ texts joined": [" ".join(rng.sample(short, 10)) for _ in range(40)],
        "100 FAQ texts joined": [" ".join(rng.sample(short, 100)) for _ in range(8)],
    }

    def ours(texts: list[str]) -> int:
        return sum(1 for t in texts if wf.check(t).categories)

    def baseline(texts: list[str]) -> int:
        flagged = 0
        for text in texts:
            lowered = text.lower()
            flagged += bool([w for w in words if w in lowered])
        return flagged

    out = []
    for label, texts in classes.items():
        timings: dict[str, list[float]] = {"ours": [], "baseline": []}
        flagged: dict[str, int] = {}
        for r in range(rounds):  # alternate which goes first
            for name, fn in (("ours", ours), ("baseline", baseline))[:: 1 if r % 2 == 0 else -1]:
                began = time.perf_counter()
                flagged[name] = fn(texts)
                timings[name].append(time.perf_counter() - began)
        rate = {name: len(texts) / p50(values) for name, values in timings.items()}
        chars = statistics.mean(len(t) for t in texts)
        out.append(
            [
                label,
                len(texts),
                f"{chars:.0f}",
                f"{rate['ours']:,.0f}",
                f"{rate['baseline']:,.1f}",
                f"{rate['ours'] / rate['baseline']:,.0f}x",
                f"{flagged['ours']} / {flagged['baseline']}",
            ]
        )
    print(
        f"{len(words):,} words from `{LEXICON.name}` (category `default`, policy mask, no allowlist). "
        f"Baseline: `[w for w in words if w in text.lower()]` over the same word list. "
        f"Median of {rounds} alternating passes.\n"
    )
    table(["texts", "n", "mean chars", "ours texts/s", "baseline texts/s", "speed-up", "flagged ours / baseline"], out)
    table(
        ["automaton", "value"],
        [
            ["build time (median of 3)", f"{p50(builds) * 1000:.0f} ms (first {builds[0] * 1000:.0f} ms)"],
            ["keys / trie nodes", f"{stats['words_count']:,} / {stats['nodes_count']:,}"],
            ["memory: tracemalloc delta", f"{traced_delta / 2**20:.1f} MiB"],
            ["memory: RSS delta (first build)", f"{rss_delta / 2**20:.1f} MiB"],
            ["memory: pyahocorasick total_size", f"{stats['total_size'] / 2**20:.1f} MiB"],
        ],
    )


# --- 4 and 5. generation: ONNX Runtime vs PyTorch, quantisation ---------------------------------

DEFAULT_THREADS = torch.get_num_threads()
# Each runtime also runs on one thread: with other jobs on the cores, a 2-thread OpenMP region waits
# for a preempted thread, and PyTorch eager on 2 threads measured 3-5x slower than on 1.
THREADS = (DEFAULT_THREADS, 1) if DEFAULT_THREADS > 1 else (1,)


def load_pytorch(hf_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()


def load_ort(onnx_dir: Path, threads: int = DEFAULT_THREADS) -> Any:
    import onnxruntime
    from optimum.onnxruntime import ORTModelForCausalLM

    options = onnxruntime.SessionOptions()
    if threads != DEFAULT_THREADS:  # the default (0) is one thread per physical core, as the bot runs it
        options.intra_op_num_threads = threads
    return ORTModelForCausalLM.from_pretrained(
        onnx_dir, use_cache=True, provider="CPUExecutionProvider", session_options=options
    )


def generate(
    model: Any, ids: torch.Tensor, pad: int, threads: int = DEFAULT_THREADS, **limits: Any
) -> tuple[float, list[int]]:
    """Greedy; returns seconds and the new token ids. `threads` sets torch's pool (PyTorch's matmuls,
    and the logits processing around an ORT model)."""
    limits = limits or {"min_new_tokens": NEW_TOKENS, "max_new_tokens": NEW_TOKENS}
    torch.set_num_threads(threads)
    try:
        began = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=pad, **limits
            )
        return time.perf_counter() - began, out[0, ids.shape[1] :].tolist()
    finally:
        torch.set_num_threads(DEFAULT_THREADS)


Runner = tuple[Any, int]  # a loaded model and the thread count it runs with


def race(
    runners: dict[str, Runner], ids: torch.Tensor, pad: int, reps: int
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """One warm-up each, then `reps` rounds; each round runs every runner once, in a rotating order."""
    tokens = {name: generate(model, ids, pad, threads)[1] for name, (model, threads) in runners.items()}
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            model, threads = runners[name]
            took, out = generate(model, ids, pad, threads)
            assert len(out) == NEW_TOKENS, (name, len(out))
            seconds[name].append(took)
    return seconds, tokens


def same_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def rate(seconds: list[float]) -> str:
    rates = sorted(NEW_TOKENS / s for s in seconds)
    return f"**{NEW_TOKENS / p50(seconds):.1f}** ({rates[0]:.1f}-{rates[-1]:.1f})"


def speed_table(seconds: dict[str, list[float]], kinds: dict[str, str], baseline: str) -> None:
    """Rows: runtimes (`kinds`: key -> label); columns: tokens/s per thread count, and the ratio to the
    baseline runtime at the same thread count. Runner names are `<kind>@<threads>`."""
    headers = ["runtime"]
    for t in THREADS:
        headers += [
            f"tokens/s, {t} thread{'s' if t > 1 else ''}: p50 (range)",
            f"vs {kinds[baseline].split(' (')[0]} @{t}",
        ]
    rows = []
    for kind, label in kinds.items():
        row = [label]
        for t in THREADS:
            name, base = f"{kind}@{t}", f"{baseline}@{t}"
            if name in seconds:
                row += [rate(seconds[name]), f"{p50(seconds[base]) / p50(seconds[name]):.2f}x"]
            else:
                row += ["-", "-"]
        rows.append(row)
    table(headers, rows)


def starter_runtimes(data_dir: Path, reps: int, work: Path) -> tuple[Any, torch.Tensor, str]:
    """Section 4a; also times the starter's INT8 export, so section 5 can say how INT8 does on trained weights."""
    from transformers import AutoTokenizer

    from bench.optimum_path import optimum_export, quantize

    print("## 4a. ONNX Runtime vs PyTorch eager: the starter model\n")
    print(load_note() + "\n")
    registry = Registry(data_dir)
    version = registry.state().current
    folder = registry.path(version)
    tokenizer = AutoTokenizer.from_pretrained(folder / "hf")
    system = BotSettings(_env_file=None).system_prompt
    prompt = [{"role": "system", "content": system}, {"role": "user", "content": "我的订单什么时候到?"}]
    ids = torch.tensor([tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)])
    pad = tokenizer.pad_token_id
    pytorch = load_pytorch(folder / "hf")
    onnx_dir = optimum_export(folder / "hf", work / "starter-onnx")
    int8_dir = quantize(onnx_dir, work / "starter-int8", "int8")
    runners: dict[str, Runner] = {}
    for t in THREADS:
        runners[f"pt@{t}"] = (pytorch, t)
        runners[f"fp32@{t}"] = (load_ort(onnx_dir, t), t)
    runners[f"int8@{DEFAULT_THREADS}"] = (load_ort(int8_dir), DEFAULT_THREADS)
    seconds, tokens = race(runners, ids, pad, reps)
    print(
        f"Model {version} ({pytorch.num_parameters():,} parameters), prompt {ids.shape[1]} tokens, greedy, exactly "
        f"{NEW_TOKENS} new tokens (min = max), batch 1; median of {reps} interleaved runs (all runners in rotating "
        f"order) after one warm-up each. Baseline: PyTorch eager at the same thread count.\n"
    )
    speed_table(seconds, {"pt": "PyTorch eager (hf/)", "fp32": "ONNX Runtime fp32 (onnx/)"}, "pt")

    # Greedy agreement: the fixed 64-token run, and FAQ questions the way the bot asks them.
    stops = sorted(
        {
            t
            for t in (tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id)
            if isinstance(t, int) and t >= 0
        }
    )
    asked = questions()[::18]  # 20 questions, zh and en
    compared = {
        "pt": runners[f"pt@{DEFAULT_THREADS}"],
        "fp32": runners[f"fp32@{DEFAULT_THREADS}"],
        "int8": runners[f"int8@{DEFAULT_THREADS}"],
    }
    answers: dict[str, list[list[int]]] = {name: [] for name in compared}
    for question in asked:
        chat = tokenizer.apply_chat_template(
            [prompt[0], {"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
        )
        for name, (model, _) in compared.items():
            answers[name].append(generate(model, torch.tensor([chat]), pad, max_new_tokens=96, eos_token_id=stops)[1])

    def agreement(a: str, b: str) -> str:
        firsts = [same_prefix(x, y) for x, y in zip(answers[a], answers[b], strict=True) if x != y]
        return f"{len(asked) - len(firsts)}/{len(asked)}" + (
            f" (others first differ at token {firsts})" if firsts else ""
        )

    pt, fp32, int8 = (f"{k}@{DEFAULT_THREADS}" for k in ("pt", "fp32", "int8"))
    fixed = tokens[pt] == tokens[fp32]
    print(
        f"Greedy token identity, ORT fp32 vs PyTorch: fixed {NEW_TOKENS}-token run "
        f"{'identical' if fixed else f'DIFFERS from token {same_prefix(tokens[pt], tokens[fp32])}'}; "
        f"FAQ questions with the bot's settings (max 96 new tokens, stop on <|im_end|>) identical: "
        f"{agreement('pt', 'fp32')}.\n"
    )
    note = (
        f"For contrast, INT8 on the trained starter ({version}, {DEFAULT_THREADS} threads, same run as 4a): "
        f"{NEW_TOKENS / p50(seconds[int8]):.0f} tokens/s vs fp32 {NEW_TOKENS / p50(seconds[fp32]):.0f} "
        f"({p50(seconds[fp32]) / p50(seconds[int8]):.2f}x), file {file_mb(int8_dir):.1f} MB vs "
        f"{file_mb(folder / 'onnx'):.1f} MB; greedy answers to the same 20 FAQ questions identical to fp32: "
        f"{agreement('fp32', 'int8')}."
    )
    return tokenizer, ids, note


def build_100m(tokenizer: Any, work: Path) -> tuple[Path, Path, int, float]:
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from bench.optimum_path import optimum_export

    torch.manual_seed(0)
    eos, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id
    config = Qwen2Config(bos_token_id=pad, eos_token_id=eos, pad_token_id=pad, **SHAPE_100M)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, do_sample=False)
    params = model.num_parameters()
    hf_dir, onnx_dir = work / "hf", work / "onnx"
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    del model
    began = time.perf_counter()
    optimum_export(hf_dir, onnx_dir)
    return hf_dir, onnx_dir, params, time.perf_counter() - began


def qwen_100m(tokenizer: Any, ids: torch.Tensor, work: Path, reps: int, starter_note: str) -> None:
    """Sections 4b and 5 in one interleaved race: PyTorch, ORT fp32, INT8 and INT4, each on 2 and 1 threads."""
    from bench.optimum_path import quantize

    hf_dir, onnx_dir, params, export_s = build_100m(tokenizer, work)
    folders: dict[str, tuple[Path, float]] = {"fp32": (onnx_dir, export_s)}
    failed: dict[str, str] = {}
    for mode in ("int8", "int4"):
        began = time.perf_counter()
        try:
            folders[mode] = (quantize(onnx_dir, work / mode, mode), time.perf_counter() - began)
        except Exception as exc:  # report, don't stop: INT4 support varies by onnxruntime version
            failed[mode] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    pytorch = load_pytorch(hf_dir)
    runners: dict[str, Runner] = {}
    for t in THREADS:
        runners[f"pt@{t}"] = (pytorch, t)
        for mode, (folder, _) in folders.items():
            try:
                runners[f"{mode}@{t}"] = (load_ort(folder, t), t)
            except Exception as exc:
                failed[mode] = f"load failed: {type(exc).__name__}: {exc}".splitlines()[0][:300]
    seconds, tokens = race(runners, ids, tokenizer.pad_token_id, reps)
    shape = ", ".join(f"{k}={v}" for k, v in SHAPE_100M.items())
    labels = {
        "pt": "PyTorch eager",
        "fp32": "ONNX Runtime fp32",
        "int8": "ONNX Runtime INT8 (dynamic)",
        "int4": "ONNX Runtime INT4 (MatMulNBits)",
    }

    print("## 4b. ONNX Runtime vs PyTorch eager: ~100M Qwen2 (random init)\n")
    print(load_note() + "\n")
    print(
        f"Qwen2Config({shape}): **{params:,} parameters** ({params / 1e6:.1f}M). Same prompt ids as 4a "
        f"({ids.shape[1]} tokens), exactly {NEW_TOKENS} new tokens, greedy, batch 1; median of {reps} interleaved "
        f"runs ({len(runners)} runners: PyTorch, ORT fp32, INT8, INT4 x {len(THREADS)} thread counts, rotating "
        f"order) after one warm-up each. Export to ONNX took {export_s:.0f} s.\n"
    )
    speed_table(seconds, {k: labels[k] for k in ("pt", "fp32")}, "pt")
    pt, fp32 = f"pt@{DEFAULT_THREADS}", f"fp32@{DEFAULT_THREADS}"
    if fp32 in tokens:
        n = same_prefix(tokens[pt], tokens[fp32])
        print(
            f"Greedy tokens ORT fp32 vs PyTorch: "
            f"{'identical' if tokens[pt] == tokens[fp32] else f'first {n} of {NEW_TOKENS} identical'}.\n"
        )

    print("## 5. INT8 / INT4 vs fp32 ONNX (~100M)\n")
    print(
        "Same run as 4b. `bench.optimum_path.quantize`: INT8 = dynamic, weight MatMuls only, per-channel; "
        "INT4 = weight-only MatMulNBits, block 32, symmetric. Baseline: ONNX fp32 at the same thread count.\n"
    )
    speed_table(seconds, {k: labels[k] for k in ("fp32", "int8", "int4")}, "fp32")
    rows = []
    for mode in ("fp32", "int8", "int4"):
        if mode in folders:
            agree = tokens.get(f"{mode}@{DEFAULT_THREADS}")
            rows.append(
                [
                    labels[mode],
                    f"{file_mb(folders[mode][0]):.0f}",
                    f"{folders[mode][1]:.0f}",
                    f"{same_prefix(tokens[fp32], agree)}/{NEW_TOKENS}" if agree else "-",
                ]
            )
        else:
            rows.append([labels[mode], "-", "failed", "-"])
    rows.append(["PyTorch safetensors (for size)", f"{file_mb(hf_dir):.0f}", "-", "-"])
    table(["model", "file MB", "export / quantise s", "greedy tokens equal to fp32 (prefix)"], rows)
    for mode, error in failed.items():
        print(f"**{mode} failed:** `{error}`\n")
    print(
        "Greedy agreement with fp32 on random weights mostly measures near-ties in the logits, not quality. "
        + starter_note
        + "\n"
    )


# --- main ---------------------------------------------------------------------------------------


def machine() -> None:
    import onnxruntime
    import transformers

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    print(
        f"_{os.cpu_count()} CPUs ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM; Python "
        f"{platform.python_version()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"transformers {transformers.__version__}_\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="bot data dir with a registered model (default: see above)")
    parser.add_argument(
        "--sections", default="1,2,3,4,5", help="comma-separated sections to run (4 and 5 run together)"
    )
    parser.add_argument("--reps", type=int, default=5, help="generation repetitions per model (3-5)")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("optimum", "transformers", "onnxruntime", "torch"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    with tempfile.TemporaryDirectory(prefix="core-bench-") as tmp:
        scratch = Path(tmp)
        data_dir = find_data_dir(args.data_dir, scratch)
        print("# Core bot benchmark\n")
        machine()
        print(f"_data dir: `{data_dir}` (model {Registry(data_dir).state().current})_\n")
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("1", lambda: asyncio.run(pipeline_overhead(data_dir, scratch))),
            ("2", lambda: asyncio.run(cache_hit_vs_miss(data_dir, scratch))),
            ("3", word_filter),
        ]
        for key, run in steps:
            if key in sections:
                began = time.perf_counter()
                run()
                print(f"_section {key}: {time.perf_counter() - began:.0f} s_\n", flush=True)
        if sections & {"4", "5"}:
            began = time.perf_counter()
            tokenizer, ids, starter_note = starter_runtimes(data_dir, args.reps, scratch)
            print(f"_section 4a: {time.perf_counter() - began:.0f} s_\n", flush=True)
            began = time.perf_counter()
            qwen_100m(tokenizer, ids, scratch / "qwen-100m", args.reps, starter_note)
            print(f"_sections 4b+5: {time.perf_counter() - began:.0f} s_\n", flush=True)


if __name__ == "__main__":
    main()
