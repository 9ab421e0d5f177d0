"""Every tuning knob, in one typed block (nanoGPT style), and the named presets built from it.

The field defaults are the `monthly` preset; the other presets change only what differs from it.
`python -m tuning train|run --preset NAME` starts from a preset and any flag given overrides a field.
Each registered version's manifest stores the whole block it ran with (`"config"`, preset included).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class TuneConfig:
    preset: str = "monthly"  # the named preset these values started from (recorded in manifests)
    # --- optimisation
    steps: int = 300  # optimiser steps
    batch_size: int = 16  # chats per micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    lr: float = 2e-3  # peak learning rate, after the linear warmup
    min_lr_ratio: float = 0.1  # the cosine decay ends at lr * min_lr_ratio
    warmup: int = 10  # warmup steps
    weight_decay: float = 0.0  # AdamW weight decay
    max_len: int = 320  # tokens per chat; longer chats keep their end (the answers)
    seed: int = 0  # shuffling and weight initialisation
    grad_checkpointing: bool = False  # trade compute for memory (large models)
    log_every: int = 25  # steps between lines in loss.jsonl
    checkpoint_every: int = 50  # steps between checkpoint.pt writes (0: none); `train --resume` continues
    # --- method
    method: str = "lora"  # "lora" (merged afterwards) or "full"
    lora_rank: int = 16  # LoRA r
    lora_alpha: int = 32  # LoRA scaling numerator (scale = alpha / rank)
    lora_dropout: float = 0.05  # dropout on the LoRA input
    lora_targets: str = "all-linear"  # every linear projection (attention and MLP), not the LM head
    # --- data and evaluation
    chat_weight: int = 8  # rated chats are few: each is shown this many times per pass over the data
    eval_limit: int | None = 200  # eval rows answered per model (None: all)
    # --- promotion gate: how much worse than production a candidate may be and still be promoted
    max_accuracy_drop: float = 0.02
    max_bleu_drop: float = 0.02
    max_p99_s: float = 1.5  # P99 answer latency, seconds (P90 when under 100 answers: see tuning/gate.py)
    # Fewer held-out rows and the gate refuses to decide: one row would be over 3% of the score and the
    # bootstrap interval too wide to tell a drop from noise. The shipped sample data holds out 92 (tuning/split.py).
    min_eval_rows: int = 30
    # --- export
    precision: str | None = None  # the served build: "fp32", "int4", or None (int4 from pretrained size up)


MONTHLY = TuneConfig()  # continue the production model: fewer steps and a lower lr than `scratch`
PRESETS = {
    # The offline starter model, a small Qwen2 trained from nothing (tuning/bootstrap.py).
    "scratch": replace(
        MONTHLY, preset="scratch", method="full", steps=400, batch_size=32, lr=4e-3, warmup=20, checkpoint_every=0
    ),
    "monthly": MONTHLY,
    # A first LoRA tune of a pretrained base (`tuning run --base ... --preset pretrained`). A starting point,
    # not a measured optimum: ~2 epochs of the shipped sample data (326 train rows); for other data take
    # steps ~ epochs * rows / (batch_size * grad_accum), and for a 7B on 24 GB add
    # --grad-checkpointing --batch-size 4 --grad-accum 4.
    "pretrained": replace(MONTHLY, preset="pretrained", steps=50, lr=2e-4, warmup=5),
}


def preset(name: str, **overrides: Any) -> TuneConfig:
    """The named preset with some fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: use {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)
