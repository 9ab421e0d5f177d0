"""`python -m tuning COMMAND`: the stages of the monthly fine-tune, one by one or all at once (`run`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from bot import admin
from bot.audit import cli_actor
from bot.config import BotSettings, load_settings
from bot.models.chat import with_system
from bot.models.export import PRECISIONS
from bot.models.registry import HF_DIR, Registry, RegistryError, State
from bot.store import Store, open_store, store_location
from tuning.config import PRESETS, TuneConfig, preset
from tuning.formats import DataError

EXPORT_FORMATS = ("onnx", "hf", "lora")


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuning", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bootstrap", help="build the offline starter model from data files and make it current")
    b.add_argument("--data", type=Path, nargs="*", default=None, help="data files (default: data/sample)")

    d = sub.add_parser("dataset", help="rated chats + sample data -> DatasetDict and chat JSONL")
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--data", type=Path, nargs="*", default=[], help="extra data files to mix in")
    d.add_argument("--no-sample", action="store_true", help="leave the shipped sample data out")
    d.add_argument(
        "--exclude-rater",
        action="append",
        default=[],
        metavar="ID",
        help="leave out this rater's ratings and corrections (ids as stored, e.g. telegram:42); repeatable or a,b",
    )

    t = sub.add_parser("train", help="fine-tune a model on a dataset folder (from `dataset`)")
    t.add_argument("--data", type=Path, required=True, help="dataset folder")
    t.add_argument("--base", default="current", help="current, a version, a folder, a hub id or a .gguf file")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    _training_args(t)

    x = sub.add_parser(
        "export",
        help="a version (or merged model folder) -> a folder to serve: onnxruntime-genai build (onnx), "
        "merged Hugging Face model for vLLM (hf) or the version's LoRA adapter alone (lora)",
    )
    source = x.add_mutually_exclusive_group(required=True)
    source.add_argument("--version", help="a registered version, current or candidate")
    source.add_argument("--model", type=Path, help="a merged model folder (--format onnx only)")
    x.add_argument("--format", choices=EXPORT_FORMATS, default="onnx")
    x.add_argument("--out", type=Path, required=True, help="a new (or empty) folder")
    x.add_argument("--precision", choices=PRECISIONS, help="onnx: default int4 for pretrained-size models, else fp32")

    e = sub.add_parser("eval", help="accuracy, BLEU-4, ROUGE-L and latency of a model, per eval view")
    e.add_argument("--model", default="current", help="current, candidate, a version or an ONNX folder")
    e.add_argument(
        "--data", type=Path, help="a data file (default: the version's eval set); refused if the version trained on it"
    )
    e.add_argument("--out", type=Path, help="write the JSON here too")
    e.add_argument("--limit", type=int)

    sub.add_parser("list", help="registered versions")
    pr = sub.add_parser("promote", help="make a version the production version")
    pr.add_argument("version")
    sub.add_parser("rollback", help="go back to the previous production version")
    ab = sub.add_parser("ab", help="serve a candidate to a share of users (0 ends the test)")
    ab.add_argument("version")
    ab.add_argument("--share", type=float, required=True)
    ar = sub.add_parser(
        "ab-report", help="per A/B variant: agents' and customers' ratings per user, latency; the difference, decided"
    )
    ar.add_argument("--since", help="count answers from this ISO time (default: when the running test started)")

    r = sub.add_parser("run", help="the monthly job: dataset, train, export, evaluate, register, promote")
    r.add_argument("--base", help="start from this model instead of production (hub id, folder or .gguf)")
    r.add_argument(
        "--data",
        type=Path,
        nargs="*",
        default=[],
        help="extra data files to mix in; recorded, and trained on again by every later run of the line",
    )
    r.add_argument(
        "--forget-data",
        type=Path,
        nargs="*",
        default=[],
        metavar="FILE",
        help="stop training on a file earlier versions of the line trained on (e.g. one now missing)",
    )
    r.add_argument("--eval", type=Path, help="score on this file instead of the eval set (refused if trained on)")
    r.add_argument("--ab", type=float, help="A/B test the result on this share of users instead of promoting")
    _training_args(r)
    r.add_argument("--precision", choices=PRECISIONS, help="of the served build (default: by model size)")
    r.add_argument("--max-accuracy-drop", type=float)
    r.add_argument("--max-bleu-drop", type=float)
    r.add_argument("--max-p99", type=float, dest="max_p99_s", help="seconds (P90 when under 100 eval answers)")
    r.add_argument("--min-eval-rows", type=int, help="fewer eval rows: the gate refuses to decide (exit 3)")
    r.add_argument("--min-taught-rows", type=int, help="fewer taught-view rows: reported, not judged by the gate")
    r.add_argument("--force", action="store_true", help="tune even without new rated chats")
    return p


def _training_args(p: argparse.ArgumentParser) -> None:
    """Flags that override single fields of the chosen preset (tuning/config.py); unset ones keep its value."""
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="where every unset knob comes from (default: chosen from the base, see README)",
    )
    p.add_argument("--method", choices=["lora", "full"])
    p.add_argument("--epochs", type=float, help="passes over the training examples: the steps follow")
    p.add_argument("--steps", type=int, help="optimiser steps, whatever the data's size")
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument(
        "--grad-checkpointing", action="store_true", default=None, help="trade compute for memory (large models)"
    )
    p.add_argument("--rank", type=int, dest="lora_rank")
    p.add_argument("--alpha", type=int, dest="lora_alpha")
    p.add_argument("--dropout", type=float, dest="lora_dropout")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Every flag that was given whose dest is a TuneConfig field: it replaces the preset's value."""
    return {f.name: getattr(args, f.name) for f in fields(TuneConfig) if getattr(args, f.name, None) is not None}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    data_dir = settings.data_dir
    registry = Registry(data_dir, settings.redis_url)
    try:
        return COMMANDS[args.command](args, settings, registry)
    except (DataError, RegistryError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_bootstrap(args: argparse.Namespace, settings: BotSettings, registry: Registry) -> int:
    from tuning.bootstrap import bootstrap

    version = bootstrap(settings.data_dir, settings.system_prompt, args.data)
    _print({"version": version, "current": registry.state().current})
    return 0


def cmd_dataset(args: argparse.Namespace, settings: BotSettings, registry: Registry) -> int:
    from tuning import dataset, monthly

    store = store_location(settings.data_dir, settings.database_url)
    excluded = frozenset(rater.strip() for given in args.exclude_rater for rater in given.split(",") if rater.strip())
    splits, card = dataset.build(
        store, args.data, include_sample=not args.no_sample, registry_root=registry.root, exclude_raters=excluded
    )
    hashes = dataset.write(splits, card, args.out)
    asyncio.run(
        monthly.audit(
            store,
            cli_actor(),
            "data_export",
            target=str(args.out),
            rows=card["rows"],
            data_hashes=hashes,
            excluded_raters=card["excluded_raters"],
        )
    )
    _print(json.loads((args.out / "card.json").read_text()))
    return 0


def cmd_train(args: argparse.Namespace, settings: BotSettings, registry: Registry) -> int:
    from tuning import dataset, split
    from tuning.monthly import choose_preset
    from tuning.train import fine_tune

    base, version = args.base, None
    if base in {"current", "candidate"} or base in registry.versions():
        version = registry.resolve(base)
        base = str(registry.hf_dir(version))
    rows = dataset.load_split(args.data, "train")
    held_out = [r["messages"] for r in dataset.load_split(args.data, "eval")]
    split.require_unseen(held_out, set().union(*(split.asked(r["messages"]) for r in rows)), "train.jsonl")
    chats = [with_system(settings.system_prompt, r["messages"]) for r in rows]
    name = args.preset or choose_preset(registry, version)[0]
    losses = fine_tune(base, chats, args.out, preset(name, **overrides(args)), resume=args.resume)
    _print({"model": str(args.out / HF_DIR), "preset": name, "steps": len(losses), "final_loss": losses[-1]})
    return 0


def cmd_export(args: argparse.Namespace, settings: BotSettings, registry: Registry) -> int:
    """onnx: what the bot serves itself. hf and lora: what an OpenAI-compatible server (vLLM) serves
    under the version's name, which is how the bot's balancer knows which version a backend serves."""
    from bot.models.export import export_onnx
    from tuning.train import ADAPTER_DIR

    if args.format != "onnx" and (args.model or args.precision):
        raise ValueError(f"--format {args.format} exports a registered version as it is: give --version only")
    out = args.out.absolute()
    version = registry.resolve(args.version) if args.version else None
    model = registry.hf_dir(version) if version else args.model
    if args.format != "lora" and not model.is_dir():
        raise FileNotFoundError(f"model folder not found: {model}")
    if args.format == "onnx":
        _print({"onnx": str(_write_folder(out, lambda scratch: export_onnx(model, scratch, args.precision)))})
    elif args.format == "hf":
        from transformers import AutoTokenizer

        if not AutoTokenizer.from_pretrained(model).chat_template:  # a server could not render chats without it
            raise ValueError(f"{version}'s tokenizer has no chat template")
        _write_folder(out, lambda scratch: _copy(model, scratch))
        _print({"hf": str(out), "serve": f"vllm serve {out} --served-model-name {version}"})
    else:
        adapter = model.parent / ADAPTER_DIR
        manifest = registry.manifest(str(version))
        if not adapter.is_dir():
            method = manifest.get("config", {}).get("method")
            raise ValueError(f"{version} has no LoRA adapter (it was tuned with method {method!r}): use --format hf")
        base = manifest["tuned_from"]
        if base in registry.versions():
            base = str(registry.hf_dir(base).absolute())
        _write_folder(out, lambda scratch: _copy_adapter(adapter, base, scratch))
        serve = f"vllm serve {base} --enable-lora --lora-modules {version}={out}"
        _print({"lora": str(out), "base": base, "serve": serve})
    return 0


def _copy_adapter(adapter: Path, base: str, out: Path) -> None:
    """The adapter, its config naming the base it applies to by where it is now (peft wrote the path
    the run loaded it from, which may be relative to the run's working folder)."""
    _copy(adapter, out)
    config_file = out / "adapter_config.json"
    config = json.loads(config_file.read_text()) | {"base_model_name_or_path": base}
    config_file.write_text(json.dumps(config, indent=2))


def _copy(src: Path, dst: Path) -> None:
    # Contents only, not modes: safetensors files are written owner-only, and a server may run as another user.
    shutil.copytree(src, dst, copy_function=shutil.copyfile, dirs_exist_ok=True)


def _write_folder(out: Path, build: Callable[[Path], object]) -> Path:
    """Build `out` in a scratch folder beside it and rename that into place: `out` appears whole or not at all."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not empty: choose a new --out")
    scratch = out.with_name(f".{out.name}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        build(scratch)
        os.replace(scratch, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # left only by a failed build
    return out


def cmd_eval(args: argparse.Namespace, settings: BotSettings, registry: Registry) -> int:
    from bot.models.export import GENAI_CONFIG
    from bot.models.runtime import ChatModel, GenerationSettings
    from tuning import split
    from tuning.evaluate import evaluate_views, report
    from tuning.formats import read_chats
    from tuning.monthly import kept_views

    folder = Path(args.model)
    registered = not (folder / GENAI_CONFIG).exists()  # else an ONNX folder, which records no training data
    name = registry.resolve(args.model) if registered else folder.name
    folder = registry.onnx_dir(name) if registered else folder
    if args.data:
        chats = read_chats(args.data)
        split.require_unseen(chats, split.trained_questions(registry, name) if registered else set(), name)
        views = {args.data.name: chats[: args.limit]}
    elif registered:  # the rows the version was scored on (all three views), less any it trained on
        views = {view: chats[: args.limit] for view, chats in kept_views(registry, name).items()}
    else:
        raise ValueError(f"{name} records no kept eval set: give --data")
    model = ChatModel(name, folder, GenerationSettings(max_new_tokens=settings.max_new_tokens))
    result = report(name, *evaluate_views(model, views, settings.system_prompt))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    _print(result)
    return 0


def cmd_list(args: argparse.Namespace, settings: BotSettings, registry: Registry) -> int:
    state = registry.state()
    rows = []
    for version in registry.versions():
        m = registry.manifest(version)
        role = "current" if version == state.current else "candidate" if version == state.candidate else ""
        rows.append(
            {
                "version": version,
                "role": role,
                "parent": m.get("parent"),
                "created_at": m.get("created_at"),
                "metrics": {k: m.get("metrics", {}).get(k) for k in ("accuracy", "bleu4", "latency_p99_s")},
            }
        )
    _print({"current": state.current, "candidate": state.candidate, "ab_share": state.ab_share, "versions": rows})
    return 0


def _with_store(settings: BotSettings, operation: Callable[[Store], Awaitable[State]]) -> State:
    """Run one admin operation (bot/admin.py, shared with the HTTP admin API) against the store."""

    async def go() -> State:
        store = await open_store(settings)
        try:
            return await operation(store)
        finally:
            await store.close()

    return asyncio.run(go())


def cmd_promote(args: argparse.Namespace, settings: BotSettings, registry: Registry) -> int:
    state = _with_store(settings, lambda store: admin.promote(registry, store, cli_actor(), args.version))
    _print(state.__dict__)
    return 0


def cmd_rollback(args: argparse.Namespace, settings: BotSettings, registry: Registry) -> int:
    state = _with_store(settings, lambda store: admin.rollback(registry, store, cli_actor()))
    _print(state.__dict__)
    return 0


def cmd_ab(args: argparse.Namespace, settings: BotSettings, registry: Registry) -> int:
    state = _with_store(settings, lambda store: admin.ab_test(registry, store, cli_actor(), args.version, args.share))
    _print(state.__dict__)
    return 0


def cmd_ab_report(args: argparse.Namespace, settings: BotSettings, registry: Registry) -> int:
    from tuning.ab import ab_report, since_time

    since = args.since or registry.state().ab_started_at
    if since is None:
        raise ValueError("no A/B test is running (or it started before its start was recorded): give --since")

    async def read() -> tuple[list, list]:
        store = await open_store(settings)
        try:
            return await store.turns(), await store.ratings()
        finally:
            await store.close()

    _print(ab_report(*asyncio.run(read()), since=since_time(since)))
    return 0


def cmd_run(args: argparse.Namespace, settings: BotSettings, registry: Registry) -> int:
    from tuning.gate import TooFewRows
    from tuning.monthly import NothingToDo, RunOptions, run

    options = RunOptions(
        preset=args.preset,
        overrides=overrides(args),
        base=args.base,
        extra_files=args.data,
        forget_files=args.forget_data,
        eval_file=args.eval,
        ab_share=args.ab,
        force=args.force,
        database_url=settings.database_url,
        redis_url=settings.redis_url,
    )
    try:
        result = run(settings.data_dir, settings.system_prompt, options)
    except NothingToDo as exc:
        print(str(exc))
        return 0
    except TooFewRows as exc:  # its own exit code: neither a failed gate (1) nor bad input (2)
        print(f"error: {exc}", file=sys.stderr)
        return 3
    result["metrics"].pop("samples", None)
    _print(result)
    if result["refused"]:  # a failed gate, or production changed meanwhile: cron must notice
        print(f"not promoted: {result['outcome']}", file=sys.stderr)
        return 1
    return 0


Command = Callable[[argparse.Namespace, BotSettings, Registry], int]
COMMANDS: dict[str, Command] = {
    "bootstrap": cmd_bootstrap,
    "dataset": cmd_dataset,
    "train": cmd_train,
    "export": cmd_export,
    "eval": cmd_eval,
    "list": cmd_list,
    "promote": cmd_promote,
    "rollback": cmd_rollback,
    "ab": cmd_ab,
    "ab-report": cmd_ab_report,
    "run": cmd_run,
}

if __name__ == "__main__":
    sys.exit(main())
