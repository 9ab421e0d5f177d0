"""`python -m tuning COMMAND`: the stages of the monthly fine-tune, one by one or all at once (`run`)."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.config import load_settings
from tuning.formats import DataError
from tuning.registry import Registry, RegistryError

if TYPE_CHECKING:
    from tuning.train import TrainConfig


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

    t = sub.add_parser("train", help="fine-tune a model on a dataset folder (from `dataset`)")
    t.add_argument("--data", type=Path, required=True, help="dataset folder")
    t.add_argument("--base", default="current", help="current, a version, a folder, a hub id or a .gguf file")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    _training_args(t)

    x = sub.add_parser("export", help="merged model folder -> ONNX (optionally quantised)")
    x.add_argument("--model", type=Path, required=True)
    x.add_argument("--out", type=Path, required=True)
    x.add_argument("--quantize", choices=["int8", "int4"])

    e = sub.add_parser("eval", help="accuracy, BLEU-4, ROUGE-L and latency of a model on a data file")
    e.add_argument("--model", default="current", help="current, candidate, a version or an ONNX folder")
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--out", type=Path, help="write the JSON here too")
    e.add_argument("--limit", type=int)

    sub.add_parser("list", help="registered versions")
    pr = sub.add_parser("promote", help="make a version the production version")
    pr.add_argument("version")
    sub.add_parser("rollback", help="go back to the previous production version")
    ab = sub.add_parser("ab", help="serve a candidate to a share of users (0 ends the test)")
    ab.add_argument("version")
    ab.add_argument("--share", type=float, required=True)
    sub.add_parser("ab-report", help="ratings and latency per A/B variant")

    r = sub.add_parser("run", help="the monthly job: dataset, train, export, evaluate, register, promote")
    r.add_argument("--base", help="start from this model instead of production (hub id, folder or .gguf)")
    r.add_argument("--data", type=Path, nargs="*", default=[], help="extra data files to mix in")
    r.add_argument("--ab", type=float, help="A/B test the result on this share of users instead of promoting")
    r.add_argument("--quantize", choices=["int8", "int4"])
    _training_args(r)
    r.add_argument("--max-accuracy-drop", type=float, default=0.02)
    r.add_argument("--max-bleu-drop", type=float, default=0.02)
    r.add_argument("--max-p99", type=float, default=1.5, help="seconds")
    r.add_argument("--force", action="store_true", help="tune even without new rated chats")
    return p


def _training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=["lora", "full"], default="lora")
    p.add_argument("--steps", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--grad-checkpointing", action="store_true", help="trade compute for memory (large models)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.05)


def _train_config(args: argparse.Namespace) -> "TrainConfig":
    from tuning.monthly import INCREMENTAL
    from tuning.train import TrainConfig

    overrides = {"steps": args.steps, "lr": args.lr, "batch_size": args.batch_size, "grad_accum": args.grad_accum}
    config = TrainConfig(**INCREMENTAL.__dict__ | {k: v for k, v in overrides.items() if v})
    config.grad_checkpointing = args.grad_checkpointing
    config.checkpoint_every = 50  # a killed `train` continues with --resume
    return config


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    data_dir = settings.data_dir
    registry = Registry(data_dir)
    try:
        return COMMANDS[args.command](args, settings, registry)
    except (DataError, RegistryError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_bootstrap(args, settings, registry) -> int:
    from tuning.bootstrap import bootstrap

    version = bootstrap(settings.data_dir, settings.system_prompt, args.data)
    _print({"version": version, "current": registry.state().current})
    return 0


def cmd_dataset(args, settings, registry) -> int:
    from tuning import dataset

    splits, card = dataset.build(settings.data_dir / "bot.sqlite3", args.data, include_sample=not args.no_sample)
    dataset.write(splits, card, args.out)
    _print(json.loads((args.out / "card.json").read_text()))
    return 0


def cmd_train(args, settings, registry) -> int:
    from tuning import dataset
    from tuning.train import LoraSettings, fine_tune

    base = args.base
    if base in {"current", "candidate"} or base in registry.versions():
        base = str(registry.path(registry.resolve(base)) / "hf")
    rows = dataset.load_split(args.data, "train")
    chats = [[{"role": "system", "content": settings.system_prompt}, *r["messages"]] for r in rows]
    losses = fine_tune(base, chats, args.out, _train_config(args), method=args.method,
                       lora=LoraSettings(args.rank, args.alpha, args.dropout), resume=args.resume)
    _print({"model": str(args.out / "hf"), "steps": len(losses), "final_loss": losses[-1]})
    return 0


def cmd_export(args, settings, registry) -> int:
    from tuning import export

    out = export.export_onnx(args.model, args.out if not args.quantize else args.out.with_name(args.out.name + "-fp32"))
    if args.quantize:
        out = export.quantize(out, args.out, args.quantize)
    _print({"onnx": str(out)})
    return 0


def cmd_eval(args, settings, registry) -> int:
    from bot.model import ChatModel, GenerationSettings
    from tuning.evaluate import evaluate
    from tuning.formats import read_chats

    folder = Path(args.model)
    if (folder / "model.onnx").exists():
        name = folder.name
    else:
        name = registry.resolve(args.model)
        folder = registry.path(name) / "onnx"
    model = ChatModel(name, folder, GenerationSettings(max_new_tokens=settings.max_new_tokens))
    result = evaluate(model, read_chats(args.data), settings.system_prompt, args.limit)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    _print(result)
    return 0


def cmd_list(args, settings, registry) -> int:
    state = registry.state()
    rows = []
    for version in registry.versions():
        m = registry.manifest(version)
        role = "current" if version == state.current else "candidate" if version == state.candidate else ""
        rows.append({"version": version, "role": role, "parent": m.get("parent"), "created_at": m.get("created_at"),
                     "metrics": {k: m.get("metrics", {}).get(k) for k in ("accuracy", "bleu4", "latency_p99_s")}})
    _print({"current": state.current, "candidate": state.candidate, "ab_share": state.ab_share, "versions": rows})
    return 0


def _audit(settings, action: str, **detail: Any) -> None:
    from tuning.monthly import audit as write

    asyncio.run(write(settings.data_dir, "operator", action, **detail))


def cmd_promote(args, settings, registry) -> int:
    state = registry.promote(args.version)
    _audit(settings, "promote", version=args.version)
    _print(state.__dict__)
    return 0


def cmd_rollback(args, settings, registry) -> int:
    state = registry.rollback()
    _audit(settings, "rollback", version=state.current)
    _print(state.__dict__)
    return 0


def cmd_ab(args, settings, registry) -> int:
    state = registry.set_candidate(args.version if args.share > 0 else None, args.share)
    _audit(settings, "ab_test", version=args.version, share=args.share)
    _print(state.__dict__)
    return 0


def cmd_ab_report(args, settings, registry) -> int:
    from bot.store import Store
    from tuning.evaluate import ab_report

    async def read() -> tuple[list, list]:
        store = await Store.open(settings.data_dir / "bot.sqlite3")
        try:
            return await store.turns(), await store.ratings()
        finally:
            await store.close()

    _print(ab_report(*asyncio.run(read())))
    return 0


def cmd_run(args, settings, registry) -> int:
    from tuning.monthly import Gate, NothingToDo, RunOptions, run
    from tuning.train import LoraSettings

    options = RunOptions(base=args.base, extra_files=args.data, method=args.method, quantize=args.quantize,
                         ab_share=args.ab, force=args.force, lora=LoraSettings(args.rank, args.alpha, args.dropout),
                         gate=Gate(args.max_accuracy_drop, args.max_bleu_drop, args.max_p99), train=_train_config(args))
    try:
        result = run(settings.data_dir, settings.system_prompt, options)
    except NothingToDo as exc:
        print(str(exc))
        return 0
    result["metrics"].pop("samples", None)
    _print(result)
    return 0


COMMANDS = {"bootstrap": cmd_bootstrap, "dataset": cmd_dataset, "train": cmd_train, "export": cmd_export,
            "eval": cmd_eval, "list": cmd_list, "promote": cmd_promote, "rollback": cmd_rollback, "ab": cmd_ab,
            "ab-report": cmd_ab_report, "run": cmd_run}

if __name__ == "__main__":
    sys.exit(main())
