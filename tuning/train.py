"""Training loop (nanoGPT-style): encode chats, shuffle, step, log. Used by the starter model and by
the monthly LoRA tune; every knob comes from one `TuneConfig` (tuning/config.py). Loss falls on
approved assistant answers only: the prompt's labels (and context-only answers') are -100."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bot.models.chat import Chat
from bot.models.registry import HF_DIR
from tuning.config import TuneConfig
from tuning.formats import is_target

log = logging.getLogger(__name__)
# Beside HF_DIR in a LoRA tune's folder: the adapter alone, for servers that load it onto the base.
ADAPTER_DIR = "adapter"
IGNORE = -100
END_OF_TURN = "<|im_end|>"  # ChatML's end of a message: the starter's and Qwen's templates


def chat_segments(tokenizer: Any, messages: Chat) -> list[tuple[str, bool]]:
    """Split a rendered chat into (text, is_learnt) pieces using the tokenizer's template: an assistant
    answer is learnt unless it is marked context only (formats.is_target)."""
    segments, done = [], ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
            answer = full[len(prompt) :]
            # Learnt: the answer and the token that ends it; what the template adds after (a newline) is not.
            end = answer.find(END_OF_TURN)
            cut = end + len(END_OF_TURN) if end >= 0 else len(answer)
            segments += [(prompt[len(done) :], False), (answer[:cut], is_target(message)), (answer[cut:], False)]
            done = full
    return segments


def encode(tokenizer: Any, messages: Chat, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels; each piece is tokenised on its own so the label mask is exact."""
    ids: list[int] = []
    labels: list[int] = []
    for text, is_answer in chat_segments(tokenizer, messages):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if is_answer else [IGNORE] * len(piece)
    return ids[-max_len:], labels[-max_len:]  # keep the end: the answers being learnt


def _batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), IGNORE)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (row_ids, row_labels) in enumerate(rows):
        ids[r, : len(row_ids)] = torch.tensor(row_ids)
        labels[r, : len(row_labels)] = torch.tensor(row_labels)
        mask[r, : len(row_ids)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _lr_at(step: int, steps: int, cfg: TuneConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def epoch_order(rng: random.Random, lengths: list[int], cfg: TuneConfig) -> list[int]:
    """One pass over the rows in random order. With `group_by_length`, each run of 64 batches is sorted
    by length before it is cut into batches, and the batches are shuffled: a batch is padded to its
    longest row, so chats of like length together waste less compute on padding (a third of the
    tokens fed on the Bitext answers, which range from 20 to 500 tokens)."""
    order = rng.sample(range(len(lengths)), len(lengths))
    if not cfg.group_by_length:
        return order
    run = cfg.batch_size * 64
    batches = []
    for start in range(0, len(order), run):
        chunk = sorted(order[start : start + run], key=lengths.__getitem__)
        batches += [chunk[i : i + cfg.batch_size] for i in range(0, len(chunk), cfg.batch_size)]
    rng.shuffle(batches)
    return [i for batch in batches for i in batch]


def device_and_dtype() -> tuple[torch.device, torch.dtype | None]:
    """bf16 (or fp16) autocast on CUDA, plain fp32 on CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.device("cpu"), None


def train(
    model: torch.nn.Module,
    tokenizer: Any,
    chats: list[Chat],
    cfg: TuneConfig,
    out_dir: Path | None = None,
    resume: bool = False,
) -> list[float]:
    """Train `model` in place on `chats`; returns the loss per step. With `out_dir`, writes
    `loss.jsonl` and (every `checkpoint_every` steps) `checkpoint.pt` to resume from."""
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device, autocast_dtype = device_and_dtype()
    model.to(device).train()
    if cfg.grad_checkpointing:
        _recompute_activations(model)
    rows = [encode(tokenizer, chat, cfg.max_len) for chat in chats]
    rows = [r for r in rows if any(label != IGNORE for label in r[1])]
    if not rows:
        raise ValueError("no training example has an assistant answer")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    checkpoint = out_dir / "checkpoint.pt" if out_dir else None
    start, losses = load_checkpoint(checkpoint, model, optimizer, device) if resume and checkpoint else (0, [])
    order: list[int] = []
    rng = random.Random(cfg.seed + start)
    began = time.perf_counter()
    steps = cfg.steps_for(len(chats))
    for step in tqdm(range(start, steps), desc="train", initial=start, total=steps, mininterval=2):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, cfg)
        total = 0.0
        for _ in range(cfg.grad_accum):
            if len(order) < cfg.batch_size:
                order += epoch_order(rng, [len(ids) for ids, _ in rows], cfg)
            picked, order = order[: cfg.batch_size], order[cfg.batch_size :]
            batch = {k: v.to(device) for k, v in _batch([rows[i] for i in picked], pad_id).items()}
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = model(**batch).loss / cfg.grad_accum
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
        if out_dir and (step % cfg.log_every == 0 or step == steps - 1):
            with open(out_dir / "loss.jsonl", "a") as loss_log:
                loss_log.write(
                    json.dumps({"step": step, "loss": round(total, 5), "s": round(time.perf_counter() - began, 2)})
                    + "\n"
                )
        if checkpoint and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            save_checkpoint(checkpoint, model, optimizer, losses)
    if checkpoint and checkpoint.exists():
        checkpoint.unlink()  # finished: the checkpoint only served to resume
    model.eval()
    return losses


def _recompute_activations(model: Any) -> None:
    """Gradient checkpointing (Hugging Face models): activations are recomputed in the backward pass."""
    if hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()  # with frozen embeddings (LoRA) the checkpointed input needs grads


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, losses: list[float]) -> None:
    """The trainable weights (all of them, or only LoRA's), the optimiser state and the losses so far."""
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    torch.save({"model": trainable, "optimizer": optimizer.state_dict(), "step": len(losses), "losses": losses}, path)


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[int, list[float]]:
    """Restore what `save_checkpoint` wrote, if it is there; returns the step to continue at and the losses."""
    if not path.exists():
        return 0, []
    state = torch.load(path, map_location=device)
    model.load_state_dict(state["model"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    log.info("resumed from %s at step %d", path, state["step"])
    return state["step"], state["losses"]


def require_base(base: str | Path) -> None:
    """Fail early on a base that is a path (not a hub id) and does not exist."""
    path = Path(base)
    looks_like_path = path.suffix == ".gguf" or path.is_absolute() or str(base).startswith((".", "~"))
    if looks_like_path and not path.exists():
        raise FileNotFoundError(f"base model not found: {path}")


def load_base(base: str | Path) -> tuple[Any, Any]:
    """Tokenizer and PyTorch model from a folder, a hub id or a GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_base(base)
    path = Path(base)
    kwargs: dict[str, Any] = {}
    if path.suffix == ".gguf":
        kwargs, base = {"gguf_file": path.name}, path.parent
    tokenizer = AutoTokenizer.from_pretrained(base, **kwargs)
    # On CUDA the weights load in bf16/fp16 (a 7B in fp32 does not fit a 24 GB card); LoRA's own
    # weights stay fp32. On CPU everything is fp32.
    _, autocast_dtype = device_and_dtype()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=autocast_dtype or torch.float32, **kwargs)
    return tokenizer, model


def fine_tune(base: str | Path, chats: list[Chat], out_dir: Path, cfg: TuneConfig, resume: bool = False) -> list[float]:
    """LoRA (merged afterwards) or full fine-tune of `base`, as `cfg.method` says; the result is saved
    as a plain model in `out_dir`, so the next month's tune can start from it. A LoRA tune also keeps
    its adapter alone (`ADAPTER_DIR`)."""
    if cfg.method not in {"lora", "full"}:
        raise ValueError(f"unknown method {cfg.method!r}: use lora or full")
    tokenizer, model = load_base(base)
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=cfg.lora_rank,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=cfg.lora_targets,
                task_type="CAUSAL_LM",
            ),
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    losses = train(model, tokenizer, chats, cfg, out_dir=out_dir, resume=resume)
    if cfg.method == "lora":
        model.save_pretrained(out_dir / ADAPTER_DIR)
        model = model.merge_and_unload()
    model.to("cpu").save_pretrained(out_dir / HF_DIR)
    tokenizer.save_pretrained(out_dir / HF_DIR)
    model.generation_config.save_pretrained(out_dir / HF_DIR)
    return losses
