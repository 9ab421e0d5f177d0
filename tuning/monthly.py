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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bot.audit import cli_actor
from bot.models.chat import Chat, with_system
from bot.models.export import export_onnx
from bot.models.registry import HF_DIR, ONNX_DIR, Registry
from bot.models.runtime import ChatModel, GenerationSettings
from bot.store import Store, database_path
from tuning import dataset
from tuning.config import MONTHLY, TuneConfig
from tuning.evaluate import evaluate, report
from tuning.gate import Gate, Metrics
from tuning.train import fine_tune, require_base

log = logging.getLogger(__name__)


class NothingToDo(Exception):
    pass


class NoEvalRows(ValueError):
    """No held-out rows to score on: evaluating on training rows would only measure memory."""


@dataclass
class RunOptions:
    config: TuneConfig = MONTHLY  # every tuning knob
    base: str | None = None  # None: the current production version
    extra_files: list[Path] = field(default_factory=list)
    ab_share: float | None = None
    force: bool = False


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

    splits, card = dataset.build(database_path(data_dir), options.extra_files)
    rated = [r for r in splits["train"] if r["source"] == "chats"]
    parent = registry.manifest(state.current) if state.current else {}
    new_hash = chats_hash(splits["train"])
    if not options.force and (not rated or parent.get("chats_hash") == new_hash):
        raise NothingToDo(
            "no new rated chats since the current version: nothing to tune "
            "(agents rate answers with reactions or /feedback; --force tunes anyway)"
        )
    if not splits["eval"]:
        raise NoEvalRows(
            "the eval split is empty: add data (--data) so rows can be held out; not scoring on training rows"
        )
    timings["dataset_s"] = time.perf_counter() - began

    version, scratch = registry.start_version()
    data_hash = dataset.write(splits, card, scratch / "dataset")
    base = options.base or str(registry.hf_dir(registry.resolve("current")))
    cfg = options.config
    chats = [
        with_system(system_prompt, r["messages"])
        for r in splits["train"]
        for _ in range(cfg.chat_weight if r["source"] == "chats" else 1)
    ]
    log.info("%s: tuning %s on %d examples (%d rated chats) with %s", version, base, len(chats), len(rated), cfg.method)
    t = time.perf_counter()
    losses = fine_tune(base, chats, scratch, cfg)
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    export_onnx(scratch / HF_DIR, scratch / ONNX_DIR, cfg.precision)
    timings["export_s"] = time.perf_counter() - t

    t = time.perf_counter()
    eval_chats = [r["messages"] for r in splits["eval"]]
    metrics, metrics_report = _score(version, scratch / ONNX_DIR, eval_chats, system_prompt, cfg.eval_limit)
    production, production_report = None, None
    if state.current:
        production, production_report = _score(
            state.current, registry.onnx_dir(state.current), eval_chats, system_prompt, cfg.eval_limit
        )
    timings["evaluate_s"] = time.perf_counter() - t

    registry.register(
        version,
        scratch,
        {
            "parent": state.current,
            "base_model": str(options.base or parent.get("base_model", base)),
            "data_hash": data_hash,
            "chats_hash": new_hash,
            "data_card": card,
            "system_prompt": system_prompt,
            "config": asdict(cfg),
            "metrics": metrics_report,
            "production_metrics": production_report,
            "final_loss": losses[-1],
            "timings": timings,
        },
    )
    gate = Gate.from_config(cfg).verdict(metrics, production)
    reasons = list(gate)
    now = registry.state().current
    if now != state.current:  # an operator promoted or rolled back while this run trained: theirs stands
        reasons.append(f"production changed from {state.current} to {now} during the run")
    if reasons:  # registered, not served: `tuning ab` can still try it on a share of users
        if not registry.state().ab_share:  # never replaces a candidate an A/B test is serving
            registry.set_candidate(version, 0.0)
        outcome = f"kept {version} as candidate, not promoted: " + "; ".join(reasons)
    elif options.ab_share:
        registry.set_candidate(version, options.ab_share)
        outcome = f"A/B test: {options.ab_share:.0%} of users get {version}"
    else:
        registry.promote(version)
        outcome = f"promoted {version} to production"
    asyncio.run(audit(data_dir, cli_actor(), "tuning_run", target=f"model:{version}", result=outcome))
    return {
        "version": version,
        "outcome": outcome,
        "promoted": not reasons and not options.ab_share,
        "gate_passed": not gate,
        "refused": reasons,
        "metrics": metrics_report,
        "production_metrics": production_report,
        "data": card,
        "timings": timings,
    }


def _score(
    version: str, onnx_dir: Path, chats: list[Chat], system_prompt: str, limit: int | None
) -> tuple[Metrics, dict[str, Any]]:
    """A model's metrics, and the report (metrics and samples) a manifest keeps."""
    metrics, samples = evaluate(ChatModel(version, onnx_dir, GenerationSettings()), chats, system_prompt, limit)
    return metrics, report(version, metrics, samples)


async def audit(data_dir: Path, actor: str, action: str, target: str | None = None, **detail: Any) -> None:
    store = await Store.open(database_path(data_dir))
    try:
        await store.audit(actor, action, target=target, **detail)
    finally:
        await store.close()
