"""Wiring: settings -> store, filter, model pool, dialogue manager, feedback; then the channels."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from aiohttp import web

from bot.cache import AnswerCache
from bot.config import BotSettings
from bot.feedback import Feedback
from bot.model import GenerationSettings, ModelPool
from bot.pipeline import Context, DialogueManager
from bot.store import Store
from bot.wordfilter import WordFilter, load_allowlist, load_lexicon

log = logging.getLogger(__name__)
PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_LEXICON = PROJECT / "data" / "lexicon" / "default.txt"
DEFAULT_ALLOWLIST = PROJECT / "data" / "lexicon" / "allow.txt"
# Request bodies up to this size reach the handlers, which answer oversize text with a JSON error.
MAX_REQUEST_BYTES = 4 * 1024 * 1024


@dataclass
class Bot:
    settings: BotSettings
    store: Store
    models: ModelPool
    dialogue: DialogueManager
    feedback: Feedback
    cache: AnswerCache

    async def close(self) -> None:
        self.models.close()
        await self.store.close()


class Channel(Protocol):
    """A channel adapter: translates one platform to and from UserMessage/BotReply."""
    name: str

    def add_routes(self, app: web.Application) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def build_word_filter(settings: BotSettings) -> WordFilter:
    entries = [e for path in [DEFAULT_LEXICON, *settings.paths(settings.lexicons)] for e in load_lexicon(path)]
    allow = [w for path in [DEFAULT_ALLOWLIST, *settings.paths(settings.allowlists)] for w in load_allowlist(path)]
    return WordFilter(entries, allow, settings.policies)


def ensure_model(settings: BotSettings) -> None:
    """With no model configured and none registered, build the starter model from data/."""
    from tuning.registry import Registry

    if settings.model or Registry(settings.data_dir).state().current:
        return
    log.info("no model in %s yet: building the starter model from data/sample (a few minutes on 2 cores, once)", settings.data_dir)
    from tuning.bootstrap import bootstrap

    bootstrap(settings.data_dir, settings.system_prompt)


async def build_bot(settings: BotSettings) -> Bot:
    for path in settings.paths(settings.lexicons) + settings.paths(settings.allowlists):
        if not path.exists():
            from bot.config import ConfigError

            raise ConfigError(f"config error: BOT_LEXICONS/BOT_ALLOWLISTS: no such file {path}")
    store = await Store.open(settings.data_dir / "bot.sqlite3")
    generation = GenerationSettings(settings.max_new_tokens, settings.temperature, settings.top_p,
                                    settings.repetition_penalty, settings.model_threads)
    models = ModelPool(settings.data_dir, generation, settings.model_concurrency, settings.model_timeout_s,
                       external_model=settings.model)
    await asyncio.get_running_loop().run_in_executor(None, models.load)
    cache = AnswerCache(settings.cache_size, settings.cache_ttl_s)
    ctx = Context(store=store, models=models, words=build_word_filter(settings), cache=cache,
                  system_prompt=settings.system_prompt, context_tokens=settings.context_tokens,
                  max_new_tokens=settings.max_new_tokens, max_chars=settings.max_message_chars,
                  idle=timedelta(minutes=settings.session_idle_minutes), registry_poll_s=settings.registry_poll_s)
    return Bot(settings, store, models, DialogueManager(ctx), Feedback(store, settings.agents), cache)
