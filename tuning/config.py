"""Every tuning knob, in one typed block (nanoGPT style), and the named presets built from it.

The field defaults are the `monthly` preset; the other presets change only what differs from it.
`python -m tuning train|run` picks the preset from the base (tuning/monthly.py `choose_preset`);
`--preset NAME` picks it instead, and any flag given overrides a field. A preset sets `epochs`: the
optimiser steps follow from the data's size (`sized`) unless `steps` is given. Each registered
version's manifest stores the whole block it ran with (`"config"`: preset and steps included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class TuneConfig:
    preset: str = "monthly"  # the named preset these values started from (recorded in manifests)
    # --- optimisation
    epochs: float = 14  # passes over the training examples (rated chats counted chat_weight times)
    steps: int | None = None  # optimiser steps; None: from epochs and the data's size (`sized`)
    batch_size: int = 16  # chats per micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    lr: float = 2e-3  # peak learning rate, after the linear warmup
    min_lr_ratio: float = 0.1  # the cosine decay ends at lr * min_lr_ratio
    warmup: int = 10  # warmup steps
    weight_decay: float = 0.0  # AdamW weight decay
    max_len: int = 320  # tokens per chat; longer chats keep their end (the answers)
    seed: int = 0  # shuffling and weight initialisation
    grad_checkpointing: bool = False  # trade compute for memory (large models)
    group_by_length: bool = False  # batch chats of like length together: less padding (tuning/train.py)
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
    # bootstrap interval too wide to tell a drop from noise. The shipped sample data holds out 853, the tests' subset 92 (tuning/split.py).
    min_eval_rows: int = 30
    # The "taught" view (held-out agents' answers, tuning/split.py) is judged by the same drops once it has
    # this many rows; with fewer it is reported, not judged.
    min_taught_rows: int = 20
    # --- export
    precision: str | None = None  # the served build: "fp32", "int4", or None (int4 from pretrained size up)

    def steps_for(self, examples: int) -> int:
        """`steps` when given, else the optimiser steps that make `epochs` passes over `examples` chats."""
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * examples / (self.batch_size * self.grad_accum)))

    def sized(self, examples: int) -> TuneConfig:
        """This block with its steps for `examples` chats filled in: what a manifest records."""
        return replace(self, steps=self.steps_for(examples))


# The increment of the small starter line: LoRA on its merged weights. 14 epochs is ~300 steps on the
# tests' subset of the sample data (326 train rows), ~2,200 on the full sample (2,552): the small
# starter learns a corrected answer only by repetition.
MONTHLY = TuneConfig()
PRESETS = {
    # The offline starter model, a small Qwen2 trained from nothing (tuning/bootstrap.py). Its steps, context
    # (max_len) and shape come from the corpus (`bootstrap.size_starter`): `epochs` is only the most passes
    # a small corpus gets (~400 steps on the sample data) and `max_len` the least context.
    "scratch": replace(
        MONTHLY,
        preset="scratch",
        method="full",
        epochs=40,
        batch_size=32,
        lr=4e-3,
        warmup=20,
        checkpoint_every=0,
        group_by_length=True,
    ),
    "monthly": MONTHLY,
    # A first LoRA tune of a pretrained base (`tuning run --base ...`). A starting point, not a measured
    # optimum; for a 7B on 24 GB add --grad-checkpointing --batch-size 4 --grad-accum 4.
    "pretrained": replace(MONTHLY, preset="pretrained", epochs=2, lr=2e-4, warmup=5),
    # The monthly increment of a line that began from a pretrained base: gentle, so a month's few rated
    # chats adjust the model without wearing away what the base knew (the earlier data is replayed too).
    "pretrained-monthly": replace(MONTHLY, preset="pretrained-monthly", epochs=1, lr=1e-4, warmup=5),
}


def preset(name: str, **overrides: Any) -> TuneConfig:
    """The named preset with some fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: use {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)
