"""Tuning benchmark: the project's own `python -m tuning` commands on a real English data set
(Bitext), and the LoRA -> merge -> ONNX (fp32, INT4) -> answer path on a real pretrained Qwen (GGUF).

    .venv/bin/python bench/tuning_bench.py [--skip-qwen] [--skip-bitext] [--eval-limit 100]
                                           [--qwen-steps 3] [--json OUT.json] [--keep DIR]

Every stage runs as a subprocess (BOT_DATA_DIR set to a temp dir) and is timed from outside; the
process tree's resident memory is sampled while it runs (peak reported), and a stage is killed if
it passes --max-rss-gb or the machine's available memory falls under 1.5 GB.

Bitext (`../shared/data/bitext/...8b6ca3d.csv`, CDLA-Sharing-1.0, read in place, never copied):
`tuning dataset --no-sample` -> `tuning bootstrap --data train.jsonl` -> `tuning eval --limit N`.
Starter training tokens/s is computed from the registered version's loss.jsonl ("s" at the last
step = time spent in the training loop) and the tokens the loop fed, replayed exactly with the
same encode/shuffle as tuning.train.train.

Qwen (`../shared/tools/get-pretrained-qwen`, Qwen2.5-Coder-0.5B-Instruct Q4_K_M): stages call the
project's functions in child processes of this script (`--worker ...`): tuning.train.fine_tune
(LoRA, the `pretrained` preset with steps, batch_size=4, max_len=128, on the shipped sample data's train split),
bot.models.export.export_onnx (onnxruntime-genai's builder, fp32 and INT4), and bot.models.runtime.ChatModel
answering "我的订单什么时候到?" with the bot's system prompt (greedy, at most 64 tokens) on each build.
`tuning run --base GGUF` itself is not timed: it would also evaluate 200 eval rows with the 0.5B
candidate and the production model on CPU, which takes far longer than the rest together.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
BITEXT = SHARED / "data" / "bitext" / "Bitext_Sample_Customer_Support_Training_Dataset_8b6ca3d.csv"
GET_QWEN = SHARED / "tools" / "get-pretrained-qwen"
QUESTION = "我的订单什么时候到?"
ORIGIN_BLEU_BAR = 0.35
MARK = "BENCH_JSON "


# --- running and watching a stage ------------------------------------------------------------


def _tree_rss(proc: Any) -> int:
    import psutil

    total = 0
    try:
        for p in [proc, *proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def run_stage(
    name: str, cmd: list[str], env: dict[str, str], cwd: Path, timeout_s: float, max_rss_gb: float
) -> dict[str, Any]:
    """Run one stage; wall time, peak tree RSS (sampled every 0.2 s), stdout, and any JSON it marks."""
    import psutil

    print(f"[{name}] {' '.join(map(str, cmd))}", file=sys.stderr, flush=True)
    log = open(cwd / f"{name}.stderr.log", "w")
    began = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    watched = psutil.Process(child.pid)
    peak, killed = 0, ""
    out_chunks: list[str] = []
    reader = threading.Thread(target=lambda: out_chunks.append(child.stdout.read()), daemon=True)
    reader.start()
    while child.poll() is None:
        rss = _tree_rss(watched)
        peak = max(peak, rss)
        available = psutil.virtual_memory().available
        if rss > max_rss_gb * 2**30 or available < 1.5 * 2**30 or time.perf_counter() - began > timeout_s:
            killed = (
                f"RSS {rss / 2**30:.1f} GB > {max_rss_gb} GB"
                if rss > max_rss_gb * 2**30
                else f"available memory {available / 2**30:.1f} GB"
                if available < 1.5 * 2**30
                else f"timeout {timeout_s:.0f} s"
            )
            for p in [*watched.children(recursive=True), watched]:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            break
        time.sleep(0.2)
    child.wait()
    reader.join(5)
    log.close()
    wall = time.perf_counter() - began
    stdout = "".join(out_chunks)
    result: dict[str, Any] = {
        "stage": name,
        "wall_s": round(wall, 2),
        "peak_rss_gb": round(peak / 2**30, 2),
        "rc": child.returncode,
    }
    if killed:
        result["killed"] = killed
    marked = [line[len(MARK) :] for line in stdout.splitlines() if line.startswith(MARK)]
    if marked:
        result["data"] = json.loads(marked[-1])
    else:  # the commands print one indented JSON object last; libraries may print before it
        start = stdout.rfind("\n{\n")
        try:
            result["data"] = json.loads(stdout[start + 1 if start >= 0 else 0 :])
        except json.JSONDecodeError:
            pass
    if child.returncode != 0:
        tail = (cwd / f"{name}.stderr.log").read_text(errors="replace")[-3000:]
        result["stderr_tail"] = tail
        print(f"[{name}] FAILED rc={child.returncode} {killed}\n{tail}", file=sys.stderr, flush=True)
    else:
        print(f"[{name}] {wall:.1f} s, peak RSS {peak / 2**30:.2f} GB", file=sys.stderr, flush=True)
    return result


def base_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    env["BOT_DATA_DIR"] = str(data_dir)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def tuning(*args: str) -> list[str]:
    return [sys.executable, "-m", "tuning", *args]


def worker(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", *args]


# --- Bitext -----------------------------------------------------------------------------------


def bench_bitext(work: Path, eval_limit: int, max_rss_gb: float) -> dict[str, Any]:
    if not BITEXT.exists():
        return {"skipped": f"{BITEXT} not found (../shared absent): Bitext part skipped"}
    data_dir, ds = work / "var", work / "bitext-ds"
    env = base_env(data_dir)
    stages = [
        run_stage(
            "bitext-dataset",
            tuning("dataset", "--no-sample", "--data", str(BITEXT), "--out", str(ds)),
            env,
            work,
            600,
            max_rss_gb,
        )
    ]
    if stages[-1]["rc"] != 0:
        return {"stages": stages}
    stages.append(
        run_stage(
            "bitext-bootstrap", tuning("bootstrap", "--data", str(ds / "train.jsonl")), env, work, 3600, max_rss_gb
        )
    )
    if stages[-1]["rc"] != 0:
        return {"stages": stages}
    stages.append(
        run_stage(
            "bitext-eval",
            tuning(
                "eval",
                "--model",
                "current",
                "--data",
                str(ds / "eval.jsonl"),
                "--limit",
                str(eval_limit),
                "--out",
                str(work / "bitext-metrics.json"),
            ),
            env,
            work,
            1800,
            max_rss_gb,
        )
    )
    version = stages[1]["data"]["version"]
    stages.append(
        run_stage(
            "bitext-tokens",
            worker("starter-tokens", str(data_dir / "models" / version), str(ds)),
            env,
            work,
            600,
            max_rss_gb,
        )
    )
    card = stages[0].get("data", {})
    metrics = stages[2].get("data", {})
    return {
        "rows": card.get("rows"),
        "metrics": {
            k: metrics.get(k) for k in ("examples", "accuracy", "bleu4", "rouge_l", "latency_p50_s", "latency_p99_s")
        },
        "samples": metrics.get("samples", [])[:2],
        "training": stages[3].get("data"),
        "stages": stages,
    }


def worker_starter_tokens(version_dir: Path, ds: Path) -> dict[str, Any]:
    """Tokens the starter's training loop saw, replayed with tuning.train's own encode and shuffle."""
    from transformers import AutoTokenizer

    from bot.config import BotSettings
    from bot.models.chat import with_system
    from tuning import dataset
    from tuning.config import TuneConfig
    from tuning.train import IGNORE, encode

    manifest = json.loads((version_dir / "manifest.json").read_text())
    cfg = TuneConfig(**manifest["config"])
    tokenizer = AutoTokenizer.from_pretrained(version_dir / "hf")
    system = BotSettings(_env_file=None).system_prompt
    chats = [with_system(system, r["messages"]) for r in dataset.load_split(ds, "train")]
    fed = replay_tokens(tokenizer, chats, cfg, IGNORE, encode)
    losses = [json.loads(line) for line in (version_dir / "loss.jsonl").read_text().splitlines()]
    loop_s = losses[-1]["s"]
    epochs = cfg.steps * cfg.batch_size * cfg.grad_accum / fed["rows"]
    return {
        "parameters": manifest.get("parameters"),
        "shape": manifest.get("shape"),
        "corpus": manifest.get("corpus"),  # what tuning.bootstrap.size_starter sized the starter from
        "max_new_tokens": manifest.get("max_new_tokens"),
        "train_rows": fed["rows"],
        "tokens_in_split": fed["tokens_in_split"],
        "mean_tokens_per_row": round(fed["tokens_in_split"] / fed["rows"], 1),
        "rows_truncated_at_max_len": fed["truncated"],
        "max_len": cfg.max_len,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "epochs_seen": round(epochs, 2),
        "train_loop_s": loop_s,
        "bootstrap_total_s_manifest": manifest.get("seconds"),
        "final_loss": manifest.get("final_loss"),
        "first_loss": losses[0]["loss"],
        "tokens_fed": fed["tokens_fed"],
        "padded_tokens_fed": fed["padded_fed"],
        "tokens_per_s_replayed": round(fed["tokens_fed"] / loop_s),
        "tokens_per_s_split_x_epochs": round(fed["tokens_in_split"] * epochs / loop_s),
        "padded_tokens_per_s": round(fed["padded_fed"] / loop_s),
        "s_per_step": round(loop_s / cfg.steps, 3),
    }


def replay_tokens(tokenizer: Any, chats: list, cfg: Any, ignore: int, encode: Any) -> dict[str, int]:
    """Mirror tuning.train.train's row filter and batch picking; count real and padded tokens."""
    full = [encode(tokenizer, chat, 10**9)[0] for chat in chats]
    rows = [encode(tokenizer, chat, cfg.max_len) for chat in chats]
    rows = [r for r in rows if any(label != ignore for label in r[1])]
    from tuning.train import epoch_order

    rng = random.Random(cfg.seed)
    order: list[int] = []
    fed = padded = 0
    for _ in range(cfg.steps):
        for _ in range(cfg.grad_accum):
            if len(order) < cfg.batch_size:
                order += epoch_order(rng, [len(ids) for ids, _ in rows], cfg)
            picked, order = order[: cfg.batch_size], order[cfg.batch_size :]
            lengths = [len(rows[i][0]) for i in picked]
            fed += sum(lengths)
            padded += max(lengths) * len(lengths)
    return {
        "rows": len(rows),
        "tokens_in_split": sum(len(r[0]) for r in rows),
        "tokens_fed": fed,
        "padded_fed": padded,
        "truncated": sum(len(ids) > cfg.max_len for ids in full),
    }


# --- Qwen -------------------------------------------------------------------------------------


def bench_qwen(work: Path, steps: int, max_rss_gb: float, reuse_tune: bool = False) -> dict[str, Any]:
    if not GET_QWEN.exists():
        return {"skipped": f"{GET_QWEN} not found (../shared absent): Qwen part skipped"}
    env = base_env(work / "var-qwen")
    began = time.perf_counter()
    got = subprocess.run([str(GET_QWEN)], capture_output=True, text=True, timeout=1800)
    fetch_s = time.perf_counter() - began
    if got.returncode != 0:
        return {"skipped": f"get-pretrained-qwen failed: {got.stderr[-1000:]}"}
    gguf = got.stdout.strip().splitlines()[-1]
    result: dict[str, Any] = {
        "gguf": gguf,
        "gguf_mb": round(Path(gguf).stat().st_size / 2**20),
        "get_pretrained_qwen_s": round(fetch_s, 1),
    }
    tuned = work / "qwen-tuned"
    if reuse_tune and (tuned / "hf" / "config.json").exists():
        stages = [{"stage": "qwen-tune", "reused": str(tuned), "rc": 0, "wall_s": None, "peak_rss_gb": None}]
    else:
        shutil.rmtree(tuned, ignore_errors=True)
        stages = [
            run_stage("qwen-tune", worker("qwen-tune", gguf, str(tuned), str(steps)), env, work, 2400, max_rss_gb)
        ]
    for precision in ("fp32", "int4"):  # the builds the bot can serve (onnxruntime-genai's builder)
        if stages[0]["rc"] != 0:
            break
        folder = work / f"qwen-onnx-{precision}"
        shutil.rmtree(folder, ignore_errors=True)
        export = worker("qwen-export", str(tuned / "hf"), str(folder), precision)
        stages.append(run_stage(f"qwen-export-{precision}", export, env, work, 2400, max_rss_gb))
        if stages[-1]["rc"] == 0:
            generate = worker("qwen-generate", str(folder))
            stages.append(run_stage(f"qwen-generate-{precision}", generate, env, work, 1200, max_rss_gb))
    result["stages"] = stages
    return result


def _peak_self_gb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def worker_qwen_tune(gguf: str, out: Path, steps: int) -> dict[str, Any]:
    import torch

    import tuning.train as T
    from bot.config import BotSettings
    from bot.models.chat import with_system
    from tuning import dataset
    from tuning.config import preset

    timings: dict[str, Any] = {}
    load_base, train = T.load_base, T.train

    def timed_load(base: Any) -> Any:
        t = time.perf_counter()
        tokenizer, model = load_base(base)
        timings["load_base_s"] = round(time.perf_counter() - t, 2)
        timings["parameters"] = model.num_parameters()
        timings["dtype"] = str(next(model.parameters()).dtype)
        return tokenizer, model

    def timed_train(model: Any, tokenizer: Any, chats: list, cfg: Any, **kw: Any) -> list[float]:
        timings["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        t = time.perf_counter()
        losses = train(model, tokenizer, chats, cfg, **kw)
        timings["train_call_s"] = round(time.perf_counter() - t, 2)
        timings["fed"] = replay_tokens(tokenizer, chats, cfg, T.IGNORE, T.encode)
        return losses

    T.load_base, T.train = timed_load, timed_train  # instrumentation only: fine_tune looks them up here
    system = BotSettings(_env_file=None).system_prompt
    splits, _ = dataset.build(None, [], include_sample=True)
    chats = [with_system(system, r["messages"]) for r in splits["train"]]
    cfg = preset("pretrained", steps=steps, batch_size=4, max_len=128, log_every=1)
    began = time.perf_counter()
    losses = T.fine_tune(gguf, chats, out, cfg)
    total = time.perf_counter() - began
    log = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    ends = [r["s"] for r in log]
    step_s = [round(b - a, 2) for a, b in zip([0.0, *ends[:-1]], ends, strict=True)]
    loop_s = log[-1]["s"]
    fed = timings.pop("fed")
    return timings | {
        "torch_threads": torch.get_num_threads(),
        "train_rows": fed["rows"],
        "steps": steps,
        "batch_size": cfg.batch_size,
        "max_len": cfg.max_len,
        "lr": cfg.lr,
        "losses": [round(x, 4) for x in losses],
        "step_s": step_s,
        "train_loop_s": loop_s,
        "s_per_step": round(loop_s / steps, 2),
        "s_per_step_after_first": round(statistics.fmean(step_s[1:]), 2) if len(step_s) > 1 else None,
        "tokens_fed": fed["tokens_fed"],
        "padded_tokens_fed": fed["padded_fed"],
        "tokens_per_s": round(fed["tokens_fed"] / loop_s, 1),
        "padded_tokens_per_s": round(fed["padded_fed"] / loop_s, 1),
        "merge_and_save_s": round(total - timings["load_base_s"] - timings["train_call_s"], 2),
        "fine_tune_total_s": round(total, 2),
        "hf_folder_mb": _mb(out / "hf"),
        "peak_rss_self_gb": _peak_self_gb(),
    }


def worker_qwen_export(model_dir: Path, out: Path, precision: str) -> dict[str, Any]:
    from bot.models.export import export_onnx

    t = time.perf_counter()
    export_onnx(model_dir, out, precision)
    return {
        "export_s": round(time.perf_counter() - t, 2),
        "onnx_mb": _mb(out),
        "files": sorted(p.name for p in out.iterdir()),
        "peak_rss_self_gb": _peak_self_gb(),
    }


def worker_qwen_generate(onnx_dir: Path) -> dict[str, Any]:
    from bot.config import BotSettings
    from bot.models.chat import with_system
    from bot.models.runtime import ChatModel, GenerationSettings

    t = time.perf_counter()
    model = ChatModel(onnx_dir.name, onnx_dir, GenerationSettings(max_new_tokens=64))
    load_s = time.perf_counter() - t
    messages = with_system(BotSettings(_env_file=None).system_prompt, [{"role": "user", "content": QUESTION}])
    runs = []
    answer = ""
    for _ in range(3):  # the bot's own answer (stops at <|im_end|>, at most 64 tokens); the first run warms up
        t = time.perf_counter()
        answer = model.generate(messages)
        seconds = time.perf_counter() - t
        tokens = len(model.tokenizer(answer, add_special_tokens=False)["input_ids"])
        runs.append({"s": round(seconds, 2), "new_tokens": tokens, "tokens_per_s": round(tokens / seconds, 2)})
    return {
        "load_s": round(load_s, 2),
        "prompt_tokens": len(model.prompt_ids(messages)),
        "runs": runs,
        "tokens_per_s": round(statistics.fmean(r["tokens_per_s"] for r in runs[1:]), 2),
        "answer": answer,
        "has_cjk": any("\u3400" <= ch <= "\u9fff" for ch in answer),
        "peak_rss_self_gb": _peak_self_gb(),
    }


def _mb(folder: Path) -> int:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20)


# --- Qwen2-7B on a 24 GB GPU: an estimate, not a measurement -----------------------------------


def qwen2_7b_estimate(tokens_per_example: float = 93.0) -> dict[str, Any]:
    """What `tuning run --base Qwen/Qwen2-7B` would need (LoRA r=16 all-linear, bf16, checkpointing).
    tokens_per_example: padded Qwen-tokenizer tokens per sample-data row (measured on the 0.5B run: 1116/12)."""
    from tuning.config import MONTHLY

    layers, hidden, kv, ffn, vocab, params = 28, 3584, 512, 18944, 152064, 7.62e9
    per_layer = 16 * ((hidden + hidden) * 2 + (hidden + kv) * 2 + (hidden + ffn) * 3)  # q,o  k,v  gate,up,down
    lora = per_layer * layers
    batch, seq = MONTHLY.batch_size, MONTHLY.max_len
    tokens = batch * seq
    gb = 1e9
    mem = {
        "weights_bf16_gb": params * 2 / gb,
        "weights_fp32_as_load_base_loads_them_gb": params * 4 / gb,
        "lora_params": lora,
        "lora_fp32_weights_grads_adam_gb": lora * 16 / gb,
        "checkpointed_hidden_states_gb": layers * tokens * hidden * 2 / gb,
        "one_layer_recompute_gb": tokens * (hidden * 20 + ffn * 4) * 2 / gb,
        "logits_bf16_plus_fp32_loss_gb": tokens * vocab * (2 + 4 + 4) / gb,  # logits, fp32 upcast, its grad
    }
    flops_per_token = 6 * params  # fwd 2N + bwd (activation grads) 2N + checkpoint recompute 2N
    cards = {
        "RTX 4090 (82.6 TFLOPS bf16 dense, fp32 accumulate)": 82.6e12,
        "L4 (121 TFLOPS bf16 dense)": 121e12,
        "A10G (~70 TFLOPS bf16 dense)": 70e12,
    }
    speed = {
        name: {f"mfu_{int(m * 100)}pct_tokens_per_s": round(peak * m / flops_per_token) for m in (0.25, 0.40)}
        for name, peak in cards.items()
    }
    return {
        "memory": {k: round(v, 2) if isinstance(v, float) else v for k, v in mem.items()},
        "flops_per_token": flops_per_token,
        "tokens_per_s": speed,
        "tokens_per_incremental_run": MONTHLY.steps * batch * tokens_per_example,
    }


# --- report -----------------------------------------------------------------------------------


def summary(result: dict[str, Any]) -> str:
    lines = []
    b = result.get("bitext", {})
    if "skipped" in b:
        lines.append(f"Bitext: {b['skipped']}")
    elif b:
        lines.append(f"Bitext rows per split: {b.get('rows')}")
        m = b.get("metrics") or {}
        if m:
            lines.append("| accuracy | BLEU-4 | ROUGE-L | p50 s | p99 s | bar BLEU-4 |\n|---|---|---|---|---|---|")
            lines.append(
                f"| {m['accuracy']:.3f} | {m['bleu4']:.4f} | {m['rouge_l']:.3f} | {m['latency_p50_s']:.3f} "
                f"| {m['latency_p99_s']:.3f} | {ORIGIN_BLEU_BAR} |"
            )
        for s in b.get("stages", []):
            lines.append(f"- {s['stage']}: {s['wall_s']} s wall, peak RSS {s['peak_rss_gb']} GB, rc {s['rc']}")
        if b.get("training"):
            lines.append("starter training: " + json.dumps(b["training"]))
    q = result.get("qwen", {})
    if "skipped" in q:
        lines.append(f"Qwen: {q['skipped']}")
    for s in q.get("stages", []):
        lines.append(
            f"- {s['stage']}: {s['wall_s']} s wall, peak RSS {s['peak_rss_gb']} GB, rc {s['rc']} "
            f"{s.get('killed', '')}\n  {json.dumps(s.get('data'), ensure_ascii=False)}"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skip-qwen", action="store_true")
    p.add_argument("--skip-bitext", action="store_true")
    p.add_argument("--eval-limit", type=int, default=100)
    p.add_argument("--qwen-steps", type=int, default=3)
    p.add_argument("--max-rss-gb", type=float, default=18.0, help="kill a stage whose process tree passes this")
    p.add_argument("--json", type=Path, help="write the full results here")
    p.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp dir, removed)")
    p.add_argument(
        "--reuse-tune", action="store_true", help="with --keep: reuse the LoRA-tuned model an earlier run left"
    )
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))  # run as a script: the project's packages
    if args.worker:
        kind, *rest = args.worker
        fn = {
            "starter-tokens": lambda a, b: worker_starter_tokens(Path(a), Path(b)),
            "qwen-tune": lambda g, o, s: worker_qwen_tune(g, Path(o), int(s)),
            "qwen-export": lambda m, o, p: worker_qwen_export(Path(m), Path(o), p),
            "qwen-generate": lambda d: worker_qwen_generate(Path(d)),
        }[kind]
        print(MARK + json.dumps(fn(*rest), ensure_ascii=False), flush=True)
        return 0
    work = args.keep or Path(tempfile.mkdtemp(prefix="tuning-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    try:
        if not args.skip_bitext:
            result["bitext"] = bench_bitext(work, args.eval_limit, args.max_rss_gb)
        if not args.skip_qwen:
            result["qwen"] = bench_qwen(work, args.qwen_steps, args.max_rss_gb, args.reuse_tune)
        result["qwen2_7b_24gb_estimate"] = qwen2_7b_estimate()
    finally:
        if args.json:
            args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(summary(result))
    failed = [s["stage"] for part in ("bitext", "qwen") for s in result.get(part, {}).get("stages", []) if s["rc"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
