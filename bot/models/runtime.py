"""Model runtime: a Qwen chat model served through ONNX Runtime (optimum's ORTModelForCausalLM)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime
from optimum.onnxruntime import ORTModelForCausalLM
from transformers import AutoTokenizer

from bot.models.export import ensure_onnx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 96
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = its default, one per core


class ChatModel:
    """One loaded model version. `generate` blocks: call it off the event loop."""

    def __init__(self, version: str, onnx_dir: Path, settings: GenerationSettings) -> None:
        self.version = version
        self.settings = settings
        self.tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
        providers = [
            p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in onnxruntime.get_available_providers()
        ]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = settings.threads
        self.model = ORTModelForCausalLM.from_pretrained(
            onnx_dir, use_cache=True, provider=providers[0], session_options=options
        )
        self.max_positions = int(getattr(self.model.config, "max_position_embeddings", 2048))
        stops = [self.tokenizer.convert_tokens_to_ids("<|im_end|>"), self.tokenizer.eos_token_id]
        self.stop_ids = sorted({s for s in stops if isinstance(s, int) and s >= 0})

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, messages: list[dict[str, str]], max_time: float | None = None) -> str:
        import torch

        ids = torch.tensor([self.prompt_ids(messages)])
        s = self.settings
        sampling: dict[str, Any] = {"do_sample": False}
        if s.temperature > 0:
            sampling = {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p}
        output = self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=s.max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=self.stop_ids[-1],
            repetition_penalty=s.repetition_penalty,
            max_time=max_time,
            **sampling,
        )
        return self.tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True).strip()


def load_model(source: str, version: str, cache_root: Path, settings: GenerationSettings) -> ChatModel:
    """Hub id, local folder (PyTorch or ONNX) or GGUF file; exported to ONNX on first load."""
    return ChatModel(version, ensure_onnx(source, cache_root), settings)
