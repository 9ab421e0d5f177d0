"""Wiring of the serving core: settings -> store, filter, model pool, dialogue manager, feedback."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bot.cache import AnswerCache
from bot.config import BotSettings, ConfigError, parse_model_backends
from bot.feedback import Feedback
from bot.handoff import HandOff
from bot.limits import UserLimits
from bot.models.backends import Balancer, build_balancer
from bot.models.pool import ModelPool
from bot.models.runtime import GenerationSettings
from bot.pipeline import DialogueManager, StepDeps
from bot.shared import SharedState
from bot.store import Store, open_store
from bot.wordfilter import WordFilter, load_allowlist, load_lexicon

log = logging.getLogger(__name__)
PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_LEXICON = PROJECT / "data" / "lexicon" / "default.txt"
DEFAULT_ALLOWLIST = PROJECT / "data" / "lexicon" / "allow.txt"


@dataclass
class Bot:
    settings: BotSettings
    store: Store
    models: ModelPool
    backends: Balancer
    dialogue: DialogueManager
    feedback: Feedback
    cache: AnswerCache
    handoff: HandOff
    shared: SharedState | None = None  # Redis (BOT_REDIS_URL), when the workers share state

    async def close(self) -> None:
        await self.backends.close()
        self.models.close()
        await self.store.close()
        if self.shared:
            await self.shared.close()


def build_word_filter(settings: BotSettings) -> WordFilter:
    entries = [e for path in [DEFAULT_LEXICON, *settings.paths(settings.lexicons)] for e in load_lexicon(path)]
    allow = [w for path in [DEFAULT_ALLOWLIST, *settings.paths(settings.allowlists)] for w in load_allowlist(path)]
    return WordFilter(entries, allow, settings.policies)


async def build_bot(settings: BotSettings) -> Bot:
    for path in settings.paths(settings.lexicons) + settings.paths(settings.allowlists):
        if not path.exists():
            raise ConfigError(f"config error: BOT_LEXICONS/BOT_ALLOWLISTS: no such file {path}")
    shared = await SharedState.connect(settings)
    store = await open_store(settings)
    generation = GenerationSettings(
        settings.max_new_tokens,
        settings.temperature,
        settings.top_p,
        settings.repetition_penalty,
        settings.model_threads,
        settings.model_concurrency,
    )
    models = ModelPool(
        settings.data_dir,
        generation,
        settings.model_timeout_s,
        settings.model_queue,
        external_model=settings.model,
        system_prompt=settings.system_prompt,
    )
    began = time.perf_counter()
    await asyncio.get_running_loop().run_in_executor(None, models.load)
    log.info("model %s loaded and warmed up in %.1f s", models.version_of("current"), time.perf_counter() - began)
    backends = build_balancer(
        parse_model_backends(settings.model_backends), models, generation, settings.model_timeout_s
    )
    await backends.start()
    cache = AnswerCache(settings.cache_size, settings.cache_ttl_s, shared)
    limits = UserLimits(
        settings.user_rate_limit,
        settings.user_rate_period_s,
        settings.blocked_cooldown_after,
        settings.blocked_cooldown_s,
        shared,
    )
    feedback = Feedback.from_settings(store, settings)
    if not settings.handoff_phrases:
        log.info("hand-off to a person is off: no agent is configured (AGENT_IDS, ADMIN_IDS or agent API keys)")
    words = build_word_filter(settings)
    handoff = HandOff(
        store,
        feedback.roles,
        settings.handoff_phrases,
        timedelta(minutes=settings.handoff_timeout_minutes),
        settings.session_idle,
        words,
    )
    deps = StepDeps(
        store=store,
        models=models,
        backends=backends,
        words=words,
        cache=cache,
        limits=limits,
        handoff=handoff,
        settings=settings,
        shared=shared,
    )
    return Bot(settings, store, models, backends, DialogueManager(deps), feedback, cache, handoff, shared)
