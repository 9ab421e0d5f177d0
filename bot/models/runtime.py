"""Model runtime: a Qwen chat model served through ONNX Runtime (optimum's ORTModelForCausalLM),
and the pool that follows the registry so a promoted version serves without a restart."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime
from optimum.onnxruntime import ORTModelForCausalLM
from transformers import AutoTokenizer

from tuning.export import ensure_onnx
from tuning.registry import Registry

log = logging.getLogger(__name__)


class ModelUnavailable(Exception):
    pass


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
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in onnxruntime.get_available_providers()]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = settings.threads
        self.model = ORTModelForCausalLM.from_pretrained(onnx_dir, use_cache=True, provider=providers[0],
                                                         session_options=options)
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
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=s.max_new_tokens,
            eos_token_id=self.stop_ids, pad_token_id=self.stop_ids[-1], repetition_penalty=s.repetition_penalty,
            max_time=max_time, **sampling,
        )
        return self.tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip()


def load_model(source: str, version: str, cache_root: Path, settings: GenerationSettings) -> ChatModel:
    """Hub id, local folder (PyTorch or ONNX) or GGUF file; exported to ONNX on first load."""
    return ChatModel(version, ensure_onnx(source, cache_root), settings)


class ModelPool:
    """The serving model (and an A/B candidate), reloaded when the registry changes.

    Answers already running keep the model object they started with, so a swap drops nothing.
    Inference runs in a thread pool sized to the allowed concurrency, with a deadline.
    """

    def __init__(self, data_dir: Path, settings: GenerationSettings, concurrency: int, timeout_s: float,
                 external_model: str = "") -> None:
        self.registry = Registry(data_dir)
        self.cache_root = data_dir / "exports"
        self.settings = settings
        self.timeout_s = timeout_s
        self.external_model = external_model
        self.current: ChatModel | None = None
        self.candidate: ChatModel | None = None
        self.ab_share = 0.0
        self._stamp: float | None = None
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="model")
        self._reload_lock = asyncio.Lock()

    def load(self) -> None:
        """Load what the registry (or BOT_MODEL) names; blocking, for start-up."""
        if self.external_model:
            name = "external:" + Path(self.external_model).name
            self.current = load_model(self.external_model, name, self.cache_root, self.settings)
            return
        self._stamp = self.registry.state_stamp()
        state = self.registry.state()
        if not state.current:
            raise ModelUnavailable("no current model version in the registry")
        self.current = self._load_version(state.current, self.current)
        self.candidate = self._load_version(state.candidate, self.candidate) if state.candidate and state.ab_share > 0 else None
        self.ab_share = state.ab_share if self.candidate else 0.0
        log.info("serving model %s%s", state.current,
                 f", candidate {state.candidate} for {self.ab_share:.0%} of users" if self.candidate else "")

    def _load_version(self, version: str, loaded: ChatModel | None) -> ChatModel:
        if loaded and loaded.version == version:
            return loaded
        return ChatModel(version, self.registry.path(version) / "onnx", self.settings)

    async def refresh(self) -> bool:
        """Reload if the registry changed since the last look; True when something changed."""
        if self.external_model or self.registry.state_stamp() == self._stamp:
            return False
        async with self._reload_lock:
            if self.registry.state_stamp() == self._stamp:
                return False
            before = (self.version_of("current"), self.version_of("candidate"), self.ab_share)
            await asyncio.get_running_loop().run_in_executor(None, self.load)
            return before != (self.version_of("current"), self.version_of("candidate"), self.ab_share)

    def version_of(self, variant: str) -> str:
        model = self.candidate if variant == "candidate" else self.current
        return model.version if model else ""

    def pick(self, user_key: str) -> tuple[str, ChatModel]:
        """A/B split, sticky per user: the same user always lands in the same bucket."""
        if self.current is None:
            raise ModelUnavailable("no model loaded")
        if self.candidate and self.ab_share > 0:
            bucket = int.from_bytes(hashlib.sha256(user_key.encode()).digest()[:4], "big") / 2**32
            if bucket < self.ab_share:
                return "candidate", self.candidate
        return "current", self.current

    async def generate(self, model: ChatModel, messages: list[dict[str, str]]) -> str:
        loop = asyncio.get_running_loop()
        began = time.perf_counter()
        # max_time makes generate itself stop near the deadline, so a slow answer frees its thread.
        job = loop.run_in_executor(self._executor, model.generate, messages, self.timeout_s)
        answer = await asyncio.wait_for(job, timeout=self.timeout_s + 1.0)
        if time.perf_counter() - began > self.timeout_s:
            raise asyncio.TimeoutError
        return answer

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
