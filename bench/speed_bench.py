"""Real-size speed: the bot's runtime (the batched ONNX Runtime loop of `bot/models/batching.py` on
onnxruntime-genai's INT4 build) against onnxruntime-genai's own generator on the same build and
llama.cpp on the same Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF, on CPU. Prints markdown tables.

    .venv/bin/python bench/speed_bench.py [--gguf FILE] [--sections build,rows,decode,contention,ttft,agree,bot,concurrency]
                                          [--reps 3] [--bot-questions 100] [--concurrent-questions 64]

Needs the real model (`../shared/tools/get-pretrained-qwen`, run when --gguf is not given), llama.cpp's
binding (`../shared/tools/install-llama-cpp .venv`) and the Bitext questions in `../shared/data/bitext/`.

- build: GGUF -> PyTorch folder (`gguf_to_folder`) -> `export_onnx(..., "int4")` and `"fp32"`, each in a
  child process (wall time; peak RSS of its largest process, from wait4). Built folders are kept in
  `.venv/bench-cache/`, so a rerun skips them (and reports the first build's numbers). Runs always.
- rows: one decoding step's cost by batch size (1-8 answers), on the INT4 build and on its int8 twin,
  at 1 and 2 threads (the evidence for `batching.INT8_FROM_ROWS`).
- decode: one ChatML prompt (bot's system prompt + a Bitext question), greedy, exactly 64 new tokens
  (end tokens ignored by every engine), at 1 and 2 threads, engines alternating run by run, median of
  --reps after one warm-up each. Time to first token is timed apart; decode tok/s counts the 63 tokens
  after it. contention: the same with another process keeping one core busy.
- ttft: time to first token for a ~200-token prompt, same engines, plus the bot's path with its system
  prompt already read (as in the bot after its first answer); median of 5.
- agree: greedy answers (32 new tokens, stop at EOS) to 20 Bitext questions: the bot's path vs
  onnxruntime-genai's generator on the INT4 build, INT4 vs fp32 build, and fp32 build vs PyTorch eager.
- bot: the real bot in-process (`bot.__main__.start`, model = the INT4 build, max_new_tokens 64, answer
  cache and rate limit off), --bot-questions distinct Bitext questions one at a time over POST /chat.
- concurrency: the same bot, --concurrent-questions questions asked by 1, 4 and 8 customers at once
  (each asks again when answered): answers/s, latency p50/p99, and the mean batch per model run.

Every engine gets intra_op_num_threads=N, inter_op_num_threads=1 (llama.cpp: n_threads = n_threads_batch = N).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import gc
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: import the project from the checkout

import onnxruntime_genai as og  # noqa: E402

from bot.config import BotSettings  # noqa: E402
from bot.models import batching  # noqa: E402
from bot.models.batching import Decoder, Request, Search  # noqa: E402
from bot.models.chat import with_system  # noqa: E402
from bot.models.export import INT8_FILE, LAST_POSITION  # noqa: E402

SHARED = ROOT.parent / "shared"
BITEXT = SHARED / "data" / "bitext" / "Bitext_Sample_Customer_Support_Training_Dataset_8b6ca3d.csv"
GET_QWEN = SHARED / "tools" / "get-pretrained-qwen"
CACHE = ROOT / ".venv" / "bench-cache"
NEW_TOKENS = 64
AGREE_TOKENS = 32
AGREE_QUESTIONS = 20
STEP_CACHE = 80  # cache length of the rows in the step-by-batch-size section
LONG_PROMPT_TOKENS = 200
SYSTEM_PROMPT = BotSettings(_env_file=None).system_prompt

# One engine run: (new token ids, seconds to the first token, seconds for the tokens after it).
Run = tuple[list[int], float, float]
Engine = Callable[[list[int], int], Run]


# --- small helpers ------------------------------------------------------------------------------


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def say(text: str = "") -> None:
    print(text, flush=True)


def load(label: str) -> None:
    one, five, _ = os.getloadavg()
    say(f"_load average {label}: {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs_\n")


def table(header: list[str], rows: list[list[str]]) -> None:
    say("| " + " | ".join(header) + " |")
    say("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for row in rows:
        say("| " + " | ".join(row) + " |")
    say()


def p99(values: list[float]) -> float:
    ordered = sorted(values)  # nearest rank
    return ordered[max(0, -(-99 * len(ordered) // 100) - 1)]


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def questions(count: int, seed: int = 0) -> list[str]:
    """`count` distinct Bitext questions without template slots ({{Order Number}}), in a seeded order."""
    with BITEXT.open(newline="", encoding="utf-8") as f:
        found = {row["instruction"].strip() for row in csv.DictReader(f)}
    usable = sorted(q for q in found if q and "{{" not in q)
    random.Random(seed).shuffle(usable)
    return usable[:count]


def prompt_ids(tokenizer: object, question: str) -> list[int]:
    """The bot's prompt for one question: its system prompt, the HF chat template, generation prompt."""
    messages = with_system(SYSTEM_PROMPT, [{"role": "user", "content": question}])
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))  # type: ignore[attr-defined]


# --- builds -------------------------------------------------------------------------------------

# Child programs: argv[1] is the folder to write, then the inputs.
HF_CODE = "import sys; from pathlib import Path; from bot.models.export import gguf_to_folder as f; f(Path(sys.argv[2]), Path(sys.argv[1]))"
ONNX_CODE = "import sys; from pathlib import Path; from bot.models.export import export_onnx as f; f(Path(sys.argv[2]), Path(sys.argv[1]), sys.argv[3])"


def run_child(code: str, *args: str) -> tuple[float, float]:
    """`python -c code args` as a child process: wall seconds and the peak RSS (GiB) of its largest
    process (wait4 reports the child's own peak or a waited-for descendant's, whichever is larger)."""
    began = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise RuntimeError(f"build step failed (exit {child.returncode}): {args}")
    return time.perf_counter() - began, usage.ru_maxrss / 2**20  # ru_maxrss is in KiB


def build(name: str, target: Path, code: str, *args: str) -> dict[str, float | bool]:
    """Build `target` once (into a scratch folder, then renamed); its numbers are kept beside it."""
    record = target.with_name(target.name + ".build.json")
    if target.exists() and record.exists():
        return json.loads(record.read_text()) | {"cached": True}
    scratch = target.with_name(target.name + ".part")
    shutil.rmtree(scratch, ignore_errors=True)
    log(f"[build] {name} -> {target}")
    wall, rss = run_child(code, str(scratch), *args)
    os.replace(scratch, target)
    numbers = {"wall_s": round(wall, 1), "peak_rss_gib": round(rss, 2), "size_mb": round(folder_mb(target))}
    record.write_text(json.dumps(numbers))
    return numbers | {"cached": False}


def section_build(gguf: Path) -> dict[str, Path]:
    say("## Builds\n")
    load("at start")
    home = CACHE / gguf.stem
    home.mkdir(parents=True, exist_ok=True)
    folders = {"hf": home / "hf", "int4": home / "onnx-int4", "fp32": home / "onnx-fp32"}
    rows = []
    steps = [
        ("GGUF -> PyTorch folder (`gguf_to_folder`)", "hf", HF_CODE, str(gguf)),
        (
            "PyTorch -> ONNX INT4 (`export_onnx`: fp32 build, then ORT's quantizer)",
            "int4",
            ONNX_CODE,
            str(folders["hf"]),
            "int4",
        ),
        ("PyTorch -> ONNX fp32 (`export_onnx`)", "fp32", ONNX_CODE, str(folders["hf"]), "fp32"),
    ]
    for label, key, code, *args in steps:
        numbers = build(label, folders[key], code, *args)
        cached = " (built in an earlier run)" if numbers["cached"] else ""
        rows.append(
            [label + cached, f"{numbers['wall_s']:.1f}", f"{numbers['peak_rss_gib']:.2f}", f"{numbers['size_mb']:,.0f}"]
        )
    say(f"Source: `{gguf.name}` ({gguf.stat().st_size / 2**20:,.0f} MB). Folders in `{home.relative_to(ROOT)}/`.\n")
    table(["build step", "wall s", "peak RSS GiB (largest process)", "output MB"], rows)
    load("at end")
    return folders


# --- engines ------------------------------------------------------------------------------------


def og_folder(folder: Path) -> Path:
    """The build as onnxruntime-genai's generator needs it: scoring every position it reads (the bot's
    build scores only the last, `last_logits_only`). Same weights file, hard-linked (ONNX Runtime
    refuses external data that a symbolic link leads out of the model's folder)."""
    import onnx

    target = folder.with_name(folder.name + "-all-logits")
    if not (target / "model.onnx").exists():
        target.mkdir(exist_ok=True)
        for path in folder.iterdir():  # not the int8 twin: onnxruntime-genai knows nothing of it
            if path.name != "model.onnx" and not path.name.startswith(INT8_FILE) and not (target / path.name).exists():
                os.link(path, target / path.name)
        model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
        graph = model.graph
        (last,) = [node for node in graph.node if node.op_type == "Slice" and node.name == LAST_POSITION]
        head = next(node for node in graph.node if last.output[0] in node.input)
        head.input[list(head.input).index(last.output[0])] = last.input[0]
        graph.node.remove(last)
        for name in last.input[1:]:  # the slice's bounds
            graph.initializer.remove(next(t for t in graph.initializer if t.name == name))
        logits = next(output for output in graph.output if output.name == "logits")
        logits.type.tensor_type.shape.dim[1].dim_param = "sequence_length"
        onnx.save(model, str(target / "model.onnx"))
    return target


def og_model(folder: Path, threads: int) -> og.Model:
    """onnxruntime-genai's own generator, threads set as the bot sets them (its defaults run at half speed)."""
    config = og.Config(str(og_folder(folder)))
    options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    return og.Model(config)


def og_run(model: og.Model, ids: list[int], new_tokens: int) -> Run:
    """Greedy, exactly `new_tokens` (min_length = max_length: EOS cannot end it early)."""
    params = og.GeneratorParams(model)
    length = len(ids) + new_tokens
    params.set_search_options(min_length=length, max_length=length, do_sample=False)
    began = time.perf_counter()
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    tokens: list[int] = []
    first = 0.0
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
        if len(tokens) == 1:
            first = time.perf_counter()
    return tokens, first - began, time.perf_counter() - first


def og_greedy(model: og.Model, ids: list[int], new_tokens: int) -> list[int]:
    """onnxruntime-genai's greedy answer: at most `new_tokens`, EOS ends it."""
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    tokens: list[int] = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def our_greedy(decoder: Decoder, ids: list[int], new_tokens: int) -> list[int]:
    """The bot's greedy answer: at most `new_tokens`, EOS ends it (and is not part of it)."""
    request = Request(ids, new_tokens, Search())
    decoder.submit(request)
    request.done.wait()
    return request.tokens


def our_decoder(folder: Path, threads: int, eos: bool = False) -> Decoder:
    """The bot's path (`bot/models/batching.py`); without `eos`, end tokens do not end a run, so it
    gives exactly the tokens asked for."""
    decoder = Decoder(folder, threads, max_batch=8)
    if not eos:
        decoder.eos = set()
    return decoder


def our_run(decoder: Decoder, ids: list[int], new_tokens: int, prefix: int = 0) -> Run:
    """One answer alone, greedy; `prefix`: that many first tokens (the system prompt) read once before."""
    marks: list[float] = []

    def mark(_: list[int]) -> bool:
        marks.append(time.perf_counter())
        return True

    request = Request(ids, new_tokens, Search(), prefix, on_token=mark)
    began = time.perf_counter()
    decoder.submit(request)
    request.done.wait()
    if request.error:
        raise request.error
    return request.tokens, marks[0] - began, marks[-1] - marks[0]


def llama_model(gguf: Path, threads: int) -> object:
    from llama_cpp import Llama

    return Llama(str(gguf), n_ctx=2048, n_threads=threads, n_threads_batch=threads, seed=0, verbose=False)


def llama_run(llm: object, ids: list[int], new_tokens: int) -> Run:
    """Greedy from the same prompt ids; `generate` does not stop at EOS, so exactly `new_tokens`.
    reset() first: otherwise llama-cpp-python reuses the KV cache of the same prompt's last run."""
    llm.reset()  # type: ignore[attr-defined]
    began = time.perf_counter()
    tokens: list[int] = []
    first = 0.0
    sampling = dict(temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    for token in llm.generate(ids, **sampling):  # type: ignore[attr-defined]
        tokens.append(int(token))
        if len(tokens) == 1:
            first = time.perf_counter()
        if len(tokens) == new_tokens:
            break
    return tokens, first - began, time.perf_counter() - first


OURS = "the bot's path: batched ONNX Runtime loop, INT4"


def engines(folders: dict[str, Path], gguf: Path, threads: int, system_tokens: int = 0) -> dict[str, Engine]:
    """The engines compared; with `system_tokens`, also the bot's path with the system prompt already
    read (as it is in the bot after the first answer)."""
    int4, fp32 = our_decoder(folders["int4"], threads), our_decoder(folders["fp32"], threads)
    generator, llama = og_model(folders["int4"], threads), llama_model(gguf, threads)
    runners: dict[str, Engine] = {
        OURS: lambda ids, n: our_run(int4, ids, n),
        "onnxruntime-genai generator, INT4": lambda ids, n: og_run(generator, ids, n),
        "batched ONNX Runtime loop, fp32": lambda ids, n: our_run(fp32, ids, n),
        "llama.cpp Q4_K_M": lambda ids, n: llama_run(llama, ids, n),
    }
    if system_tokens:
        runners[OURS + ", system prompt already read"] = lambda ids, n: our_run(int4, ids, n, system_tokens)
    return runners


BASELINE = "llama.cpp Q4_K_M"


def interleaved(runners: dict[str, Engine], ids: list[int], new_tokens: int, reps: int) -> dict[str, list[Run]]:
    """One warm-up run each, then `reps` rounds; the engines' order rotates every round."""
    names = list(runners)
    for name in names:
        runners[name](ids, new_tokens)
    runs: dict[str, list[Run]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            runs[name].append(runners[name](ids, new_tokens))
    return runs


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# --- sections -----------------------------------------------------------------------------------


def section_decode(
    folders: dict[str, Path], gguf: Path, tokenizer: object, question: str, reps: int, loaded: bool = False
) -> None:
    title = ", another process keeping one core busy" if loaded else ""
    say(f"## Decode speed: greedy, exactly {NEW_TOKENS} new tokens{title}\n")
    load("at start")
    ids = prompt_ids(tokenizer, question)
    say(f"Prompt: the bot's system prompt + {question!r} ({len(ids)} tokens, ChatML from the HF template).\n")
    rows = []
    for threads in (1, 2):
        runners = engines(folders, gguf, threads)
        runs = interleaved(runners, ids, NEW_TOKENS, reps)
        rates = {name: [(len(t) - 1) / rest for t, _, rest in r] for name, r in runs.items()}
        base_rate = statistics.median(rates[BASELINE])
        base_ttft = statistics.median(f for _, f, _ in runs[BASELINE])
        base_tokens = runs[BASELINE][0][0]
        for name, r in runs.items():
            rate, ttft = statistics.median(rates[name]), statistics.median(f for _, f, _ in r)
            rows.append(
                [
                    str(threads),
                    name,
                    str(len(r[0][0])),
                    f"{ttft * 1000:.0f}",
                    f"{rate:.1f}",
                    " / ".join(f"{x:.1f}" for x in rates[name]),
                    f"{rate / base_rate:.2f}x",
                    f"{ttft / base_ttft:.2f}x",
                    str(common_prefix(r[0][0], base_tokens)),
                ]
            )
        del runners
        gc.collect()
    table(
        [
            "threads",
            "engine",
            "new tokens",
            "TTFT ms (median)",
            "decode tok/s (median)",
            "decode tok/s, each run",
            "decode vs llama.cpp",
            "TTFT vs llama.cpp",
            "first tokens equal to llama.cpp's",
        ],
        rows,
    )
    load("at end")


def section_ttft(folders: dict[str, Path], gguf: Path, tokenizer: object, pool: list[str]) -> None:
    say(f"## Time to first token, ~{LONG_PROMPT_TOKENS}-token prompt\n")
    load("at start")
    text = ""
    for question in pool:
        text = f"{text} {question}".strip()
        if len(prompt_ids(tokenizer, text)) >= LONG_PROMPT_TOKENS:
            break
    ids = prompt_ids(tokenizer, text)
    say(
        f"Prompt: the bot's system prompt + several Bitext questions in one message ({len(ids)} tokens). Median of 5.\n"
    )
    rows = []
    system = len(tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM_PROMPT}], tokenize=True))  # type: ignore[attr-defined]
    say(f"The system prompt is its first {system} tokens; the bot reads it once and reuses its cache.\n")
    for threads in (1, 2):
        runners = engines(folders, gguf, threads, system)
        runs = interleaved(runners, ids, 1, 5)
        base = statistics.median(f for _, f, _ in runs[BASELINE])
        for name, r in runs.items():
            ttft = statistics.median(f for _, f, _ in r)
            rows.append(
                [
                    str(threads),
                    name,
                    f"{ttft * 1000:.0f}",
                    f"{len(ids) / ttft:.0f}",
                    " / ".join(f"{f * 1000:.0f}" for _, f, _ in r),
                    f"{ttft / base:.2f}x",
                ]
            )
        del runners
        gc.collect()
    table(["threads", "engine", "TTFT ms (median)", "prompt tok/s", "TTFT ms, each run", "vs llama.cpp"], rows)
    load("at end")


def section_rows(folder: Path) -> None:
    """One decoding step's cost by how many answers it advances, on the INT4 build and on its int8 twin:
    the evidence for `batching.INT8_FROM_ROWS`."""
    import numpy as np

    say("## One step by batch size: INT4 build vs its int8 twin\n")
    load("at start")
    rows = []
    for threads in (1, 2):
        decoder = Decoder(folder, threads, max_batch=8)
        for label, session in (("INT4", decoder.session), ("int8 twin", decoder.int8)):
            cells = []
            for size in range(1, 9):
                batch = batching._Batch(decoder)
                for _ in range(size):
                    request = Request([0] * STEP_CACHE, STEP_CACHE, Search())
                    request.tokens.append(0)
                    empty = np.zeros((1, decoder.kv_heads, STEP_CACHE, decoder.head_size), dtype=np.float32)
                    batch.join(request, [empty] * len(decoder.past_names))
                batch.bind()
                binding, took = batch.bindings[session], []
                binding.bind_cpu_input("input_ids", np.zeros((size, 1), dtype=np.int64))
                binding.bind_cpu_input("attention_mask", np.ones((size, STEP_CACHE + 1), dtype=np.int64))
                for _ in range(12):
                    began = time.perf_counter()
                    session.run_with_iobinding(binding)
                    took.append(time.perf_counter() - began)
                cells.append(statistics.median(took[2:]) * 1000)
            rows.append([str(threads), label, *(f"{ms:.1f}" for ms in cells), f"{cells[-1] / cells[0]:.2f}x"])
        del decoder
        gc.collect()
    table(["threads", "weights", *(f"{n} ms" for n in range(1, 9)), "8 vs 1"], rows)
    say(
        f"A model run reading one new token per row after a {STEP_CACHE}-token cache, median of 10 after 2 "
        f"warm-ups. The bot sends runs of {batching.INT8_FROM_ROWS} rows and more (prompts included) to the twin.\n"
    )
    load("at end")


def strip_eos(tokens: list[int], eos: set[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[:i]
    return tokens


def agreement(reference: list[list[int]], other: list[list[int]]) -> list[str]:
    same = sum(a == b for a, b in zip(reference, other, strict=True))
    prefixes = [common_prefix(a, b) for a, b in zip(reference, other, strict=True)]
    shares = [p / max(len(a), len(b), 1) for p, a, b in zip(prefixes, reference, other, strict=True)]
    firsts = [str(p) if a != b else "=" for p, a, b in zip(prefixes, reference, other, strict=True)]
    return [
        f"{same}/{len(reference)}",
        f"{statistics.mean(shares):.1%}",
        f"{statistics.mean(prefixes):.1f}",
        " ".join(firsts),
    ]


def teacher_forced(folder: Path, prompts: list[list[int]], answers: list[list[int]]) -> tuple[float, float]:
    """The build reading each prompt and its given answer at once: the share of answer tokens that are
    its likeliest next token, and their mean negative log-likelihood."""
    import numpy as np

    decoder = Decoder(og_folder(folder), 2, 1)  # the all-positions copy: a score for every answer token
    nothing = [np.zeros((1, decoder.kv_heads, 0, decoder.head_size), dtype=np.float32)] * len(decoder.past_names)
    hits, losses = 0, []
    for ids, answer in zip(prompts, answers, strict=True):
        logits, _ = decoder._run(ids + answer, nothing)
        scores = logits[0, len(ids) - 1 : len(ids) + len(answer) - 1].astype(np.float64)
        hits += int((scores.argmax(-1) == answer).sum())
        top = scores.max(-1, keepdims=True)
        logprobs = scores - top - np.log(np.exp(scores - top).sum(-1, keepdims=True))
        losses.extend(-logprobs[np.arange(len(answer)), answer])
    return hits / max(len(losses), 1), float(np.mean(losses))


def section_agree(folders: dict[str, Path], tokenizer: object, asked: list[str]) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    say(f"## Greedy agreement: {len(asked)} Bitext questions, up to {AGREE_TOKENS} new tokens\n")
    load("at start")
    eos: set[int] = set()  # the end tokens of both configs (onnxruntime-genai's and transformers')
    for file, key in ((folders["int4"] / "genai_config.json", "model"), (folders["hf"] / "generation_config.json", "")):
        found = json.loads(file.read_text())
        found = found[key]["eos_token_id"] if key else found.get("eos_token_id", [])
        eos |= set(found) if isinstance(found, list) else {found}
    prompts = [prompt_ids(tokenizer, q) for q in asked]
    answers: dict[str, list[list[int]]] = {}
    seconds: dict[str, float] = {}
    for key in ("int4", "fp32"):
        decoder = our_decoder(folders[key], 2, eos=True)
        began = time.perf_counter()
        answers[key] = [our_greedy(decoder, ids, AGREE_TOKENS) for ids in prompts]
        seconds[key] = time.perf_counter() - began
        del decoder
        gc.collect()
    generator = og_model(folders["int4"], 2)
    began = time.perf_counter()
    answers["og-int4"] = [strip_eos(og_greedy(generator, ids, AGREE_TOKENS), eos) for ids in prompts]
    seconds["og-int4"] = time.perf_counter() - began
    del generator
    torch.set_num_threads(2)
    eager = AutoModelForCausalLM.from_pretrained(folders["hf"], dtype=torch.float32).eval()
    began = time.perf_counter()
    answers["torch"] = []
    with torch.inference_mode():
        for ids in prompts:
            inputs = torch.tensor([ids])
            out = eager.generate(
                inputs,
                attention_mask=torch.ones_like(inputs),
                max_new_tokens=AGREE_TOKENS,
                do_sample=False,
                pad_token_id=min(eos),
            )
            answers["torch"].append(strip_eos(out[0, len(ids) :].tolist(), eos))
    seconds["torch"] = time.perf_counter() - began
    del eager
    gc.collect()
    table(
        [
            "pair",
            "identical answers",
            "mean token agreement to first difference",
            "mean equal prefix (tokens)",
            "first difference at (= identical)",
        ],
        [
            [
                "bot's path (INT4, prompts read by the int8 twin) vs onnxruntime-genai generator (INT4)",
                *agreement(answers["og-int4"], answers["int4"]),
            ],
            ["INT4 build (generator) vs fp32 build", *agreement(answers["fp32"], answers["og-int4"])],
            ["bot's path vs fp32 build", *agreement(answers["fp32"], answers["int4"])],
            ["fp32 build vs PyTorch eager", *agreement(answers["torch"], answers["fp32"])],
        ],
    )
    say(
        "Token agreement per question = equal prefix / the longer answer's length. Mean answer length: "
        + ", ".join(f"{k} {statistics.mean(len(a) for a in v):.1f} tokens" for k, v in answers.items())
        + ". Time for the 20 answers (2 threads): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
        + ".\n"
    )
    forced = {key: teacher_forced(folders[key], prompts, answers["fp32"]) for key in ("fp32", "int4")}
    say(
        "Teacher-forced (each build reads the fp32 build's answers; a free-running comparison stops at the "
        f"first difference): INT4's likeliest next token is fp32's on {forced['int4'][0]:.1%} of the "
        f"{sum(map(len, answers['fp32']))} answer tokens; mean negative log-likelihood of those tokens "
        f"{forced['int4'][1]:.3f} for INT4, {forced['fp32'][1]:.3f} for fp32 itself.\n"
    )
    for q, a, b in zip(asked, answers["fp32"], answers["int4"], strict=True):
        if a != b:
            say(f"Example difference, {q!r}:\n- fp32: {tokenizer.decode(a)!r}\n- bot's path: {tokenizer.decode(b)!r}\n")  # type: ignore[attr-defined]
            break
    load("at end")


async def section_bot(folder: Path, tokenizer: object, asked: list[str]) -> None:
    from bot.__main__ import start
    from tests.support import make_settings, post

    say(f"## Through the whole bot: {len(asked) - 1} Bitext questions over HTTP POST /chat\n")
    load("at start")
    latencies: list[float] = []
    counts: list[int] = []
    outcomes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="speed-bench-") as tmp:
        settings = make_settings(
            Path(tmp) / "var", model=str(folder), max_new_tokens=NEW_TOKENS, cache_size=0, user_rate_limit=0
        )
        server = await start(settings, {})
        try:
            for i, question in enumerate(asked):
                body = {"conversation_id": f"bench-{i}", "user_id": f"customer-{i}", "text": question}
                began = time.perf_counter()
                status, reply = await post(server, "/chat", body)
                took = time.perf_counter() - began
                if i == 0:
                    continue  # warm-up, not counted
                outcome = reply.get("outcome", "?") if status == 200 else f"HTTP {status}"
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                latencies.append(took)
                counts.append(len(tokenizer(reply.get("answer", ""), add_special_tokens=False)["input_ids"]))  # type: ignore[operator]
        finally:
            await server.stop()
    rates = [c / t for c, t in zip(counts, latencies, strict=True)]
    table(
        [
            "questions",
            "outcomes",
            "p50 ms",
            "p99 ms",
            "mean ms",
            "answer tokens (mean)",
            f"answers at {NEW_TOKENS} tokens",
            "answer tok/s (all)",
            "answer tok/s (median per answer)",
        ],
        [
            [
                str(len(latencies)),
                ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())),
                f"{statistics.median(latencies) * 1000:.0f}",
                f"{p99(latencies) * 1000:.0f}",
                f"{statistics.mean(latencies) * 1000:.0f}",
                f"{statistics.mean(counts):.1f}",
                str(sum(c >= NEW_TOKENS for c in counts)),
                f"{sum(counts) / sum(latencies):.1f}",
                f"{statistics.median(rates):.1f}",
            ]
        ],
    )
    say(
        f"Model: the INT4 build (`BOT_MODEL` = its folder), model_threads 0 (= {os.cpu_count()}), max_new_tokens "
        f"{NEW_TOKENS}, answer cache and rate limit off; each question in a new conversation, one at a time, the "
        "first one a warm-up not counted. Latency is the whole HTTP round trip; answer tokens are the reply text "
        "re-tokenised (the HF tokenizer), so tok/s includes prefill and the pipeline.\n"
    )
    load("at end")


async def customers(
    server: object, tokenizer: object, asked: list[str], count: int
) -> tuple[list[float], list[int], int]:
    """`count` customers asking `asked` between them over POST /chat, each asking again when answered:
    each answer's latency and tokens, and how many were not answered."""
    from tests.support import post

    todo = list(enumerate(asked))
    latencies: list[float] = []
    answers: list[str] = []
    failed = 0

    async def customer() -> None:
        nonlocal failed
        while todo:
            i, question = todo.pop(0)
            body = {"conversation_id": f"c{count}-{i}", "user_id": f"u{count}-{i}", "text": question}
            began = time.perf_counter()
            status, reply = await post(server, "/chat", body)  # type: ignore[arg-type]
            latencies.append(time.perf_counter() - began)
            failed += status != 200 or reply.get("outcome") != "answered"
            answers.append(reply.get("answer", ""))

    await asyncio.gather(*(customer() for _ in range(count)))
    # Counted after the run: a customer's client does not tokenise, so neither does this one while timed.
    tokens = [len(tokenizer(answer, add_special_tokens=False)["input_ids"]) for answer in answers]  # type: ignore[operator]
    return latencies, tokens, failed


async def section_concurrency(folder: Path, tokenizer: object, asked: list[str], levels: tuple[int, ...]) -> None:
    from prometheus_client import REGISTRY

    from bot.__main__ import start
    from tests.support import make_settings, post

    say(f"## Several customers at once: {len(asked)} Bitext questions through the whole bot, per concurrency\n")
    load("at start")
    rows: list[list[str]] = []
    base_rate = 0.0
    with tempfile.TemporaryDirectory(prefix="speed-bench-") as tmp:
        settings = make_settings(
            Path(tmp) / "var",
            model=str(folder),
            max_new_tokens=NEW_TOKENS,
            cache_size=0,
            user_rate_limit=0,
            model_concurrency=max(levels),
            model_queue=4 * max(levels),
        )
        server = await start(settings, {})
        try:
            await post(server, "/chat", {"conversation_id": "warm", "user_id": "warm", "text": asked[0]})
            for level in levels:
                runs_before = REGISTRY.get_sample_value("bot_model_batch_size_count") or 0.0
                rows_before = REGISTRY.get_sample_value("bot_model_batch_size_sum") or 0.0
                began = time.perf_counter()
                latencies, tokens, failed = await customers(server, tokenizer, asked, level)
                wall = time.perf_counter() - began
                runs = (REGISTRY.get_sample_value("bot_model_batch_size_count") or 0.0) - runs_before
                batch = ((REGISTRY.get_sample_value("bot_model_batch_size_sum") or 0.0) - rows_before) / max(runs, 1)
                rate = len(asked) / wall
                base_rate = base_rate or rate
                rows.append(
                    [
                        str(level),
                        f"{len(asked)} ({failed} not answered)",
                        f"{wall:.1f}",
                        f"{rate:.2f}",
                        f"{rate / base_rate:.2f}x",
                        f"{statistics.median(latencies) * 1000:.0f}",
                        f"{p99(latencies) * 1000:.0f}",
                        f"{statistics.mean(tokens):.1f}",
                        f"{sum(tokens) / wall:.0f}",
                        f"{batch:.1f}",
                    ]
                )
        finally:
            await server.stop()
    table(
        [
            "customers at once",
            "answers",
            "wall s",
            "answers/s",
            "vs one at a time",
            "p50 ms",
            "p99 ms",
            "answer tokens (mean)",
            "answer tok/s",
            "mean batch per model run",
        ],
        rows,
    )
    say(
        f"Each customer sends the next question as soon as the last is answered (a closed loop); the same "
        f"{len(asked)} questions at every level, each in a new conversation. INT4 build, "
        f"BOT_MODEL_CONCURRENCY={max(levels)}, model_threads 0 (= {os.cpu_count()}), max_new_tokens {NEW_TOKENS}, answer "
        "cache and rate limit off. Latency is the whole HTTP round trip as the customer sees it.\n"
    )
    load("at end")


@contextlib.contextmanager
def competing_load() -> Iterator[None]:
    """Another process keeping one core busy, as on a shared machine."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        yield
    finally:
        burner.kill()
        burner.wait()


# --- main ---------------------------------------------------------------------------------------


def machine() -> None:
    import llama_cpp
    import onnxruntime
    import torch
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    say(
        f"_machine: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, onnxruntime-genai "
        f"{og.__version__}, onnxruntime {onnxruntime.__version__}, llama-cpp-python {llama_cpp.__version__}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}_\n"
    )


def find_gguf(given: Path | None) -> Path:
    if given:
        return given
    done = subprocess.run([str(GET_QWEN)], capture_output=True, text=True, check=True)
    return Path(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, help="the GGUF file (default: from ../shared/tools/get-pretrained-qwen)")
    parser.add_argument(
        "--sections",
        default="build,rows,decode,contention,ttft,agree,bot,concurrency",
        help="comma-separated; build always runs",
    )
    parser.add_argument("--reps", type=int, default=3, help="decode runs per engine and thread count")
    parser.add_argument("--bot-questions", type=int, default=100, help="questions sent through the bot")
    parser.add_argument("--concurrent-questions", type=int, default=64, help="questions per concurrency level")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    began = time.perf_counter()

    say("# Real-size speed: the bot's batched ONNX Runtime loop vs onnxruntime-genai and llama.cpp\n")
    machine()
    gguf = find_gguf(args.gguf)
    folders = section_build(gguf)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folders["int4"])
    pool = questions(AGREE_QUESTIONS + args.bot_questions + 1 + 20)
    asked, rest = pool[:AGREE_QUESTIONS], pool[AGREE_QUESTIONS:]

    def contention() -> None:
        with competing_load():
            section_decode(folders, gguf, tokenizer, asked[0], args.reps, loaded=True)

    at_once = rest[1 : args.concurrent_questions + 1]
    steps: list[tuple[str, Callable[[], None]]] = [
        ("rows", lambda: section_rows(folders["int4"])),
        ("decode", lambda: section_decode(folders, gguf, tokenizer, asked[0], args.reps)),
        ("contention", contention),
        ("ttft", lambda: section_ttft(folders, gguf, tokenizer, rest[args.bot_questions + 1 :])),
        ("agree", lambda: section_agree(folders, tokenizer, asked)),
        ("bot", lambda: asyncio.run(section_bot(folders["int4"], tokenizer, rest[: args.bot_questions + 1]))),
        ("concurrency", lambda: asyncio.run(section_concurrency(folders["int4"], tokenizer, at_once, (1, 4, 8)))),
    ]
    for key, step in steps:
        if key in sections:
            started = time.perf_counter()
            step()
            say(f"_section {key}: {time.perf_counter() - started:.0f} s_\n")
    say(f"_total: {time.perf_counter() - began:.0f} s_")


if __name__ == "__main__":
    main()
