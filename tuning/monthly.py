"""The monthly job: dataset -> train -> export -> evaluate -> register -> promote (or A/B).

Both models answer the same held-out rows (tuning/split.py): the eval set kept for the data version
(less any row whose question the candidate or production trained on, as a rated chat), or an `--eval`
file, refused if it asks anything they trained on; and the taught view, the rated chats held out.

The preset follows the base (`choose_preset`) unless one is given, and the steps the data's size
(TuneConfig.sized). Every `--data` file a version trained on is in its manifest (`replay`: path and
SHA-256) and trained on again by every later tune of its line, refused when missing or changed
(dataset.replayed).

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
from bot.models.export import builds, export_onnx
from bot.models.registry import HF_DIR, ONNX_DIR, Registry
from bot.models.runtime import ChatModel, GenerationSettings
from bot.store import Store, store_location
from tuning import dataset, split
from tuning.config import preset
from tuning.evaluate import Evaluation, Row, evaluate_views, report
from tuning.formats import read_chats
from tuning.gate import Gate, write_report
from tuning.train import fine_tune, require_base

log = logging.getLogger(__name__)


DATASET_DIR = "dataset"  # in the version folder: the splits it was tuned and scored on


class NothingToDo(Exception):
    pass


@dataclass
class RunOptions:
    preset: str | None = None  # None: chosen from the base (`choose_preset`)
    overrides: dict[str, Any] = field(default_factory=dict)  # TuneConfig fields that replace the preset's
    base: str | None = None  # None: the current production version
    extra_files: list[Path] = field(default_factory=list)
    forget_files: list[Path] = field(default_factory=list)  # recorded files the line stops replaying
    eval_file: Path | None = None  # None: the eval set kept for the data version
    ab_share: float | None = None
    force: bool = False
    database_url: str = ""  # BOT_DATABASE_URL; empty: the store is the SQLite file in the data directory
    redis_url: str = ""  # BOT_REDIS_URL; set: the workers hear of a promotion or A/B start at once


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


def choose_preset(registry: Registry, version: str | None) -> tuple[str, str]:
    """The preset for a tune of `version` (None: a base with no manifest, a hub id, folder or .gguf), and why.
    A version's line is it and the versions it was tuned from; its first version says how it began."""
    if version is None:
        return "pretrained", "a first tune of a pretrained base"
    first = registry.line(version)[-1]
    began = registry.manifest(first).get("tuned_from")
    if began is None:  # only the starter (tuning/bootstrap.py) was tuned from nothing
        return "monthly", f"{version}'s line began from the starter, {first}"
    return "pretrained-monthly", f"{version}'s line began from the pretrained {began}"


def weighted_chats(train: list[dict[str, Any]], system_prompt: str, chat_weight: int) -> list[Chat]:
    """What a tune trains on: the train split's chats behind the system prompt, each rated chat (they are
    few) repeated `chat_weight` times."""
    return [
        with_system(system_prompt, r["messages"])
        for r in train
        for _ in range(chat_weight if r["source"] == "chats" else 1)
    ]


def run(data_dir: Path, system_prompt: str, options: RunOptions) -> dict[str, Any]:
    with run_lock(data_dir):
        return _run(data_dir, system_prompt, options)


def _run(data_dir: Path, system_prompt: str, options: RunOptions) -> dict[str, Any]:
    registry = Registry(data_dir, options.redis_url)
    state = registry.state()
    if options.base is None and not state.current:
        raise NothingToDo("no production model yet: run `python -m tuning bootstrap` or pass --base")
    if options.base:
        require_base(options.base)
    timings: dict[str, float] = {}
    began = time.perf_counter()

    tuned_from = None if options.base else state.current  # a version, or None: a base with no manifest
    parent = registry.manifest(state.current) if state.current else {}
    recorded = registry.manifest(tuned_from).get("replay", []) if tuned_from else []
    files = dataset.replayed(recorded, options.extra_files, options.forget_files, str(tuned_from))
    store = store_location(data_dir, options.database_url)
    splits, card = dataset.build(store, files, registry_root=registry.root)
    rated = [r for r in splits["train"] if r["source"] == "chats"]
    new_hash = chats_hash(splits["train"])
    if not options.force and (not rated or parent.get("chats_hash") == new_hash):
        raise NothingToDo(
            "no new rated chats since the current version: nothing to tune "
            "(agents rate answers with reactions or /feedback; --force tunes anyway)"
        )
    name, why = (options.preset, "given") if options.preset else choose_preset(registry, tuned_from)
    log.info("preset %s (%s)", name, why)
    cfg = preset(name, **options.overrides)
    gate = Gate.from_config(cfg)
    views, eval_set = _eval_views(registry, state.current, splits, card, options.eval_file, cfg.eval_limit)
    # before training: too few rows and the gate would not decide
    gate.require_rows(sum(len(chats) for view, chats in views.items() if view != split.TAUGHT))
    timings["dataset_s"] = time.perf_counter() - began

    version, scratch = registry.start_version()
    data_hashes = dataset.write(splits, card, scratch / DATASET_DIR)
    base = options.base or str(registry.hf_dir(registry.resolve("current")))
    chats = weighted_chats(splits["train"], system_prompt, cfg.chat_weight)
    cfg = cfg.sized(len(chats))
    log.info("%s: tuning %s on %d examples (%d rated chats) with %s", version, base, len(chats), len(rated), cfg.method)
    t = time.perf_counter()
    losses = fine_tune(base, chats, scratch, cfg)
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    export_onnx(scratch / HF_DIR, scratch / ONNX_DIR, cfg.precision)
    timings["export_s"] = time.perf_counter() - t

    t = time.perf_counter()
    candidate, metrics_report = _score(version, scratch / ONNX_DIR, views, system_prompt)
    production, production_report = None, None
    if state.current:
        production, production_report = _score(state.current, registry.onnx_dir(state.current), views, system_prompt)
    timings["evaluate_s"] = time.perf_counter() - t
    frozen, taught = _gate_rows(candidate)
    production_frozen, production_taught = _gate_rows(production) if production else (None, None)
    # the frozen views' rows together, and the taught view's apart (tuning/gate.py)
    decision = gate.decide(frozen, production_frozen, taught, production_taught)
    write_report(scratch, decision, frozen, production_frozen, taught, production_taught)  # `replay` decides again

    registry.register(
        version,
        scratch,
        {
            "parent": state.current,
            "base_model": str(options.base or parent.get("base_model", base)),
            "tuned_from": options.base or state.current,  # what the adapter applies to: --base or a version
            "data_hashes": {f"{DATASET_DIR}/train.jsonl": data_hashes["train.jsonl"]},  # what it trained on
            "replay": [dataset.file_record(p) for p in files],  # later tunes of its line train on these again
            "eval_set": eval_set,
            "chats_hash": new_hash,
            "data_card": card,
            "system_prompt": system_prompt,
            "config": asdict(cfg),
            "builds": builds(scratch / ONNX_DIR),
            "metrics": metrics_report,
            "production_metrics": production_report,
            "gate": decision,
            "final_loss": losses[-1],
            "timings": timings,
        },
    )
    reasons = list(decision["reasons"])
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
    asyncio.run(audit(store, cli_actor(), "tuning_run", target=f"model:{version}", result=outcome))
    return {
        "version": version,
        "preset": f"{name} ({why})",
        "outcome": outcome,
        "promoted": not reasons and not options.ab_share,
        "gate_passed": decision["passed"],
        "refused": reasons,
        "gate": decision,
        "metrics": metrics_report,
        "production_metrics": production_report,
        "data": card,
        "timings": timings,
    }


def _eval_views(
    registry: Registry,
    production: str | None,
    splits: dict[str, list[dict[str, Any]]],
    card: dict[str, Any],
    eval_file: Path | None,
    limit: int | None,
) -> tuple[dict[str, list[Chat]], dict[str, Any]]:
    """The rows both models answer, by view, and what the manifest keeps of where they came from. The
    taught view is scored beside the kept eval set or an `--eval` file."""
    trained = split.trained_questions(registry, production)  # the candidate's own: already out of the eval split
    rows = [r for r in splits["eval"] if split.question(r["messages"]) not in trained]
    taught = [r["messages"] for r in rows if r["view"] == split.TAUGHT][: limit or None]
    views = {split.TAUGHT: taught} if taught else {}
    if eval_file is not None:
        chats = read_chats(eval_file)
        train_questions = set().union(*(split.asked(r["messages"]) for r in splits["train"]))
        split.require_unseen(chats, trained | train_questions, "the candidate or production")
        digest = hashlib.sha256(eval_file.read_bytes()).hexdigest()
        kept = {"file": None, "source": str(eval_file), "sha256": digest}
        return {eval_file.name: chats[: limit or None]} | views, kept | {"taught": len(taught)}
    frozen = [r for r in rows if r["view"] != split.TAUGHT]
    skipped = card["eval_asked_in_training"] + len(splits["eval"]) - len(rows)
    kept = card["eval_set"] | {"asked_in_training": skipped, "taught": len(taught)}
    return split.by_view(frozen[: limit or None]) | views, kept


def _score(
    version: str, onnx_dir: Path, views: dict[str, list[Chat]], system_prompt: str
) -> tuple[dict[str, Evaluation], dict[str, Any]]:
    """A model's evaluation of each view, and the report a manifest keeps (metrics of all views' rows
    together, and of each)."""
    evaluation, by_view = evaluate_views(ChatModel(version, onnx_dir, GenerationSettings()), views, system_prompt)
    return by_view, report(version, evaluation, by_view)


def _gate_rows(by_view: dict[str, Evaluation]) -> tuple[list[Row], list[Row] | None]:
    """What the gate judges: the frozen views' rows together, and the taught view's (None: no such view)."""
    frozen = [row for view, part in by_view.items() if view != split.TAUGHT for row in part.rows]
    taught = by_view.get(split.TAUGHT)
    return frozen, taught.rows if taught else None


def kept_views(registry: Registry, version: str) -> dict[str, list[Chat]]:
    """The rows `tuning eval` scores a registered version on: its kept eval set and the taught rows it was
    scored on (in its dataset folder), less any row it or its line trained on."""
    kept = registry.manifest(version).get("eval_set", {}).get("file")
    if not kept:
        raise ValueError(f"{version} records no kept eval set: give --data")
    rows = list(split.load(registry.root, kept).rows)
    taught_file = registry.path(version) / DATASET_DIR / "eval.jsonl"
    if taught_file.exists():
        rows += [r for r in dataset.load_split(taught_file.parent, "eval") if r["view"] == split.TAUGHT]
    trained = split.trained_questions(registry, version)
    return split.by_view([r for r in rows if split.question(r["messages"]) not in trained])


async def audit(location: Path | str, actor: str, action: str, target: str | None = None, **detail: Any) -> None:
    """Append to the audit log of the store at `location` (see `bot.store.store_location`)."""
    store = await Store.open(location)
    try:
        await store.audit(actor, action, target=target, **detail)
    finally:
        await store.close()
