"""Quality: what a real pretrained Qwen gains from tuning on this shop's data. Prints markdown tables.

    .venv/bin/python bench/quality_bench.py [--gguf FILE] [--work DIR] [--resume]
        [--steps-first 44] [--steps-increment 30] [--batch-size 4] [--max-len 128]
        [--lr-first 2e-4] [--lr-increment PRESET] [--eval-limit N] [--max-new-tokens 96] [--threads 1]
    .venv/bin/python bench/quality_bench.py --report-only --work DIR   # tables again from results.json

Needs the real model: `../shared/tools/get-pretrained-qwen` prints its GGUF (run when --gguf is not given);
without ../shared the bench says so and stops (exit 0).

Models, all answering through onnxruntime-genai (the bot's `ChatModel`, greedy, the bot's system prompt):
- (a) base: the GGUF dequantised (`gguf_to_folder`) and built INT4 (`export_onnx`), zero-shot;
- (b) first tune: `tuning.train.fine_tune` (LoRA, merged) from (a)'s weights on the sample data's train
  split, the `pretrained` preset with --steps-first/--batch-size/--max-len, then `export_onnx` (INT4 by size);
- (c) one monthly increment: (b) + a month of simulated agent corrections (FACTS below, stored as real
  turns with agents' corrections in a SQLite store and turned into rows by `tuning.dataset.build`, which
  also replays the train split's file rows), each rated chat shown `chat_weight` times as `tuning.monthly`
  does, the `monthly` preset with --steps-increment/--batch-size/--max-len;
- (b) and (c) also built fp32 (`export_onnx(..., "fp32")`), answering every row (or the first --fp32-rows
  of each view: fp32 decodes at about a quarter of INT4's rate on CPU);
- (d) the project's starter model (`python -m tuning bootstrap`, or a finished `.venv/test-starter/*/`).

Eval views (held-out rows only; every model's training rows are checked against them with
`tuning.split.require_unseen`): unseen phrasings and unseen questions (`tuning.dataset.build` ->
`tuning.split`), and "what agents taught": the held-out paraphrases of FACTS. Metrics: `tuning.evaluate`
(accuracy = normalised exact match or token F1 >= 0.8; corpus BLEU-4 with sacrebleu, tokenize "zh" when a
reference holds Chinese; ROUGE-L = LCS F-measure over `tuning.evaluate.tokens`: NFKC + case fold, each
CJK character one token, each run of Latin letters/digits one token, punctuation dropped).

Every heavy stage runs as a child process of this script (`--worker`), timed from outside, with its peak
RSS from wait4 (the largest of the child and its waited-for descendants). Results go to
WORK/results.json as each stage finishes; --resume skips the stages already there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: import the project from the checkout

SHARED = ROOT.parent / "shared"
GET_QWEN = SHARED / "tools" / "get-pretrained-qwen"
DEFAULT_WORK = ROOT / ".venv" / "quality-bench"
AGENT = "telegram:4242"  # the simulated agent who corrected the answers
TRAIN_PARAPHRASES = 3  # per fact: the first ones train (as corrections), the rest are held out
TAUGHT = "what_agents_taught"
SPLIT_BOTH = "unseen_phrasings+unseen_questions"

# A month of agents' corrections: shop facts the sample data does not cover, each with paraphrases and
# one correct answer. The first TRAIN_PARAPHRASES questions were asked by customers, answered wrongly
# by the bot and corrected by an agent; the others are held out ("what agents taught").
FACTS: list[tuple[str, list[str]]] = [
    (
        "学生认证后每月可领一张满50减10的学生券,在'我的-学生认证'上传学生证即可",
        ["学生有优惠吗?", "学生认证怎么弄?", "我是大学生,有什么折扣?", "学生能领什么券?", "怎么认证学生身份拿优惠?"],
    ),
    (
        "手机支持以旧换新,在'以旧换新'频道估价后,旧机回收款直接抵扣新机货款",
        ["可以以旧换新吗?", "旧手机能抵钱吗?", "以旧换新怎么操作?", "我想拿旧手机换新的", "旧机回收的钱怎么用?"],
    ),
    (
        "北京和上海的门店支持到店自提,下单时选择'门店自提',到货后凭取件码取货",
        ["可以去门店自提吗?", "能到店里取货吗?", "门店自提怎么选?", "我想自己去店里拿", "有线下自提点吗?"],
    ),
    (
        "生鲜商品不支持7天无理由退货,如有变质请在签收24小时内拍照申请售后",
        ["生鲜能退吗?", "水果坏了怎么办?", "买的海鲜可以无理由退货吗?", "生鲜变质了怎么处理?", "收到的肉不新鲜能退吗?"],
    ),
    (
        "企业采购请在'企业采购'页面提交需求,专属顾问会在1个工作日内联系您",
        ["公司批量采购怎么买?", "有企业采购渠道吗?", "单位要大量订货找谁?", "企业团购怎么下单?", "我们公司想批量买"],
    ),
    (
        "Maple Plus costs 99 yuan a year and gives you free shipping on every order and early access to sales.",
        [
            "What is Maple Plus?",
            "How much is the Maple Plus membership?",
            "What do I get with Maple Plus?",
            "Is Maple Plus worth it, what are the benefits?",
            "How much does Plus cost per year?",
        ],
    ),
    (
        "Gift cards are sold under 'Me > Gift Cards', are valid for 3 years and cannot be exchanged for cash.",
        [
            "Do you sell gift cards?",
            "How long is a gift card valid?",
            "Can I buy a gift card for a friend?",
            "Where can I get a Maple Mall gift card?",
            "Can I turn my gift card into cash?",
        ],
    ),
    (
        "Large appliances are delivered to your door and installed for free; book a time under "
        "'Order Details > Installation'.",
        [
            "Do you install washing machines?",
            "Is installation free for a fridge?",
            "How do I book installation?",
            "Will someone set up my new air conditioner?",
            "Who installs large appliances I buy?",
        ],
    ),
    (
        "Members get a 20-yuan birthday coupon on the first day of their birthday month; set your birthday "
        "under 'Me > Profile'.",
        [
            "Do I get anything on my birthday?",
            "Is there a birthday gift for members?",
            "How does the birthday coupon work?",
            "When do I receive my birthday voucher?",
            "Any birthday discount?",
        ],
    ),
    (
        "Bring your delivery boxes to any Maple Mall store and earn 20 points per box for recycling them.",
        [
            "Can I recycle the delivery boxes?",
            "What should I do with the empty boxes?",
            "Do you take back packaging?",
            "Do I get points for returning boxes?",
            "Where can I drop off old delivery cartons?",
        ],
    ),
]


# --- small helpers ------------------------------------------------------------------------------


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def write_jsonl(path: Path, chats: list[list[dict[str, str]]]) -> None:
    path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chats), encoding="utf-8")


def read_jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class Results:
    """results.json, rewritten whole after every stage, so a crash keeps what finished."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if resume and path.exists() else {}

    def has(self, key: str) -> bool:
        return key in self.data.get("stages", {})

    def put(self, key: str, value: Any) -> None:
        self.data.setdefault("stages", {})[key] = value
        self.save()

    def save(self) -> None:
        scratch = self.path.with_suffix(".part")
        scratch.write_text(json.dumps(self.data, indent=1, ensure_ascii=False))
        os.replace(scratch, self.path)


def run_child(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """A child process: wall seconds, peak RSS (GiB) of its largest process from wait4, load average."""
    load_before = loadavg()
    began = time.perf_counter()
    child = subprocess.Popen(argv, cwd=ROOT, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - began
    if code:
        raise RuntimeError(f"stage failed (exit {code}): {' '.join(argv)}")
    return {
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),  # ru_maxrss is in KiB
        "load_before": load_before,
        "load_after": loadavg(),
    }


def worker_argv(name: str, spec: dict[str, Any]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", name, json.dumps(spec)]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


# --- workers (child processes) -------------------------------------------------------------------


def worker_hf(spec: dict[str, Any]) -> dict[str, Any]:
    from bot.models.export import gguf_to_folder

    gguf_to_folder(Path(spec["gguf"]), Path(spec["out"]))
    return {}


def worker_onnx(spec: dict[str, Any]) -> dict[str, Any]:
    from bot.models.export import default_precision, export_onnx

    precision = spec.get("precision") or default_precision(Path(spec["hf"]))
    export_onnx(Path(spec["hf"]), Path(spec["out"]), precision)
    return {"precision": precision}


def worker_tune(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    from tuning.config import TuneConfig
    from tuning.train import fine_tune

    cfg = TuneConfig(**spec["config"])
    chats = read_jsonl(Path(spec["chats"]))
    out = Path(spec["out"])
    began = time.perf_counter()
    losses = fine_tune(spec["base"], chats, out, cfg)
    total = time.perf_counter() - began
    logged = read_jsonl(out / "loss.jsonl")
    from bench.tuning_bench import replay_tokens
    from tuning.train import IGNORE, encode

    fed = replay_tokens(AutoTokenizer.from_pretrained(out / "hf"), chats, cfg, IGNORE, encode)
    loop_s = logged[-1]["s"]
    return {
        "fine_tune_s": round(total, 1),
        "train_loop_s": loop_s,
        "torch_threads": torch.get_num_threads(),
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "loss_log": logged,
        **fed,
        "epochs": round(cfg.steps * cfg.batch_size * cfg.grad_accum / fed["rows"], 2),
        "tokens_per_s": round(fed["tokens_fed"] / loop_s, 2),
        "padded_tokens_per_s": round(fed["padded_fed"] / loop_s, 2),
        "s_per_step": round(loop_s / cfg.steps, 2),
    }


class Recording:
    """A ChatModel that keeps every answer it gives (tuning.evaluate keeps only the first five)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.answers: list[str] = []

    def generate(self, messages: list[dict[str, str]]) -> str:
        answer = self.model.generate(messages)
        self.answers.append(answer)
        return answer


def worker_eval(spec: dict[str, Any]) -> dict[str, Any]:
    from bot.models.runtime import ChatModel, GenerationSettings
    from tuning.evaluate import combine, evaluate, is_correct

    settings = GenerationSettings(max_new_tokens=spec["max_new_tokens"], threads=spec["threads"])
    began = time.perf_counter()
    model = ChatModel(spec["name"], Path(spec["onnx"]), settings)
    load_s = time.perf_counter() - began
    views: dict[str, list[Any]] = json.loads(Path(spec["views"]).read_text(encoding="utf-8"))
    out: dict[str, Any] = {"load_s": round(load_s, 1), "views": {}, "answers": {}}
    parts = {}
    for name, chats in views.items():
        recording = Recording(model)
        t = time.perf_counter()
        evaluation = evaluate(recording, chats, spec["system_prompt"])  # type: ignore[arg-type]
        parts[name] = evaluation
        answer_tokens = [model.count_tokens(a) for a in recording.answers]
        out["views"][name] = asdict(evaluation.metrics) | {
            "seconds": round(time.perf_counter() - t, 1),
            "answer_tokens_mean": round(statistics.fmean(answer_tokens), 1),
            "answers_at_max_tokens": sum(n >= spec["max_new_tokens"] for n in answer_tokens),
        }
        out["answers"][name] = [
            {
                "question": c[-2]["content"],
                "reference": c[-1]["content"],
                "answer": a,
                "correct": is_correct(a, c[-1]["content"]),
            }
            for c, a in zip(chats, recording.answers, strict=True)
        ]
        log(f"{spec['name']} {name}: {out['views'][name]}")
    split_parts = [parts[v] for v in ("unseen_phrasings", "unseen_questions") if v in parts]
    if split_parts:
        out["views"][SPLIT_BOTH] = asdict(combine(split_parts).metrics)
    out["rows"] = {name: [asdict(r) for r in part.rows] for name, part in parts.items()}
    return out


WORKERS = {"hf": worker_hf, "onnx": worker_onnx, "tune": worker_tune, "eval": worker_eval}


def worker_main(name: str, spec_text: str) -> None:
    warnings.filterwarnings("ignore")
    spec = json.loads(spec_text)
    result = WORKERS[name](spec)
    Path(spec["result"]).write_text(json.dumps(result, ensure_ascii=False))


# --- data ----------------------------------------------------------------------------------------


async def _store_corrections(path: Path) -> None:
    """Each fact's training paraphrases as turns the bot answered wrongly and an agent corrected."""
    from bot.store import Store

    store = await Store.open(path)
    try:
        n = 0
        for answer, asked in FACTS:
            for question in asked[:TRAIN_PARAPHRASES]:
                n += 1
                turn = await store.add_turn(
                    channel="telegram",
                    conversation_id=f"month-{n}",
                    session=1,
                    user_id=f"customer-{n}",
                    message_id=f"m{n}",
                    user_text=question,
                    answer="Sorry, I can't help with that." if answer.isascii() else "抱歉,我暂时无法回答这个问题。",
                    model_version="first-tune",
                    latency_ms=1000.0,
                )
                await store.add_correction(turn, AGENT, answer)
    finally:
        await store.close()


def prepare_data(
    work: Path, system_prompt: str, cfg_first: Any, cfg_increment: Any, limit: int | None
) -> dict[str, Any]:
    """Training sets of (b) and (c), the eval views, and the leak checks; written under `work`."""
    from bot.models.chat import with_system
    from tuning import dataset, split
    from tuning.monthly import weighted_chats

    splits, card = dataset.build(None, [])  # the sample data, split by tuning.split (not kept: no registry)
    views = split.by_view([{"view": r["view"], "messages": r["messages"]} for r in splits["eval"]])
    taught = [
        [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]
        for answer, asked in FACTS
        for q in asked[TRAIN_PARAPHRASES:]
    ]
    views = {name: views[name] for name in ("unseen_phrasings", "unseen_questions")} | {TAUGHT: taught}
    views = {name: chats[:limit] if limit else chats for name, chats in views.items()}

    first = [with_system(system_prompt, r["messages"]) for r in splits["train"]]
    store = work / "month.sqlite"
    for leftover in work.glob("month.sqlite*"):
        leftover.unlink()
    asyncio.run(_store_corrections(store))
    month, month_card = dataset.build(store, [])  # rated chats + the sample data's train split, as `tuning run`
    weight = cfg_increment.chat_weight
    increment = weighted_chats(month["train"], system_prompt, weight)  # as `tuning run` does
    # Leak checks: no eval question (normalised) in any tune's training rows, the starter's is checked later.
    every_eval = [c for chats in views.values() for c in chats]
    first_asked = set().union(*(split.asked(c) for c in first))
    increment_asked = set().union(*(split.asked(c) for c in increment))
    split.require_unseen(every_eval, first_asked, "the first tune")
    split.require_unseen(every_eval, first_asked | increment_asked, "the monthly increment")
    write_jsonl(work / "train-first.jsonl", first)
    write_jsonl(work / "train-increment.jsonl", increment)
    (work / "views.json").write_text(json.dumps(views, ensure_ascii=False), encoding="utf-8")
    rated = [r for r in month["train"] if r["source"] == "chats"]
    return {
        "sample_card": {"rows": card["rows"], "eval_views": card["eval_views"]},
        "month_card": {"rows": month_card["rows"], "chat_labels": month_card["chat_labels"]},
        "views": {name: len(chats) for name, chats in views.items()},
        "first_rows": len(first),
        "increment_rows": len(increment),
        "increment_rated_chats": len(rated),
        "chat_weight": weight,
        "facts": len(FACTS),
        "facts_zh": sum(not a.isascii() for a, _ in FACTS),
        "leak_check": "passed: no eval question is asked in the first tune's or the increment's training rows",
    }


# --- the run -------------------------------------------------------------------------------------


def find_gguf(given: Path | None) -> Path | None:
    if given:
        return given
    if not GET_QWEN.exists():
        return None
    done = subprocess.run([str(GET_QWEN)], capture_output=True, text=True, check=True)
    return Path(done.stdout.strip().splitlines()[-1])


def starter_dir(work: Path, results: Results) -> tuple[Path, str]:
    """A data dir with a starter model: a finished test starter, else `python -m tuning bootstrap`."""
    from bot.models.registry import Registry

    data_dir = work / "starter"
    found = sorted((ROOT / ".venv" / "test-starter").glob("*/"), key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in found:
        state = Registry(candidate).state()
        if state.current and (Registry(candidate).onnx_dir(state.current) / "genai_config.json").exists():
            copy = work / "test-starter-copy"  # the test suite may rebuild or remove its own
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(candidate, copy)
            return copy, f"a copy of `.venv/test-starter/{candidate.name}` (the test suite's starter, {state.current})"
    if not results.has("starter-build") or not (data_dir / "models" / "state.json").exists():
        shutil.rmtree(data_dir, ignore_errors=True)
        env = {k: v for k, v in child_env().items() if not k.startswith("BOT_")} | {"BOT_DATA_DIR": str(data_dir)}
        log("[starter] python -m tuning bootstrap")
        results.put("starter-build", run_child([sys.executable, "-m", "tuning", "bootstrap"], env))
    return data_dir, "built by `python -m tuning bootstrap` into the bench's work folder"


def stage(results: Results, key: str, work: Path, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one worker unless results.json has it already (--resume)."""
    if results.has(key):
        log(f"[{key}] done in an earlier run, kept")
        return results.data["stages"][key]
    log(f"[{key}] starting (load {loadavg()})")
    spec = spec | {"result": str(work / f"{key}.result.json")}
    measured = run_child(worker_argv(name, spec), child_env())
    value = measured | json.loads((work / f"{key}.result.json").read_text())
    results.put(key, value)
    log(f"[{key}] {measured['wall_s']} s, peak RSS {measured['peak_rss_gib']} GiB")
    return value


def run(args: argparse.Namespace) -> int:
    from bot.config import BotSettings
    from bot.models.registry import Registry
    from tuning import split
    from tuning.config import PRESETS, preset

    gguf = find_gguf(args.gguf)
    if gguf is None:
        print(f"skipped: {GET_QWEN} not found (../shared absent), so there is no pretrained Qwen to measure")
        return 0
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    results = Results(work / "results.json", args.resume)
    began = time.perf_counter()
    system_prompt = BotSettings(_env_file=None).system_prompt
    common = {"batch_size": args.batch_size, "max_len": args.max_len, "checkpoint_every": 0}
    cfg_first = preset("pretrained", steps=args.steps_first, lr=args.lr_first, **common)
    lr_increment = args.lr_increment if args.lr_increment is not None else PRESETS["monthly"].lr
    cfg_increment = preset(
        "monthly", steps=args.steps_increment, lr=lr_increment, warmup=min(10, args.steps_increment // 5), **common
    )
    results.data["run"] = {
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "gguf": str(gguf),
        "gguf_mb": round(gguf.stat().st_size / 2**20),
        "machine": machine(),
        "load_at_start": loadavg(),
        "config_first": asdict(cfg_first),
        "config_increment": asdict(cfg_increment),
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "eval_limit": args.eval_limit,
    }
    results.data["data"] = prepare_data(work, system_prompt, cfg_first, cfg_increment, args.eval_limit)
    results.save()
    log(f"data: {results.data['data']}")

    base_hf, base_onnx = work / "base-hf", work / "base-onnx"
    stage(results, "base-hf", work, "hf", {"gguf": str(gguf), "out": str(base_hf)})
    stage(results, "base-onnx", work, "onnx", {"hf": str(base_hf), "out": str(base_onnx)})
    evaluation = {
        "views": str(work / "views.json"),
        "system_prompt": system_prompt,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
    }
    stage(results, "eval-base", work, "eval", evaluation | {"name": "base", "onnx": str(base_onnx)})

    starter, how = starter_dir(work, results)
    registry = Registry(starter)
    version = registry.state().current
    assert version is not None
    views = json.loads((work / "views.json").read_text(encoding="utf-8"))
    split.require_unseen(
        [c for chats in views.values() for c in chats], split.trained_questions(registry, version), version
    )
    results.data["starter"] = {
        "how": how,
        "version": version,
        "parameters": registry.manifest(version).get("parameters"),
    }
    results.save()
    stage(
        results, "eval-starter", work, "eval", evaluation | {"name": "starter", "onnx": str(registry.onnx_dir(version))}
    )

    first = work / "first"
    spec = {
        "base": str(base_hf),
        "chats": str(work / "train-first.jsonl"),
        "out": str(first),
        "config": asdict(cfg_first),
    }
    if not results.has("tune-first"):
        shutil.rmtree(first, ignore_errors=True)
    stage(results, "tune-first", work, "tune", spec)
    stage(results, "first-onnx", work, "onnx", {"hf": str(first / "hf"), "out": str(work / "first-onnx")})
    stage(results, "eval-first", work, "eval", evaluation | {"name": "first", "onnx": str(work / "first-onnx")})

    month = work / "month"
    spec = {"base": str(first / "hf"), "chats": str(work / "train-increment.jsonl"), "out": str(month)}
    if not results.has("tune-increment"):
        shutil.rmtree(month, ignore_errors=True)
    stage(results, "tune-increment", work, "tune", spec | {"config": asdict(cfg_increment)})
    stage(results, "month-onnx", work, "onnx", {"hf": str(month / "hf"), "out": str(work / "month-onnx")})
    stage(results, "eval-month", work, "eval", evaluation | {"name": "month", "onnx": str(work / "month-onnx")})

    if args.fp32_rows != 0:  # the same tunes built fp32 (what `--precision fp32` serves)
        subset = {name: chats[: args.fp32_rows or None] for name, chats in views.items()}
        (work / "views-fp32.json").write_text(json.dumps(subset, ensure_ascii=False), encoding="utf-8")
        for tag, folder in (("first", first), ("month", month)):
            built = work / f"{tag}-onnx-fp32"
            stage(
                results,
                f"{tag}-onnx-fp32",
                work,
                "onnx",
                {"hf": str(folder / "hf"), "out": str(built), "precision": "fp32"},
            )
            spec = evaluation | {"views": str(work / "views-fp32.json"), "name": f"{tag}-fp32", "onnx": str(built)}
            stage(results, f"eval-{tag}-fp32", work, "eval", spec)
    results.data["gate"] = gate_reports(results)
    results.data["run"]["total_s"] = round(time.perf_counter() - began, 1)  # this invocation (--resume: not all)
    results.data["run"]["load_at_end"] = loadavg()
    results.save()
    print(report(results.data))
    return 0


def gate_reports(results: Results) -> dict[str, Any]:
    """What the project's promotion gate decides, on the split views' rows: (b) vs (a), (c) vs (b)."""
    from tuning.config import PRESETS
    from tuning.evaluate import Row
    from tuning.gate import Gate, TooFewRows

    def rows(key: str) -> list[Row]:
        kept = results.data["stages"][key]["rows"]
        return [
            Row(r["correct"], tuple(r["bleu_stats"]), r["latency_s"])
            for v in ("unseen_phrasings", "unseen_questions")
            for r in kept[v]
        ]

    gate = Gate.from_config(PRESETS["monthly"])
    out = {}
    for name, candidate, production in (
        ("first vs base", "eval-first", "eval-base"),
        ("month vs first", "eval-month", "eval-first"),
    ):
        try:
            decided = gate.decide(rows(candidate), rows(production))
        except TooFewRows as exc:
            out[name] = {"skipped": str(exc)}
            continue
        out[name] = {k: decided[k] for k in ("accuracy", "bleu4", "latency", "reasons", "passed")}
    return out


def machine() -> str:
    import onnxruntime_genai as og
    import peft
    import torch
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    memory = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {memory / 2**20:.1f} GiB RAM, {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
        f"onnxruntime-genai {og.__version__}"
    )


# --- report --------------------------------------------------------------------------------------

MODELS = (
    ("eval-base", "(a) base Qwen, zero-shot"),
    ("eval-first", "(b) first LoRA tune"),
    ("eval-month", "(c) + one monthly increment"),
    ("eval-starter", "(d) starter model"),
    ("eval-first-fp32", "(b) first LoRA tune, fp32 build"),
    ("eval-month-fp32", "(c) + one monthly increment, fp32 build"),
)
VIEWS = (
    ("unseen_phrasings", "unseen phrasings"),
    ("unseen_questions", "unseen questions"),
    (SPLIT_BOTH, "both split views"),
    (TAUGHT, "what agents taught"),
)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def report(data: dict[str, Any]) -> str:
    stages = data.get("stages", {})
    counts = data.get("data", {}).get("views", {})
    counts[SPLIT_BOTH] = counts.get("unseen_phrasings", 0) + counts.get("unseen_questions", 0)
    out = []
    for metric, label in (("accuracy", "accuracy"), ("bleu4", "BLEU-4"), ("rouge_l", "ROUGE-L")):
        rows = []
        for key, name in MODELS:
            if key in stages:
                views = stages[key]["views"]
                rows.append([name] + [f"{views[v][metric]:.3f}" if v in views else "-" for v, _ in VIEWS])
        header = [label] + [f"{title} ({counts.get(v, 0)})" for v, title in VIEWS]
        out.append(table(header, rows))
    answered = stages.get("eval-first-fp32", {}).get("answers", {})
    first_rows = max((len(a) for a in answered.values()), default=0)
    if any(len(a) < counts.get(view, 0) for view, a in answered.items()):
        out.append(f"Same rows for every model: the first {first_rows} of each view (what the fp32 builds answered).\n")
        out.append(subset_table(stages, first_rows))
    rows = []
    for key, name in MODELS:
        if key in stages:
            s = stages[key]
            views = [v for v, _ in VIEWS if v in s["answers"]]
            answered = sum(len(s["answers"][v]) for v in views)
            seconds = sum(s["views"][v]["seconds"] for v in views)
            rows.append(
                [
                    name,
                    str(answered),
                    f"{seconds:.0f}",
                    f"{statistics.fmean(s['views'][v]['latency_p50_s'] for v in views):.2f}",
                    " / ".join(f"{s['views'][v]['answer_tokens_mean']:.0f}" for v in views),
                    " / ".join(str(s["views"][v]["answers_at_max_tokens"]) for v in views),
                    f"{s['wall_s']:.0f}",
                    f"{s['peak_rss_gib']:.2f}",
                ]
            )
    header = ["answering", "answers", "answer s", "p50 s (mean of views)", "answer tokens, mean per view"]
    out.append(table(header + ["answers at the cap, per view", "process wall s", "peak RSS GiB"], rows))
    rows = []
    for key, name in (("tune-first", "(b) first tune"), ("tune-increment", "(c) monthly increment")):
        if key in stages:
            s = stages[key]
            cfg = data["run"]["config_first" if key == "tune-first" else "config_increment"]
            rows.append(
                [
                    name,
                    f"{cfg['preset']}: {cfg['steps']} x {cfg['batch_size']}, max_len {cfg['max_len']}, lr {cfg['lr']:g}",
                    f"{s['rows']} ({s['truncated']} cut)",
                    f"{s['epochs']:.2f}",
                    f"{s['tokens_fed']:,} / {s['padded_fed']:,}",
                    f"{s['train_loop_s']:.0f}",
                    f"**{s['tokens_per_s']:.1f}** / {s['padded_tokens_per_s']:.1f}",
                    f"{s['s_per_step']:.1f}",
                    f"{s['loss_first']:.2f} -> {s['loss_last']:.2f}",
                    f"{s['wall_s']:.0f}",
                    f"{s['peak_rss_gib']:.2f}",
                ]
            )
    header = ["tune", "config", "rows", "epochs", "tokens fed real / padded", "loop s", "tokens/s real / padded"]
    out.append(table(header + ["s/step", "loss first -> last step", "process wall s", "peak RSS GiB"], rows))
    rows = []
    for key, name in (
        ("base-hf", "GGUF -> PyTorch folder (`gguf_to_folder`)"),
        ("base-onnx", "base -> INT4 (`export_onnx`)"),
        ("first-onnx", "(b) -> INT4"),
        ("month-onnx", "(c) -> INT4"),
        ("first-onnx-fp32", "(b) -> fp32"),
        ("month-onnx-fp32", "(c) -> fp32"),
        ("starter-build", "starter: `python -m tuning bootstrap`"),
    ):
        if key in stages:
            rows.append([name, f"{stages[key]['wall_s']:.0f}", f"{stages[key]['peak_rss_gib']:.2f}"])
    out.append(table(["build", "process wall s", "peak RSS GiB"], rows))
    for name, decided in data.get("gate", {}).items():
        if "skipped" in decided:
            out.append(f"- gate, {name}: {decided['skipped']}")
            continue
        acc, bleu = decided["accuracy"], decided["bleu4"]
        out.append(
            f"- gate, {name} (split views): accuracy {acc['difference']:+.3f} (95% CI {acc['ci'][0]:+.3f} to "
            f"{acc['ci'][1]:+.3f}; {acc['wins']} won, {acc['losses']} lost), BLEU-4 {bleu['difference']:+.3f}; "
            f"{decided['latency']['label']} {decided['latency']['seconds']:.2f} s; "
            f"{'passes' if decided['passed'] else 'refused: ' + '; '.join(decided['reasons'])}"
        )
    return "\n".join(out)


def subset_table(stages: dict[str, Any], n: int) -> str:
    """Accuracy / BLEU-4 / ROUGE-L of every model on the first `n` rows of each view (from the kept answers)."""
    from tuning.evaluate import corpus_bleu4, rouge_l

    rows = []
    for key, name in MODELS:
        if key not in stages:
            continue
        cells = []
        for view, _ in VIEWS:
            if view == SPLIT_BOTH or view not in stages[key]["answers"]:
                continue
            answers, kept = stages[key]["answers"][view][:n], stages[key]["rows"][view][:n]
            stats = [sum(column) for column in zip(*(r["bleu_stats"] for r in kept), strict=True)]
            accuracy = sum(a["correct"] for a in answers) / len(answers)
            rouge = statistics.fmean(rouge_l(a["answer"], a["reference"]) for a in answers)
            cells.append(f"{accuracy:.3f} / {corpus_bleu4(stats):.3f} / {rouge:.3f}")
        rows.append([name, *cells])
    header = ["accuracy / BLEU-4 / ROUGE-L"] + [f"{t} (first {n})" for v, t in VIEWS if v != SPLIT_BOTH]
    return table(header, rows)


def examples(data: dict[str, Any], per_view: int = 2) -> str:
    """A few answers per view beside the reference, for every model."""
    stages = data.get("stages", {})
    out = []
    for view, title in VIEWS:
        if view == SPLIT_BOTH:
            continue
        for i in range(per_view):
            lines = []
            for key, name in MODELS:
                if key in stages and len(stages[key]["answers"].get(view, [])) > i:
                    a = stages[key]["answers"][view][i]
                    if not lines:
                        lines.append(f"- {title}: {a['question']!r}, reference {a['reference']!r}")
                    lines.append(f"  - {name}: {a['answer']!r}{' (correct)' if a['correct'] else ''}")
            out += lines
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker_main(argv[1], argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, help="the GGUF file (default: from ../shared/tools/get-pretrained-qwen)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="builds, tunes and results.json")
    parser.add_argument("--resume", action="store_true", help="keep the stages results.json already has")
    parser.add_argument("--report-only", action="store_true", help="print the tables from WORK/results.json")
    parser.add_argument("--steps-first", type=int, default=44, help="(b): optimiser steps")
    parser.add_argument("--steps-increment", type=int, default=30, help="(c): optimiser steps")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--lr-first", type=float, default=2e-4, help="(b): the pretrained preset's lr")
    parser.add_argument("--lr-increment", type=float, help="(c): default the monthly preset's lr")
    parser.add_argument("--eval-limit", type=int, help="first N rows of each view (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="per answer (the bot's default: 96)")
    parser.add_argument(
        "--fp32-rows",
        type=int,
        help="also build (b) and (c) fp32 and answer the first N rows of each view (default: all; 0: no fp32 builds)",
    )
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per answer (0: one per core)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.report_only:
        data = json.loads((args.work / "results.json").read_text())
        print(report(data) + "\n\n" + examples(data))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
