"""Model runtime: a Qwen chat model served through ONNX Runtime GenAI (onnxruntime-genai).

The model folder is onnxruntime-genai's build (`bot.models.export`): fused grouped-query attention,
a KV cache in one shared buffer, and a native token loop; Python only appends the prompt and reads
tokens. The tokenizer and chat template are the Hugging Face ones saved beside it, so prompts (and
token counts for the context budget) are exactly what training used.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnxruntime_genai as og
from transformers import AutoTokenizer

from bot.models.export import ensure_onnx

log = logging.getLogger(__name__)
# Called with the answer so far during generation; returning False stops it.
OnText = Callable[[str], bool]


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 96
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = one per core


class ChatModel:
    """One loaded model version. `generate` blocks: call it off the event loop (one model serves any
    number of concurrent generations, each with its own generator)."""

    def __init__(self, version: str, onnx_dir: Path, settings: GenerationSettings) -> None:
        self.version = version
        self.settings = settings
        self.tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
        config = og.Config(str(onnx_dir))
        # Threads set explicitly: with its default session options the runtime decodes at about half speed.
        options = {"intra_op_num_threads": settings.threads or os.cpu_count() or 1, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = og.Model(config)
        genai_config = json.loads((onnx_dir / "genai_config.json").read_text())
        self.max_positions = int(genai_config["model"]["context_length"])

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(
        self, messages: list[dict[str, str]], max_time: float | None = None, on_text: OnText | None = None
    ) -> str:
        """The answer to the chat; with `max_time`, generation stops after that many seconds. `on_text`
        gets the answer so far after every token that completes a character, and stops generation by
        returning False (a cancelled stream)."""
        ids = self.prompt_ids(messages)
        s = self.settings
        params = og.GeneratorParams(self.model)
        search: dict[str, float | int | bool] = {
            "max_length": min(len(ids) + s.max_new_tokens, self.max_positions),
            "repetition_penalty": s.repetition_penalty,
            "do_sample": s.temperature > 0,
        }
        if s.temperature > 0:
            search |= {"temperature": s.temperature, "top_p": s.top_p}
        params.set_search_options(**search)
        generator = og.Generator(self.model, params)
        deadline = time.perf_counter() + max_time if max_time else float("inf")
        generator.append_tokens(ids)
        tokens: list[int] = []
        while not generator.is_done() and time.perf_counter() < deadline:
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
            if on_text is not None:
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                # A character split over tokens decodes as U+FFFD until its last byte arrives: not shown.
                if not text.endswith("\ufffd") and not on_text(text.strip()):
                    break
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()


def load_model(source: str, version: str, cache_root: Path, settings: GenerationSettings) -> ChatModel:
    """Hub id, local folder (PyTorch or built) or GGUF file; built on first load."""
    return ChatModel(version, ensure_onnx(source, cache_root), settings)
