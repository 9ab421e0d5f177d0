"""The dialogue manager: every message, from any channel, runs the same named steps in order.

    check input -> deduplicate -> mask personal data -> input filter -> context -> answer cache
    -> model -> output filter -> persist -> reply

A step reads and updates one `WorkingTurn`. The first step to settle the answer wins (`settle`);
steps that make an answer (`makes_answer`) are then skipped by the manager, and a step that ends
the turn outright sets `turn.done`. The manager times every step and tells its observers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import threading
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from prometheus_client import Counter, Histogram

from bot.cache import AnswerCache
from bot.config import BotSettings
from bot.handoff import HANDED_OFF, HandOff
from bot.limits import UserLimits
from bot.message import BotReply, UserMessage, pick_language, strip_control_tokens
from bot.models.backends import Balancer, Generated
from bot.models.chat import with_system
from bot.models.pool import RETRY_LOAD_S, ModelBusy, ModelPool
from bot.models.runtime import ChatModel
from bot.privacy import PLACEHOLDERS, mask_personal_data
from bot.shared import SharedState
from bot.store import Duplicate, Store
from bot.wordfilter import WordFilter

log = logging.getLogger(__name__)
MESSAGES = Counter("bot_messages", "Messages handled", ["channel", "outcome"])
BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2.5, 5, 10, 30)
LATENCY = Histogram("bot_answer_seconds", "Time from message to reply", ["cached"], buckets=BUCKETS)
MASKED = Counter("bot_masked", "Personal data masked in customers' messages", ["kind"])
FILTERED = Counter("bot_filtered", "Messages the word filter acted on", ["direction", "category", "action"])
STEP_SECONDS = Histogram("bot_step_seconds", "Time spent in each pipeline step", ["step"], buckets=BUCKETS)
RESET_COMMANDS = {"/reset", "reset"}
# Where a streamed answer may pause: after a clause (CJK punctuation, Latin punctuation before a space, a
# line break). The filter's words and maskable personal data never contain one of these.
CLAUSE_END = re.compile(r"[。！？；，、：…\n]|[.!?;,:](?=\s)")
# Shows a customer the text of a streamed answer so far (a channel's callback).
Stream = Callable[[str], Awaitable[None]]
TEMPLATE_TOKENS = 5  # ChatML around one message: <|im_start|> role \n ... <|im_end|> \n


class Replies:
    """Canned replies, (English, Chinese): in the customer's script where it is Chinese."""

    EMPTY = ("Please type your question.", "请输入您的问题。")
    TOO_LONG = (
        "Your message is too long for me. Please send a shorter question.",
        "您的消息太长了,请发送更简短的问题。",
    )
    BLOCKED = (
        "Sorry, I can't help with that. A human agent can take it from here.",
        "抱歉,这个问题我无法回答,人工客服会为您处理。",
    )
    FALLBACK = (
        "Sorry, I can't answer right now. Please try again in a moment or ask for a human agent.",
        "抱歉,我暂时无法回答,请稍后再试或联系人工客服。",
    )
    RESET = ("Started a new conversation.", "已开始新的对话。")
    RATE_LIMITED = (
        "You're sending messages very quickly. Please wait a moment, then ask again.",
        "您发送消息太频繁了,请稍等片刻再问。",
    )
    COOLING_DOWN = (
        "Let's take a short break; I can help again in a few minutes.",
        "请稍作休息,几分钟后我可以继续为您服务。",
    )
    BUSY = ("Many customers are asking right now. Please try again in a minute.", "当前咨询人数较多,请稍后再试。")
    HANDED_OFF = HANDED_OFF


@dataclass
class WorkingTurn:
    """One message on its way through the steps (what the store keeps afterwards is a `StoredTurn`)."""

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
    # answered | blocked | fallback | busy | too_long | empty | reset | rate_limited | cooling_down
    # | handed_off (asked for a person) | with_agent (agents have the conversation: the bot is silent)
    # | cancelled (the customer left while the answer streamed)
    outcome: str = "answered"
    cached: bool = False
    duplicate: bool = False
    done: bool = False
    turn_id: int | None = None
    stream: Stream | None = None
    cancelled: bool = False

    @property
    def settled(self) -> bool:
        return self.answer is not None

    def settle(self, answer: str, outcome: str) -> None:
        """Give the turn its answer, unless an earlier step already did."""
        if self.answer is None:
            self.answer, self.outcome = answer, outcome

    def canned(self, reply: tuple[str, str], outcome: str) -> None:
        self.settle(pick_language(reply, self.message.text), outcome)


@dataclass
class StepDeps:
    """What the steps depend on: the store, the models, the filter, the cache and the settings."""

    store: Store
    models: ModelPool
    backends: Balancer  # where answers are generated: the in-process model and any model servers
    words: WordFilter
    cache: AnswerCache
    limits: UserLimits
    handoff: HandOff
    settings: BotSettings
    shared: SharedState | None = None  # Redis (BOT_REDIS_URL): registry-change notices


class Step:
    """One named stage of the pipeline; it reads and updates the turn."""

    name: ClassVar[str] = "step"
    makes_answer: ClassVar[bool] = False  # True: skipped once an earlier step settled the answer

    def __init__(self, deps: StepDeps) -> None:
        self.deps = deps

    async def __call__(self, turn: WorkingTurn) -> None:
        raise NotImplementedError


class CheckInput(Step):
    """Clean the text (control characters and chat-template tokens out, cut at the length limit). An
    empty message ends the turn; a user over their message rate, or cooling down after blocked words,
    gets a polite reply and no model call; `/reset` starts a new session; an overlong message is asked
    to be brief."""

    name = "check_input"

    async def __call__(self, turn: WorkingTurn) -> None:
        # Control characters (other than newlines and tabs) carry nothing a customer meant to say.
        text = "".join(ch for ch in turn.text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
        turn.text = strip_control_tokens(text).strip()
        limit, sender = self.deps.settings.max_message_chars, turn.message.sender
        too_long = len(turn.text) > limit
        turn.text = turn.text[:limit]
        if not turn.text:
            turn.canned(Replies.EMPTY, "empty")
            turn.done = True
        elif await self.deps.limits.cooling_down(sender):
            turn.canned(Replies.COOLING_DOWN, "cooling_down")
        elif not await self.deps.limits.allow(sender):
            turn.canned(Replies.RATE_LIMITED, "rate_limited")
        elif turn.text.casefold() in RESET_COMMANDS:
            msg = turn.message
            turn.session = await self.deps.store.new_session(msg.channel, msg.conversation_id)
            turn.canned(Replies.RESET, "reset")
            turn.done = True
        elif too_long:
            turn.canned(Replies.TOO_LONG, "too_long")


class Deduplicate(Step):
    """A message seen before (a platform redelivery) gets the answer it already got, once stored."""

    name = "deduplicate"

    async def __call__(self, turn: WorkingTurn) -> None:
        earlier = await self.deps.store.turn_for_message(turn.message.channel, turn.message.message_id)
        if earlier:  # the stored answer wins over anything settled so far
            turn.answer, turn.outcome = earlier.answer, earlier.outcome
            turn.turn_id, turn.cached, turn.duplicate, turn.done = earlier.id, earlier.cached, True, True
            turn.variant, turn.model_version = earlier.variant, earlier.model_version


class MaskPersonalData(Step):
    name = "mask_personal_data"

    async def __call__(self, turn: WorkingTurn) -> None:
        masked = mask_personal_data(turn.text)
        if masked != turn.text:
            for placeholder in PLACEHOLDERS:
                if found := masked.count(placeholder) - turn.text.count(placeholder):
                    MASKED.labels(placeholder.strip("[]").lower()).inc(found)
        turn.text = masked


def count_filtered(direction: str, categories: Iterable[str], blocked: bool) -> None:
    for category in categories:
        FILTERED.labels(direction, category, "blocked" if blocked else "masked").inc()


class InputFilter(Step):
    name = "input_filter"

    async def __call__(self, turn: WorkingTurn) -> None:
        verdict = self.deps.words.check(turn.text)
        turn.text = verdict.text
        if verdict.blocked:
            turn.canned(Replies.BLOCKED, "blocked")
            await self.deps.limits.note_blocked(turn.message.sender)
        count_filtered("input", verdict.categories, verdict.blocked)
        if verdict.categories:
            await self.deps.store.audit(
                turn.message.sender,
                "input_filtered",
                categories=sorted(verdict.categories),
                blocked=verdict.blocked,
                message_id=turn.message.message_id,
            )


class HandOffToPerson(Step):
    """A conversation agents have gets no bot answer (the message is stored for them); asking for a
    person hands the conversation to agents (bot/handoff.py)."""

    name = "hand_off"
    makes_answer = True

    async def __call__(self, turn: WorkingTurn) -> None:
        msg, handoff = turn.message, self.deps.handoff
        if await handoff.active(msg.channel, msg.conversation_id):
            turn.settle("", "with_agent")
        elif handoff.asks_for_person(turn.text):
            await handoff.start(msg.channel, msg.conversation_id, msg.sender, "asked")
            turn.canned(Replies.HANDED_OFF, "handed_off")


class BuildContext(Step):
    """The session's model, and the system prompt plus the latest turns of this session that fit the
    token budget."""

    name = "build_context"
    makes_answer = True

    async def __call__(self, turn: WorkingTurn) -> None:
        msg, store, settings = turn.message, self.deps.store, self.deps.settings
        turn.session = await store.session_for(msg.channel, msg.conversation_id, settings.session_idle)
        turn.variant, turn.model = self.deps.models.pick(msg.sender)
        model = turn.model
        turn.model_version = model.version
        budget = min(settings.context_tokens, model.max_positions - settings.max_new_tokens)
        question = [{"role": "user", "content": turn.text}]
        used = len(model.prompt_ids(with_system(settings.system_prompt, question)))
        if used > budget:
            turn.canned(Replies.TOO_LONG, "too_long")
            return
        # Each earlier turn is counted once (its texts plus the template's tokens around them), newest
        # first; re-rendering the whole prompt per turn would make long conversations quadratic.
        history: list[dict[str, str]] = []
        for past in reversed(await store.history(msg.channel, msg.conversation_id, turn.session)):
            cost = model.count_tokens(past.user_text) + model.count_tokens(past.answer) + 2 * TEMPLATE_TOKENS
            if used + cost > budget:
                break
            used += cost
            history = [
                {"role": "user", "content": past.user_text},
                {"role": "assistant", "content": past.answer},
            ] + history
        while history and len(model.prompt_ids(with_system(settings.system_prompt, history + question))) > budget:
            history = history[2:]  # the estimate fell short: the exact count decides
        turn.prompt = with_system(settings.system_prompt, history + question)
        turn.context_free = not history


class CachedAnswer(Step):
    name = "answer_cache"
    makes_answer = True

    async def __call__(self, turn: WorkingTurn) -> None:
        if turn.context_free and turn.model:
            answer = await self.deps.cache.get(turn.text, turn.model.version)
            if answer is not None:
                turn.settle(answer, "answered")
                turn.cached = True


class GenerateAnswer(Step):
    name = "model"
    makes_answer = True

    async def __call__(self, turn: WorkingTurn) -> None:
        model = turn.model
        assert model is not None  # build_context picked it
        try:
            if turn.stream is None:
                generated = await self.deps.backends.generate(turn.prompt, model.version)
            else:
                generated = await self._streamed(turn, model, turn.stream)
            # Stored as the version that answered: a fallback may serve another than the A/B pick wanted.
            turn.model_version, turn.variant = generated.version, self.deps.models.variant_of(generated.version)
            answer = generated.text
        except ModelBusy as busy:
            log.warning("model busy on %s: %s", turn.message.message_id, busy)
            turn.canned(Replies.BUSY, "busy")
            return
        except asyncio.TimeoutError:
            log.warning("model %s timed out on %s", model.version, turn.message.message_id)
            answer = ""
        except Exception:
            log.exception("model %s failed on %s", model.version, turn.message.message_id)
            answer = ""
        if not answer:
            turn.canned(Replies.FALLBACK, "fallback")
            return
        if turn.cancelled:  # the customer left mid-stream: kept (filtered) as what was said, never cached
            turn.settle(answer, "cancelled")
            return
        turn.settle(answer, "answered")
        if turn.context_free:  # under the version that made it, which is what a later lookup asks for
            await self.deps.cache.put(turn.text, turn.model_version, answer)

    async def _streamed(self, turn: WorkingTurn, model: ChatModel, stream: Stream) -> Generated:
        """Generate while the customer is shown every completed clause, filtered as the whole answer will
        be (OutputFilter). Lexicon words and personal data never contain a clause end, so a shown text is
        never half of one. A clause the filter blocks stops generation (the answer then becomes the blocked
        reply); a stream that fails (the customer left) stops it too, and the turn is stored cancelled."""
        loop = asyncio.get_running_loop()
        texts: asyncio.Queue[str | None] = asyncio.Queue()
        stop = threading.Event()

        def on_text(text: str) -> bool:  # in the model's thread (a model server's: in the event loop)
            loop.call_soon_threadsafe(texts.put_nowait, text)
            return not stop.is_set()

        job = asyncio.ensure_future(self.deps.backends.generate(turn.prompt, model.version, on_text))
        job.add_done_callback(lambda _: texts.put_nowait(None))
        shown, finished = 0, False  # characters of the raw answer shown so far
        while not finished:
            batch = [await texts.get()]
            while not texts.empty():  # a slow channel skips to the newest text
                batch.append(texts.get_nowait())
            finished = None in batch
            text = next((t for t in reversed(batch) if t is not None), "")
            cut = max((m.end() for m in CLAUSE_END.finditer(text)), default=0)
            if stop.is_set() or cut <= shown:
                continue
            verdict = self.deps.words.check(text[:cut])
            if verdict.blocked:
                stop.set()
                continue
            try:
                await stream(verdict.text.strip())
                shown = cut
            except Exception as exc:  # whatever the channel raises, nobody is reading any more
                log.info("stream of %s stopped: %s", turn.message.message_id, exc)
                stop.set()
                turn.cancelled = True
        return await job


class OutputFilter(Step):
    """Only answers from the model (or the cache) are checked: canned replies are the shop's own."""

    name = "output_filter"

    async def __call__(self, turn: WorkingTurn) -> None:
        if turn.outcome not in ("answered", "cancelled") or turn.answer is None:
            return
        verdict = self.deps.words.check(turn.answer)
        if verdict.blocked:
            turn.answer, turn.outcome = pick_language(Replies.BLOCKED, turn.message.text), "blocked"
        else:
            turn.answer = verdict.text
        count_filtered("output", verdict.categories, verdict.blocked)
        if verdict.categories:
            await self.deps.store.audit(
                "bot",
                "output_filtered",
                categories=sorted(verdict.categories),
                blocked=verdict.blocked,
                message_id=turn.message.message_id,
            )


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Persist(Step):
    name = "persist"

    async def __call__(self, turn: WorkingTurn) -> None:
        msg = turn.message
        if not turn.session:  # build_context did not run: the answer was settled before it
            turn.session = await self.deps.store.session_for(
                msg.channel, msg.conversation_id, self.deps.settings.session_idle
            )
        version = turn.model_version or self.deps.models.version_of("current")
        try:
            turn.turn_id = await self.deps.store.add_turn(
                channel=msg.channel,
                conversation_id=msg.conversation_id,
                session=turn.session,
                user_id=msg.user_id,
                message_id=msg.message_id,
                user_text=turn.text,
                answer=turn.answer or "",
                model_version=version,
                variant=turn.variant,
                latency_ms=(time.perf_counter() - turn.started) * 1000,
                cached=turn.cached,
                outcome=turn.outcome,
            )
        except Duplicate:  # the same message raced in twice: keep the first answer
            earlier = await self.deps.store.turn_for_message(msg.channel, msg.message_id)
            assert earlier is not None
            turn.answer, turn.outcome = earlier.answer, earlier.outcome
            turn.turn_id, turn.duplicate = earlier.id, True
            return
        # The audit trail of the exchange: who, which turn, what came of it, and digests of the (masked)
        # texts, which prove what was said while the texts themselves stay subject to retention.
        await self.deps.store.audit(
            msg.sender,
            "message",
            target=f"turn:{turn.turn_id}",
            channel=msg.channel,
            outcome=turn.outcome,
            message_id=msg.message_id,
            question_sha256=sha256_hex(turn.text),
            answer_sha256=sha256_hex(turn.answer or ""),
            model_version=version,
        )


STEPS: tuple[type[Step], ...] = (
    CheckInput,
    Deduplicate,
    MaskPersonalData,
    InputFilter,
    HandOffToPerson,
    BuildContext,
    CachedAnswer,
    GenerateAnswer,
    OutputFilter,
    Persist,
)
# Called after every step that ran, with the step's name, its time in seconds and the turn.
StepObserver = Callable[[str, float, WorkingTurn], None]


def record_step_metrics(name: str, seconds: float, turn: WorkingTurn) -> None:
    STEP_SECONDS.labels(name).observe(seconds)


class DialogueManager:
    def __init__(self, deps: StepDeps, observers: list[StepObserver] | None = None) -> None:
        self.deps = deps
        self.steps: list[Step] = [cls(deps) for cls in STEPS]
        self.observers: list[StepObserver] = [record_step_metrics, *(observers or [])]

    async def handle(self, message: UserMessage, stream: Stream | None = None) -> BotReply:
        """The reply to `message`. With `stream`, a model answer is also shown as it is generated: the
        stream gets the customer-visible text so far; the reply's text is final and replaces it."""
        turn = WorkingTurn(message, message.text, stream=stream)
        for step in self.steps:
            if step.makes_answer and turn.settled:
                continue
            began = time.perf_counter()
            await step(turn)
            seconds = time.perf_counter() - began
            for observe in self.observers:
                observe(step.name, seconds, turn)
            if turn.done:
                break
        MESSAGES.labels(message.channel, "duplicate" if turn.duplicate else turn.outcome).inc()
        LATENCY.labels(str(turn.cached).lower()).observe(time.perf_counter() - turn.started)
        version = turn.model_version or self.deps.models.version_of("current")
        return BotReply(
            text=turn.answer or "",
            turn_id=turn.turn_id,
            cached=turn.cached,
            model_version=version,
            duplicate=turn.duplicate,
            outcome=turn.outcome,
        )

    async def follow_registry(self) -> None:
        """Pick up promoted versions without a restart; answers in flight keep their model. The registry is
        polled, and with Redis a notice from whoever changed it wakes every worker at once."""
        changed = asyncio.Event()
        shared = self.deps.shared
        notices = asyncio.create_task(shared.follow_registry(changed.set)) if shared else None
        try:
            while True:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), self.deps.settings.registry_poll_s)
                changed.clear()
                await self._swap_if_changed()
        finally:
            if notices:
                notices.cancel()

    async def _swap_if_changed(self) -> None:
        try:
            if await self.deps.models.refresh():
                await self.deps.cache.clear()
                current, candidate = (
                    self.deps.models.version_of("current"),
                    self.deps.models.version_of("candidate"),
                )
                log.info("model changed to %s", current)
                await self.deps.store.audit(
                    "bot",
                    "hot_swap",
                    target=f"model:{current}",
                    candidate=candidate or None,
                    ab_share=self.deps.models.ab_share,
                )
        except Exception:
            log.exception(
                "could not load the registry's new model; still serving %s, trying again in %.0f s",
                self.deps.models.version_of("current"),
                RETRY_LOAD_S,
            )
