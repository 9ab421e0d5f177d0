"""Starter model, built offline from the project's own data: a byte-level BPE tokenizer with ChatML
tokens, a small Qwen2ForCausalLM trained from scratch, exported to ONNX and registered as current.

Small on purpose: it memorises the shipped FAQ in well under a minute on 2 cores, so a fresh machine
with no model hub answers at once; real deployments tune a pretrained Qwen (`tuning run --base`).
It trains on the train side of `tuning.split` only, like every later tune, and keeps what it trained
on in its version folder (`train.jsonl`, hashed in the manifest's `data_hashes`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import cast

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from bot.models.chat import with_system
from bot.models.export import export_onnx
from bot.models.registry import HF_DIR, ONNX_DIR, Registry
from tuning import dataset, formats
from tuning.config import PRESETS, TuneConfig
from tuning.train import train

log = logging.getLogger(__name__)
IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
# ChatML, as Qwen's own template renders it (without Qwen's default system prompt).
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TRAINED_ON = "train.jsonl"  # in the version folder: the chats it trained on
STARTER_SHAPE = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}


def build_tokenizer(texts: list[str], vocab_size: int = 4000) -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[END_OF_TEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        additional_special_tokens=[IM_START],
        chat_template=CHATML,
        model_max_length=2048,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    im_end, eot = cast(list[int], tokenizer.convert_tokens_to_ids([IM_END, END_OF_TEXT]))
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        bos_token_id=eot,
        eos_token_id=im_end,
        pad_token_id=eot,
        **STARTER_SHAPE,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[im_end, eot], pad_token_id=eot, do_sample=False, max_new_tokens=96
    )
    return model


def bootstrap(
    data_dir: Path, system_prompt: str, data_files: list[Path] | None = None, cfg: TuneConfig = PRESETS["scratch"]
) -> str:
    """Build, train, export and register the starter model; returns its version name. Of `cfg` only
    the optimisation fields apply: the starter is a full training from nothing."""
    began = time.perf_counter()
    files = data_files or formats.shipped_files()
    registry = Registry(data_dir)
    rows, card = dataset.build(None, files, include_sample=False, registry_root=registry.root)
    if not rows["train"]:
        raise formats.DataError("no training data")
    trained_on = "".join(json.dumps({"messages": r["messages"]}, ensure_ascii=False) + "\n" for r in rows["train"])
    chats = [with_system(system_prompt, r["messages"]) for r in rows["train"]]
    cfg = cfg.sized(len(chats))
    tokenizer = build_tokenizer([m["content"] for chat in chats for m in chat])
    model = build_model(tokenizer, seed=cfg.seed)
    version, scratch = registry.start_version()
    (scratch / TRAINED_ON).write_text(trained_on, encoding="utf-8")
    losses = train(model, tokenizer, chats, cfg, out_dir=scratch)
    model.save_pretrained(scratch / HF_DIR)
    tokenizer.save_pretrained(scratch / HF_DIR)
    export_onnx(scratch / HF_DIR, scratch / ONNX_DIR)
    registry.register(
        version,
        scratch,
        {
            "parent": None,
            "base_model": "starter (Qwen2, trained from scratch)",
            "parameters": model.num_parameters(),
            "data_files": [str(p) for p in files],
            # Files other than the shipped sample: every later tune of this line trains on them again.
            "replay": [dataset.file_record(p) for p in files if p.resolve() not in formats.shipped_files()],
            "data_hashes": {TRAINED_ON: hashlib.sha256(trained_on.encode()).hexdigest()},
            "eval_set": card["eval_set"],
            "examples": len(chats),
            "system_prompt": system_prompt,
            "config": asdict(cfg),
            "shape": STARTER_SHAPE,
            "final_loss": losses[-1],
            "seconds": round(time.perf_counter() - began, 1),
        },
    )
    registry.promote(version)
    log.info(
        "starter model %s: %d parameters, %d chats, final loss %.4f, %.0f s",
        version,
        model.num_parameters(),
        len(chats),
        losses[-1],
        time.perf_counter() - began,
    )
    return version
