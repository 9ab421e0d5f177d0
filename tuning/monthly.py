"""The monthly job: dataset -> train -> export -> evaluate -> register -> promote (or A/B).

Safe to run twice: a lock keeps two runs apart, a run with no new rated chats stops early, and a
version is registered only when complete, so a killed run leaves production serving as it was.
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from bot.model import ChatModel, GenerationSettings
from bot.store import Store
from tuning import dataset, export
from tuning.evaluate import evaluate
from tuning.registry import Registry
from tuning.train import LoraSettings, TrainConfig, fine_tune, require_base

log = logging.getLogger(__name__)
# Incremental tunes continue a trained model: fewer steps and a lower learning rate than the first.
INCREMENTAL = TrainConfig(steps=300, batch_size=16, lr=2e-3, warmup=10, max_len=320)


class NothingToDo(Exception):
    pass


@dataclass
class Gate:
    """How much worse than production a candidate may be and still be promoted."""
    max_accuracy_drop: float = 0.02
    max_bleu_drop: float = 0.02
    max_p99_s: float = 1.5

    def verdict(self, candidate: dict[str, Any], current: dict[str, Any] | None) -> list[str]:
        reasons = []
        if candidate["latency_p99_s"] > self.max_p99_s:
            reasons.append(f"P99 latency {candidate['latency_p99_s']:.3f}s is over {self.max_p99_s}s")
        if current:
            if candidate["accuracy"] < current["accuracy"] - self.max_accuracy_drop:
                reasons.append(f"accuracy {candidate['accuracy']:.3f} < production {current['accuracy']:.3f} - {self.max_accuracy_drop}")
            if candidate["bleu4"] < current["bleu4"] - self.max_bleu_drop:
                reasons.append(f"BLEU-4 {candidate['bleu4']:.3f} < production {current['bleu4']:.3f} - {self.max_bleu_drop}")
        return reasons


@dataclass
class RunOptions:
    base: str | None = None  # None: the current production version
    extra_files: list[Path] = field(default_factory=list)
    method: str = "lora"
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**INCREMENTAL.__dict__))
    chat_weight: int = 8  # rated chats are few: show each this many times per pass over the data
    quantize: str | None = None
    ab_share: float | None = None
    gate: Gate = field(default_factory=Gate)
    force: bool = False
    eval_limit: int | None = 200


@contextmanager
def run_lock(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "tuning.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NothingToDo("another tuning run holds the lock; try again when it has finished") from None
        yield  # the lock goes with the process, also when it is killed


def chats_hash(rows: list[dict[str, Any]]) -> str:
    text = json.dumps([r["messages"] for r in rows if r["source"] == "chats"], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def run(data_dir: Path, system_prompt: str, options: RunOptions) -> dict[str, Any]:
    with run_lock(data_dir):
        return _run(data_dir, system_prompt, options)


def _run(data_dir: Path, system_prompt: str, options: RunOptions) -> dict[str, Any]:
    registry = Registry(data_dir)
    state = registry.state()
    if options.base is None and not state.current:
        raise NothingToDo("no production model yet: run `python -m tuning bootstrap` or pass --base")
    if options.base:
        require_base(options.base)
    timings: dict[str, float] = {}
    began = time.perf_counter()

    splits, card = dataset.build(data_dir / "bot.sqlite3", options.extra_files)
    rated = [r for r in splits["train"] if r["source"] == "chats"]
    parent = registry.manifest(state.current) if state.current else {}
    new_hash = chats_hash(splits["train"])
    if not options.force and (not rated or parent.get("chats_hash") == new_hash):
        raise NothingToDo("no new rated chats since the current version: nothing to tune "
                          "(agents rate answers with reactions or /feedback; --force tunes anyway)")
    timings["dataset_s"] = time.perf_counter() - began

    version, scratch = registry.start_version()
    data_hash = dataset.write(splits, card, scratch / "dataset")
    base = options.base or str(registry.path(state.current) / "hf")
    chats = [r["messages"] for r in splits["train"] for _ in range(options.chat_weight if r["source"] == "chats" else 1)]
    chats = [[{"role": "system", "content": system_prompt}, *c] for c in chats]
    log.info("%s: tuning %s on %d examples (%d rated chats) with %s", version, base, len(chats), len(rated), options.method)
    t = time.perf_counter()
    losses = fine_tune(base, chats, scratch, options.train, method=options.method, lora=options.lora)
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    onnx_dir = export.export_onnx(scratch / "hf", scratch / "onnx")
    if options.quantize:
        fp32 = scratch / "onnx-fp32"
        onnx_dir.rename(fp32)
        export.quantize(fp32, scratch / "onnx", options.quantize)
        shutil.rmtree(fp32)
    timings["export_s"] = time.perf_counter() - t

    t = time.perf_counter()
    eval_chats = [r["messages"] for r in splits["eval"]] or [r["messages"] for r in splits["train"]]
    candidate = ChatModel(version, scratch / "onnx", GenerationSettings())
    metrics = evaluate(candidate, eval_chats, system_prompt, options.eval_limit)
    production = None
    if state.current:
        current = ChatModel(state.current, registry.path(state.current) / "onnx", GenerationSettings())
        production = evaluate(current, eval_chats, system_prompt, options.eval_limit)
    timings["evaluate_s"] = time.perf_counter() - t

    registry.register(version, scratch, {
        "parent": state.current, "base_model": str(options.base or parent.get("base_model", base)),
        "data_hash": data_hash, "chats_hash": new_hash, "data_card": card, "system_prompt": system_prompt,
        "settings": {"method": options.method, "lora": options.lora.__dict__, "train": options.train.__dict__,
                     "chat_weight": options.chat_weight, "quantize": options.quantize},
        "metrics": metrics, "production_metrics": production, "final_loss": losses[-1], "timings": timings,
    })
    reasons = options.gate.verdict(metrics, production)
    if reasons:
        outcome = "kept as candidate: " + "; ".join(reasons)
    elif options.ab_share:
        registry.set_candidate(version, options.ab_share)
        outcome = f"A/B test: {options.ab_share:.0%} of users get {version}"
    else:
        registry.promote(version)
        outcome = f"promoted {version} to production"
    asyncio.run(audit(data_dir, "tuning", "tuning_run", version=version, outcome=outcome))
    return {"version": version, "outcome": outcome, "promoted": not reasons and not options.ab_share,
            "metrics": metrics, "production_metrics": production, "data": card, "timings": timings}


async def audit(data_dir: Path, actor: str, action: str, **detail: Any) -> None:
    store = await Store.open(data_dir / "bot.sqlite3")
    try:
        await store.audit(actor, action, **detail)
    finally:
        await store.close()
