"""The serving models: the registry's current version (and an A/B candidate), reloaded when the
registry changes so a promoted version serves without a restart."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client import Gauge

from bot.models.chat import with_system
from bot.models.export import GENAI_CONFIG, ensure_onnx
from bot.models.registry import Registry
from bot.models.runtime import ChatModel, GenerationSettings, OnText, load_model

log = logging.getLogger(__name__)
RETRY_LOAD_S = 60.0  # a registry state that failed to load is tried again this often
WAITING = Gauge("bot_model_queue", "Answers waiting for a free model slot")


class ModelUnavailable(Exception):
    pass


class ModelBusy(Exception):
    """More answers are waiting for the model than the queue holds, or one waited past the deadline."""


class ModelPool:
    """The serving model (and an A/B candidate), reloaded when the registry changes.

    Answers already running keep the model object they started with, so a swap drops nothing.
    Up to `settings.max_batch` answers generate at once, decoded together in one batch (their threads
    only wait). At most `queue_limit` more wait for a place, in arrival order, each for at most the
    deadline; one that gives up never starts. The deadline of an answer counts from the moment its
    generation starts, not from when it began to wait.
    """

    def __init__(
        self,
        data_dir: Path,
        settings: GenerationSettings,
        timeout_s: float,
        queue_limit: int,
        external_model: str = "",
        system_prompt: str = "",
    ) -> None:
        """`system_prompt` starts the warm-up answer each model gives before it serves anyone."""
        self.registry = Registry(data_dir)
        self.cache_root = data_dir / "exports"
        self.settings = settings
        self.timeout_s = timeout_s
        self.external_model = external_model
        self.system_prompt = system_prompt
        self.current: ChatModel | None = None
        self.candidate: ChatModel | None = None
        self.ab_share = 0.0
        self._stamp: float | None = None
        # Why the registry's newest state could not be loaded (None: it serves what the registry says),
        # and when that was: it is tried again after RETRY_LOAD_S, or at once when the registry changes.
        self.load_error: str | None = None
        self._failed_stamp: float | None = None
        self._failed_at = 0.0
        concurrency = settings.max_batch
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="model")
        self._slots = asyncio.Semaphore(concurrency)
        self._capacity = concurrency + queue_limit  # answers generating plus answers waiting
        self._in_flight = 0
        self._reload_lock = asyncio.Lock()

    def load(self) -> None:
        """Load what the registry (or BOT_MODEL) names; blocking, for start-up."""
        if self.external_model:
            name = "external:" + Path(self.external_model).name
            self.current = self._warmed(load_model(self.external_model, name, self.cache_root, self.settings))
            return
        stamp = self.registry.state_stamp()
        state = self.registry.state()
        if not state.current:
            raise ModelUnavailable("no current model version in the registry")
        self.current = self._load_version(state.current, self.current)
        self.candidate = (
            self._load_version(state.candidate, self.candidate) if state.candidate and state.ab_share > 0 else None
        )
        self.ab_share = state.ab_share if self.candidate else 0.0
        self._stamp, self.load_error = stamp, None
        log.info(
            "serving model %s%s",
            state.current,
            f", candidate {state.candidate} for {self.ab_share:.0%} of users" if self.candidate else "",
        )

    def _warmed(self, model: ChatModel) -> ChatModel:
        """`model` after one short answer, given before it serves anyone (at start and before a hot swap),
        so no customer pays for the runtime's first-run allocations."""
        model.generate(with_system(self.system_prompt, [{"role": "user", "content": "hello"}]))
        return model

    def _load_version(self, version: str, loaded: ChatModel | None) -> ChatModel:
        if loaded and loaded.version == version:
            return loaded
        folder = self.registry.onnx_dir(version)
        if not (folder / GENAI_CONFIG).exists():  # built for the previous runtime: rebuilt from its weights once
            folder = ensure_onnx(str(self.registry.hf_dir(version)), self.cache_root)
        return self._warmed(ChatModel(version, folder, self.settings))

    async def refresh(self) -> bool:
        """Reload if the registry changed since the last look; True when something changed. A state that
        failed to load keeps the models serving as they are, and is tried again after RETRY_LOAD_S."""
        if self.external_model or not self._due():
            return False
        async with self._reload_lock:
            if not self._due():
                return False
            before = (self.version_of("current"), self.version_of("candidate"), self.ab_share)
            stamp = self.registry.state_stamp()
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.load)
            except Exception as exc:
                self.load_error = f"{type(exc).__name__}: {exc}"
                self._failed_stamp, self._failed_at = stamp, time.monotonic()
                raise
            return before != (self.version_of("current"), self.version_of("candidate"), self.ab_share)

    def _due(self) -> bool:
        """Whether the registry's state is new since the last load (or the last failed one), or failed long enough ago."""
        stamp = self.registry.state_stamp()
        if stamp == self._stamp:
            return False
        return stamp != self._failed_stamp or time.monotonic() - self._failed_at >= RETRY_LOAD_S

    def version_of(self, variant: str) -> str:
        model = self.candidate if variant == "candidate" else self.current
        return model.version if model else ""

    def model_for(self, version: str) -> ChatModel:
        """The loaded model of `version`, else the current one (a hot swap may have retired `version`)."""
        if self.candidate and self.candidate.version == version:
            return self.candidate
        if self.current is None:
            raise ModelUnavailable("no model loaded")
        return self.current

    def variant_of(self, version: str) -> str:
        """The A/B variant whose model is `version`: the candidate's, else the current one's."""
        return "candidate" if self.candidate and self.candidate.version == version else "current"

    @property
    def versions(self) -> set[str]:
        return {m.version for m in (self.current, self.candidate) if m}

    @property
    def in_flight(self) -> int:
        """Answers generating or waiting for a slot."""
        return self._in_flight

    def pick(self, user_key: str) -> tuple[str, ChatModel]:
        """A/B split, sticky per user: the same user always lands in the same bucket."""
        if self.current is None:
            raise ModelUnavailable("no model loaded")
        if self.candidate and self.ab_share > 0:
            bucket = int.from_bytes(hashlib.sha256(user_key.encode()).digest()[:4], "big") / 2**32
            if bucket < self.ab_share:
                return "candidate", self.candidate
        return "current", self.current

    async def generate(
        self,
        model: ChatModel,
        messages: list[dict[str, str]],
        on_text: OnText | None = None,
        max_time: float | None = None,
    ) -> str:
        """The answer; ModelBusy when the queue is full or the wait too long, TimeoutError past the deadline.
        `on_text` (called from the model's thread) sees the answer as it grows (ChatModel.generate).
        `max_time` (default: the timeout) bounds the wait for a slot and, from its start, the generation."""
        limit = self.timeout_s if max_time is None else max_time
        if self._in_flight >= self._capacity:
            raise ModelBusy(f"{self._in_flight} answers are generating or waiting already")
        self._in_flight += 1
        try:
            if self._slots.locked():
                with WAITING.track_inprogress():
                    await asyncio.wait_for(self._slots.acquire(), timeout=limit)
            else:  # a free slot is taken however little time is left: generation then stops at the limit
                await self._slots.acquire()
        except asyncio.TimeoutError:
            self._in_flight -= 1
            raise ModelBusy(f"no model slot free within {limit:.3g} s") from None
        try:
            began = time.perf_counter()
            # max_time makes generate itself stop near the deadline, so a slow answer frees its thread.
            job = asyncio.get_running_loop().run_in_executor(self._executor, model.generate, messages, limit, on_text)
            answer = await asyncio.wait_for(job, timeout=limit + 1.0)
            if time.perf_counter() - began > limit:
                raise asyncio.TimeoutError
            return answer
        finally:
            self._slots.release()
            self._in_flight -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.current = self.candidate = None  # a model is freed when its last reference goes
