"""Model runtime: a Qwen chat model served through ONNX Runtime, answers decoded in one batch.

The model folder is onnxruntime-genai's build (`bot.models.export`): fused grouped-query attention,
INT4 weights with accuracy level 4 and an int8 twin for runs of many rows. Generation is `bot.models.batching`: every answer in progress
advances one token per model run, together, so concurrent customers share each pass over the weights.
The tokenizer and chat template are the Hugging Face ones saved beside the build, so prompts (and
token counts for the context budget) are exactly what training used.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer

from bot.models.batching import Decoder, Request, Search
from bot.models.export import ensure_onnx

# Called with the answer so far during generation; returning False stops it.
OnText = Callable[[str], bool]


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 96
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = one per core
    max_batch: int = 8  # answers decoded together; more wait for a place in the batch


class ChatModel:
    """One loaded model version. `generate` blocks: call it off the event loop, from as many threads
    as answers may run at once; they are decoded together."""

    def __init__(self, version: str, onnx_dir: Path, settings: GenerationSettings) -> None:
        self.version = version
        self.settings = settings
        self.tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
        self.decoder = Decoder(onnx_dir, settings.threads or os.cpu_count() or 1, settings.max_batch)
        self.max_positions = self.decoder.context
        self.search = Search(settings.temperature, settings.top_p, settings.repetition_penalty)
        self._system_ids: dict[str, list[int]] = {}

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(
        self, messages: list[dict[str, str]], max_time: float | None = None, on_text: OnText | None = None
    ) -> str:
        """The answer to the chat; with `max_time`, generation stops after that many seconds. `on_text`
        gets the answer so far as it grows, and stops generation by returning False (a cancelled stream)."""
        ids = self.prompt_ids(messages)
        room = min(self.settings.max_new_tokens, self.max_positions - len(ids))
        if room <= 0:
            return ""
        request = Request(ids, room, self.search, self._shared_start(messages, ids), self._reader(on_text))
        self.decoder.submit(request)
        if not request.done.wait(max_time):  # past the deadline: leave the batch, keep what was said
            request.cancel()
        if request.error is not None:
            raise request.error
        return self.tokenizer.decode(request.tokens[:], skip_special_tokens=True).strip()

    def _reader(self, on_text: OnText | None) -> Callable[[list[int]], bool] | None:
        """`on_text` fed with the answer so far, each time a token completes a character."""
        if on_text is None:
            return None

        def read(tokens: list[int]) -> bool:
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            # A character split over tokens decodes as U+FFFD until its last byte arrives: not shown yet.
            return text.endswith("\ufffd") or on_text(text.strip())

        return read

    def _shared_start(self, messages: list[dict[str, str]], ids: list[int]) -> int:
        """How many of the prompt's first tokens are its system message, which every prompt repeats."""
        if not messages or messages[0]["role"] != "system":
            return 0
        text = messages[0]["content"]
        if text not in self._system_ids:
            self._system_ids[text] = self.tokenizer.apply_chat_template(messages[:1], tokenize=True)
        start = self._system_ids[text]
        return len(start) if len(start) < len(ids) and ids[: len(start)] == start else 0


def load_model(source: str, version: str, cache_root: Path, settings: GenerationSettings) -> ChatModel:
    """Hub id, local folder (PyTorch or built) or GGUF file; built on first load."""
    return ChatModel(version, ensure_onnx(source, cache_root), settings)
