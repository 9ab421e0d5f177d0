"""The dialogue manager: every message, from any channel, runs the same named steps in order.

    check input -> deduplicate -> mask personal data -> input filter -> context -> answer cache
    -> model -> output filter -> persist -> reply

A step reads and updates one `Turn`. A step that settles the answer sets `turn.answer` (later
answer-making steps then stand aside); one that ends the turn outright sets `turn.done`.
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import timedelta

from prometheus_client import Counter, Histogram

from bot.cache import AnswerCache
from bot.message import BotReply, UserMessage
from bot.model import ChatModel, ModelPool
from bot.privacy import mask_personal_data
from bot.store import Store
from bot.wordfilter import WordFilter

log = logging.getLogger(__name__)
MESSAGES = Counter("bot_messages", "Messages handled", ["channel", "outcome"])
LATENCY = Histogram("bot_answer_seconds", "Time from message to reply", ["cached"],
                    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2.5, 5, 10, 30))
RESET_COMMANDS = {"/reset", "reset"}
TEMPLATE_TOKENS = 5  # ChatML around one message: <|im_start|> role \n ... <|im_end|> \n


class Replies:
    """Canned replies, in the customer's script where it is Chinese."""

    @staticmethod
    def pick(text: str, en: str, zh: str) -> str:
        return zh if any("\u4e00" <= ch <= "\u9fff" for ch in text) else en

    EMPTY = ("Please type your question.", "请输入您的问题。")
    TOO_LONG = ("Your message is too long for me. Please send a shorter question.", "您的消息太长了,请发送更简短的问题。")
    BLOCKED = ("Sorry, I can't help with that. A human agent can take it from here.", "抱歉,这个问题我无法回答,人工客服会为您处理。")
    FALLBACK = ("Sorry, I can't answer right now. Please try again in a moment or ask for a human agent.",
                "抱歉,我暂时无法回答,请稍后再试或联系人工客服。")
    RESET = ("Started a new conversation.", "已开始新的对话。")


@dataclass
class Turn:
    message: UserMessage
    text: str
    started: float = field(default_factory=time.perf_counter)
    session: int = 0
    prompt: list[dict[str, str]] = field(default_factory=list)
    context_free: bool = True
    model: ChatModel | None = None
    variant: str = "current"
    model_version: str = ""
    answer: str | None = None
    outcome: str = "answered"  # answered | blocked | fallback | too_long | empty | reset
    cached: bool = False
    duplicate: bool = False
    done: bool = False
    turn_id: int | None = None

    def settle(self, answer: str, outcome: str) -> None:
        self.answer, self.outcome = answer, outcome




@dataclass
class Context:
    """What the steps share: the store, the model pool and the settings they need."""
    store: Store
    models: ModelPool
    words: WordFilter
    cache: AnswerCache
    system_prompt: str
    context_tokens: int
    max_new_tokens: int
    max_chars: int
    idle: timedelta
    registry_poll_s: float = 2.0


class Step:
    """One named stage of the pipeline; it reads and updates the turn."""
    name = "step"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def __call__(self, turn: Turn) -> None:
        raise NotImplementedError


def _reply(turn: Turn, canned: tuple[str, str]) -> str:
    return Replies.pick(turn.message.text, *canned)


class CheckInput(Step):
    name = "check_input"

    async def __call__(self, turn: Turn) -> None:
        # Control characters (other than newlines and tabs) carry nothing a customer meant to say.
        turn.text = "".join(ch for ch in turn.text if ch in "\n\t" or unicodedata.category(ch)[0] != "C").strip()
        if not turn.text:
            turn.settle(_reply(turn, Replies.EMPTY), "empty")
            turn.done = True
        elif len(turn.text) > self.ctx.max_chars:
            turn.settle(_reply(turn, Replies.TOO_LONG), "too_long")
            turn.text = turn.text[: self.ctx.max_chars]


class Deduplicate(Step):
    """A message seen before (a platform redelivery) gets the answer it already got, once stored."""
    name = "deduplicate"

    async def __call__(self, turn: Turn) -> None:
        earlier = await self.ctx.store.turn_for_message(turn.message.channel, turn.message.message_id)
        if earlier:
            turn.settle(earlier.answer, earlier.outcome)
            turn.turn_id, turn.cached, turn.duplicate, turn.done = earlier.id, earlier.cached, True, True
            turn.variant, turn.model_version = earlier.variant, earlier.model_version


class MaskPersonalData(Step):
    name = "mask_personal_data"

    async def __call__(self, turn: Turn) -> None:
        turn.text = mask_personal_data(turn.text)


class InputFilter(Step):
    name = "input_filter"

    async def __call__(self, turn: Turn) -> None:
        verdict = self.ctx.words.check(turn.text)
        turn.text = verdict.text
        if verdict.blocked and turn.answer is None:
            turn.settle(_reply(turn, Replies.BLOCKED), "blocked")
        if verdict.categories:
            await self.ctx.store.audit(turn.message.sender, "input_filtered", categories=sorted(verdict.categories),
                                       blocked=verdict.blocked, message_id=turn.message.message_id)


class BuildContext(Step):
    """System prompt plus the latest turns of this session that fit the token budget."""
    name = "build_context"

    async def __call__(self, turn: Turn) -> None:
        msg, store = turn.message, self.ctx.store
        if turn.text.casefold() in RESET_COMMANDS:
            turn.session = await store.new_session(msg.channel, msg.conversation_id)
            turn.settle(_reply(turn, Replies.RESET), "reset")
            turn.done = True
            return
        turn.session = await store.session_for(msg.channel, msg.conversation_id, self.ctx.idle)
        if turn.answer is not None:
            return
        turn.variant, turn.model = self.ctx.models.pick(msg.sender)
        model = turn.model
        turn.model_version = model.version
        budget = min(self.ctx.context_tokens, model.max_positions - self.ctx.max_new_tokens)
        system = [{"role": "system", "content": self.ctx.system_prompt}]
        question = [{"role": "user", "content": turn.text}]
        if len(model.prompt_ids(system + question)) > budget:
            turn.settle(_reply(turn, Replies.TOO_LONG), "too_long")
            return
        # Each earlier turn is counted once (its texts plus the template's tokens around them), newest
        # first; re-rendering the whole prompt per turn would make long conversations quadratic.
        used = len(model.prompt_ids(system + question))
        history: list[dict[str, str]] = []
        for past in reversed(await store.history(msg.channel, msg.conversation_id, turn.session)):
            cost = model.count_tokens(past.user_text) + model.count_tokens(past.answer) + 2 * TEMPLATE_TOKENS
            if used + cost > budget:
                break
            used += cost
            history = [{"role": "user", "content": past.user_text}, {"role": "assistant", "content": past.answer}] + history
        while history and len(model.prompt_ids(system + history + question)) > budget:
            history = history[2:]  # the estimate fell short: the exact count decides
        turn.prompt = system + history + question
        turn.context_free = not history


class CachedAnswer(Step):
    name = "answer_cache"

    async def __call__(self, turn: Turn) -> None:
        if turn.answer is None and turn.context_free and turn.model:
            answer = self.ctx.cache.get(turn.text, turn.model.version)
            if answer is not None:
                turn.settle(answer, "answered")
                turn.cached = True


class GenerateAnswer(Step):
    name = "model"

    async def __call__(self, turn: Turn) -> None:
        if turn.answer is not None or turn.model is None:
            return
        try:
            answer = await self.ctx.models.generate(turn.model, turn.prompt)
        except asyncio.TimeoutError:
            log.warning("model %s timed out on %s", turn.model.version, turn.message.message_id)
            answer = ""
        except Exception:
            log.exception("model %s failed on %s", turn.model.version, turn.message.message_id)
            answer = ""
        if not answer:
            turn.settle(_reply(turn, Replies.FALLBACK), "fallback")
            return
        turn.settle(answer, "answered")
        if turn.context_free:
            self.ctx.cache.put(turn.text, turn.model.version, answer)


class OutputFilter(Step):
    name = "output_filter"

    async def __call__(self, turn: Turn) -> None:
        if turn.outcome != "answered" or turn.answer is None:
            return
        verdict = self.ctx.words.check(turn.answer)
        if verdict.blocked:
            turn.settle(_reply(turn, Replies.BLOCKED), "blocked")
        else:
            turn.answer = verdict.text
        if verdict.categories:
            await self.ctx.store.audit("bot", "output_filtered", categories=sorted(verdict.categories),
                                       blocked=verdict.blocked, message_id=turn.message.message_id)


class Persist(Step):
    name = "persist"

    async def __call__(self, turn: Turn) -> None:
        msg = turn.message
        version = turn.model_version or self.ctx.models.version_of("current")
        try:
            turn.turn_id = await self.ctx.store.add_turn(
                channel=msg.channel, conversation_id=msg.conversation_id, session=turn.session, user_id=msg.user_id,
                message_id=msg.message_id, user_text=turn.text, answer=turn.answer or "", model_version=version,
                variant=turn.variant, latency_ms=(time.perf_counter() - turn.started) * 1000, cached=turn.cached,
                outcome=turn.outcome)
        except sqlite3.IntegrityError:  # the same message raced in twice: keep the first answer
            earlier = await self.ctx.store.turn_for_message(msg.channel, msg.message_id)
            assert earlier is not None
            turn.settle(earlier.answer, earlier.outcome)
            turn.turn_id, turn.duplicate = earlier.id, True


STEPS: tuple[type[Step], ...] = (CheckInput, Deduplicate, MaskPersonalData, InputFilter, BuildContext, CachedAnswer,
                           GenerateAnswer, OutputFilter, Persist)


class DialogueManager:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.steps: list[Step] = [cls(ctx) for cls in STEPS]

    async def handle(self, message: UserMessage) -> BotReply:
        turn = Turn(message, message.text)
        for step in self.steps:
            await step(turn)
            if turn.done:
                break
        MESSAGES.labels(message.channel, "duplicate" if turn.duplicate else turn.outcome).inc()
        LATENCY.labels(str(turn.cached).lower()).observe(time.perf_counter() - turn.started)
        version = turn.model_version or self.ctx.models.version_of("current")
        return BotReply(text=turn.answer or "", turn_id=turn.turn_id, cached=turn.cached, model_version=version,
                        duplicate=turn.duplicate)

    async def follow_registry(self) -> None:
        """Pick up promoted versions without a restart; answers in flight keep their model."""
        while True:
            await asyncio.sleep(self.ctx.registry_poll_s)
            try:
                if await self.ctx.models.refresh():
                    self.ctx.cache.clear()
                    log.info("model changed to %s; answer cache emptied", self.ctx.models.version_of("current"))
            except Exception:
                log.exception("could not load the registry's new model; still serving %s",
                              self.ctx.models.version_of("current"))
