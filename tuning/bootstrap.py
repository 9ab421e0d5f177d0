"""Starter model, built offline from the project's own data: a byte-level BPE tokenizer with ChatML
tokens, a small Qwen2ForCausalLM trained from scratch, exported to ONNX and registered as current.

Small on purpose, and sized by its corpus (`size_starter`): it memorises the shipped FAQ in about two
minutes on 2 cores, so a fresh machine with no model hub answers soon; a larger corpus of long answers
(`--data`) gets a wider model, a longer context and a token budget of its own. Real deployments tune a
pretrained Qwen (`tuning run --base`).
It trains on the train side of `tuning.split` only, like every later tune, and keeps what it trained
on in its version folder (`train.jsonl`, hashed in the manifest's `data_hashes`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
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

from bot.models.chat import Chat, with_system
from bot.models.export import builds, export_onnx
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
# The shape for a corpus of many long answers (Bitext: 4,000 chats, ~150-token answers): 2.6M parameters
# with the 4,000-token vocabulary. Wider rather than deeper: on 2 CPU cores a third layer of 192 costs
# more time per token than doubling the width of two (bench/RESULTS.md, Bitext).
WIDE_SHAPE = STARTER_SHAPE | {
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
}
WIDE_FROM_TOKENS = 400_000  # corpus tokens (chats as trained) from which the wide shape is used
FAQ_TOKENS = 1_200_000  # tokens a small corpus is trained on: about 2 minutes on 2 idle cores
LEAST_PASSES = 4  # a large corpus still gets this many passes, whatever FAQ_TOKENS says
SERVED_FLOOR = 96  # the bot's default BOT_MAX_NEW_TOKENS: the generation length is never set below it


@dataclass(frozen=True)
class StarterSize:
    """What `size_starter` chose for a corpus, and the corpus figures it chose from (in the manifest)."""

    shape: dict[str, int]
    cfg: TuneConfig  # the preset with steps and max_len filled in
    max_new_tokens: int  # generation length recorded for serving (generation_config.json, manifest)
    corpus: dict[str, int]


def _up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def size_starter(tokenizer: PreTrainedTokenizerFast, chats: list[Chat], cfg: TuneConfig) -> StarterSize:
    """The starter's size from its corpus, measured in the starter's own tokens:
    - shape: STARTER_SHAPE (0.8M parameters) below WIDE_FROM_TOKENS tokens, WIDE_SHAPE (2.6M) from there;
    - context (max_len): the longest chat, rounded up to 64, between the preset's max_len and 1,024, so
      no answer loses its question (training keeps a chat's end);
    - generation length: 1.25 x the 99th percentile answer, rounded up to 32, at least SERVED_FLOOR;
    - steps: a token budget, not a fixed number of passes. A small corpus is passed over `cfg.epochs`
      times (memorised) but for at most FAQ_TOKENS tokens; a large one at least LEAST_PASSES times.
      Steps = passes x chats / batch size. An explicit `cfg.steps` is kept.
    """
    chat_tokens = sorted(len(tokenizer.apply_chat_template(chat, tokenize=True)) for chat in chats)
    answers = sorted(
        len(tokenizer(m["content"], add_special_tokens=False)["input_ids"])
        for chat in chats
        for m in chat
        if m["role"] == "assistant"
    ) or [0]
    max_len = min(1024, max(cfg.max_len, _up(chat_tokens[-1], 64)))
    tokens = sum(min(n, max_len) for n in chat_tokens)
    passes = min(cfg.epochs, max(LEAST_PASSES, FAQ_TOKENS / tokens))
    steps = cfg.steps or max(1, math.ceil(passes * len(chats) / (cfg.batch_size * cfg.grad_accum)))
    answer_p99 = answers[min(len(answers) - 1, round(0.99 * (len(answers) - 1)))]
    return StarterSize(
        shape=WIDE_SHAPE if tokens >= WIDE_FROM_TOKENS else STARTER_SHAPE,
        cfg=replace(cfg, steps=steps, max_len=max_len),
        max_new_tokens=max(SERVED_FLOOR, _up(1.25 * answer_p99, 32)),
        corpus={
            "chats": len(chats),
            "tokens": tokens,
            "answer_tokens_p50": answers[len(answers) // 2],
            "answer_tokens_p99": answer_p99,
            "longest_chat_tokens": chat_tokens[-1],
        },
    )


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


def build_model(
    tokenizer: PreTrainedTokenizerFast,
    seed: int = 0,
    shape: dict[str, int] | None = None,
    max_new_tokens: int = SERVED_FLOOR,
) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    im_end, eot = cast(list[int], tokenizer.convert_tokens_to_ids([IM_END, END_OF_TEXT]))
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        bos_token_id=eot,
        eos_token_id=im_end,
        pad_token_id=eot,
        **(shape or STARTER_SHAPE),
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[im_end, eot], pad_token_id=eot, do_sample=False, max_new_tokens=max_new_tokens
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
    tokenizer = build_tokenizer([m["content"] for chat in chats for m in chat])
    size = size_starter(tokenizer, chats, cfg)
    cfg = size.cfg
    model = build_model(tokenizer, seed=cfg.seed, shape=size.shape, max_new_tokens=size.max_new_tokens)
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
            "builds": builds(scratch / ONNX_DIR),
            "shape": size.shape,
            "corpus": size.corpus,
            # What answers need: the bot serves BOT_MAX_NEW_TOKENS (default 96); set it to this for this model.
            "max_new_tokens": size.max_new_tokens,
            "final_loss": losses[-1],
            "seconds": round(time.perf_counter() - began, 1),
        },
    )
    registry.promote(version)
    log.info(
        "starter model %s: %d parameters, %d chats (%d tokens), %d steps, max_len %d, final loss %.4f, %.0f s",
        version,
        model.num_parameters(),
        len(chats),
        size.corpus["tokens"],
        cfg.steps,
        cfg.max_len,
        losses[-1],
        time.perf_counter() - began,
    )
    return version
