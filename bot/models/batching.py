"""Continuous batching on CPU: every answer in progress advances one token per model run, in one batch.

onnxruntime-genai's own engine batches continuously only with paged attention (CUDA), and its
generator batches only prompts that start together. So this loop drives the builder's ONNX graph
directly: its GroupQueryAttention takes each row's length from the attention mask, so rows of
different lengths share one batch, right-padded. A new answer's prompt is read alone (a prefill of
one row, exactly as if it were the only one) and its key/value cache then joins the batch between two
steps; a finished or cancelled answer leaves between two steps. Python does per step only what
cannot be avoided: the next token of each row from its logits. An INT4 build's runs of many rows
(prompts, steps of several answers) go to its int8 twin, whose kernels share the weights' pass
between rows (`INT8_FROM_ROWS`).
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from prometheus_client import Histogram

from bot.models.export import INT8_FILE

BATCH = Histogram("bot_model_batch_size", "Answers advanced together by one model run", buckets=(1, 2, 4, 8, 16, 32))


@dataclass(frozen=True)
class Search:
    """How the next token is chosen; temperature 0 is greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0


@dataclass
class Request:
    """One answer: its prompt and the tokens so far. `on_token` (called in the batch's thread after each
    token, so keep it quick) stops the answer by returning False; `done` is set when it has ended."""

    prompt: list[int]
    max_new_tokens: int
    search: Search
    prefix: int = 0  # the prompt's first tokens that many prompts share (read once, then reused)
    on_token: Callable[[list[int]], bool] | None = None
    tokens: list[int] = field(default_factory=list)
    error: BaseException | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Leave the batch at the next step (its deadline passed)."""
        self.cancelled.set()


MAX_PREFIXES = 4  # shared prompt starts kept read (one per system prompt in use)
# Model runs of this many rows (a prompt's tokens, a step's answers) go to an INT4 build's int8 twin: its
# kernels take 8 rows for ~1.3x the price of one, INT4's for ~2.3x, while one row is ~25% faster in
# INT4, which reads half the weight bytes (bench/RESULTS.md, "round 4").
INT8_FROM_ROWS = 4
ROOM_STEP = 128  # cache arrays grow by whole steps, so a batch of varied prompts reallocates rarely


class Decoder:
    """One model's batch: a thread that admits waiting requests and steps all running ones together.
    At most `max_batch` answers run at once; more wait in arrival order."""

    def __init__(self, onnx_dir: Path, threads: int, max_batch: int) -> None:
        config = json.loads((onnx_dir / "genai_config.json").read_text())["model"]
        decoder = config["decoder"]
        self.layers = int(decoder["num_hidden_layers"])
        self.kv_heads = int(decoder["num_key_value_heads"])
        self.head_size = int(decoder["head_size"])
        self.context = int(config["context_length"])
        self.vocab = int(config["vocab_size"])
        eos = config["eos_token_id"]
        self.eos = set(eos if isinstance(eos, list) else [eos])
        names = decoder["inputs"]
        self.past_names = [
            names[kind] % i for i in range(self.layers) for kind in ("past_key_names", "past_value_names")
        ]
        outputs = decoder["outputs"]
        self.present_names = [
            outputs[kind] % i for i in range(self.layers) for kind in ("present_key_names", "present_value_names")
        ]
        options = ort.SessionOptions()
        # Set explicitly: the default pools spin on every core, and two answers' pools fight over them.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(onnx_dir / decoder["filename"]), options, providers=["CPUExecutionProvider"]
        )
        twin = onnx_dir / INT8_FILE  # an INT4 build's int8 twin (export.quantize_int8), for runs of many rows
        self.int8 = (
            ort.InferenceSession(str(twin), options, providers=["CPUExecutionProvider"]) if twin.exists() else None
        )
        self.max_batch = max_batch
        self._waiting: queue.SimpleQueue[Request] = queue.SimpleQueue()
        # The loop thread runs only while there is work, so a retired model holds no thread and is freed.
        self._lock = threading.Lock()
        self._running = False
        self._name = f"decoder-{onnx_dir.parent.name}"
        self._prefixes: dict[tuple[int, ...], list[np.ndarray]] = {}

    def submit(self, request: Request) -> None:
        with self._lock:
            self._waiting.put(request)
            if not self._running:
                self._running = True
                threading.Thread(target=self._loop, name=self._name, daemon=True).start()

    # --- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        batch = _Batch(self)
        while True:
            # Between two steps: ended answers leave and waiting ones join.
            ended = [i for i, request in enumerate(batch.rows) if request.done.is_set()]
            for i in reversed(ended):
                batch.leave(i)
            joined = self._admit(self.max_batch - len(batch.rows))
            if not batch.rows and not joined:
                with self._lock:  # nothing running: stop, unless an answer arrived meanwhile
                    if self._waiting.empty():
                        self._running = False
                        return
                continue
            try:
                for request, present in joined:
                    batch.join(request, present)
                if ended or joined:
                    batch.bind()
                self._step(batch)
            except Exception as exc:  # every answer in the batch gets it; they leave before the next step
                for request in {id(r): r for r in batch.rows + [r for r, _ in joined]}.values():
                    self._finish(request, exc)

    def _admit(self, places: int) -> list[tuple[Request, list[np.ndarray]]]:
        """Up to `places` waiting requests, each with the cache its prompt left."""
        joined: list[tuple[Request, list[np.ndarray]]] = []
        while len(joined) < places:
            try:
                request = self._waiting.get_nowait()
            except queue.Empty:
                break
            if request.cancelled.is_set():  # gave up while waiting
                self._finish(request)
                continue
            try:
                present = self._prefill(request)
            except Exception as exc:  # the caller gets it; the batch goes on
                self._finish(request, exc)
                continue
            if not request.done.is_set():  # else it ended at its first token
                joined.append((request, present))
        return joined

    def _prefill(self, request: Request) -> list[np.ndarray]:
        """Read the prompt into a cache of its own. A shared start (the shop's system prompt) is read
        once and reused: its cache is the same whichever prompt follows it."""
        cache = [np.zeros((1, self.kv_heads, 0, self.head_size), dtype=np.float32)] * len(self.past_names)
        start = 0
        if request.prefix:
            prefix = tuple(request.prompt[: request.prefix])
            if prefix not in self._prefixes:
                if len(self._prefixes) >= MAX_PREFIXES:
                    self._prefixes.pop(next(iter(self._prefixes)))
                self._prefixes[prefix] = self._run(list(prefix), cache)[1]
            cache, start = self._prefixes[prefix], request.prefix
        logits, present = self._run(request.prompt[start:], cache)
        self._advance(request, logits[0, -1])
        return present

    def session_for(self, rows: int) -> ort.InferenceSession:
        return self.int8 if self.int8 is not None and rows >= INT8_FROM_ROWS else self.session

    def _run(self, ids: list[int], cache: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One row: `ids` read after its `cache`."""
        width = cache[0].shape[2] + len(ids)
        feed = {"input_ids": np.asarray([ids], dtype=np.int64), "attention_mask": np.ones((1, width), dtype=np.int64)}
        logits, *present = self.session_for(len(ids)).run(
            ["logits", *self.present_names], feed | dict(zip(self.past_names, cache, strict=True))
        )
        return logits, present

    def _step(self, batch: _Batch) -> None:
        """Every row one token further: the model reads each row's last token and writes its key and
        value into the row's cache in place, at the row's own length."""
        BATCH.observe(len(batch.rows))
        mask = np.zeros((len(batch.rows), max(batch.lengths) + 1), dtype=np.int64)
        for i, length in enumerate(batch.lengths):
            mask[i, : length + 1] = 1  # the row's cache plus the token it is given now
        session = self.session_for(len(batch.rows))
        binding = batch.bindings[session]
        binding.bind_cpu_input("input_ids", np.asarray([[r.tokens[-1]] for r in batch.rows], dtype=np.int64))
        binding.bind_cpu_input("attention_mask", mask)
        session.run_with_iobinding(binding)
        for i, request in enumerate(batch.rows):
            batch.lengths[i] += 1
            self._advance(request, batch.logits[i, -1])

    def _advance(self, request: Request, logits: np.ndarray) -> None:
        """Choose the request's next token; end it at an end token, its length limit or a cancel."""
        token = choose(logits, request.search, request.tokens)
        if token in self.eos:
            self._finish(request)
            return
        request.tokens.append(token)
        try:
            wanted = request.on_token is None or request.on_token(request.tokens)
        except Exception as exc:  # the caller's to handle, not the batch's
            self._finish(request, exc)
            return
        full = len(request.prompt) + len(request.tokens) >= self.context
        if not wanted or len(request.tokens) >= request.max_new_tokens or full or request.cancelled.is_set():
            self._finish(request)

    @staticmethod
    def _finish(request: Request, error: BaseException | None = None) -> None:
        request.error = error
        request.done.set()


class _Batch:
    """The answers being decoded and their caches. Per past name one array [max_batch, kv_heads, room,
    head_size] whose first len(rows) rows are the batch, bound as both the model's past and its
    present: GroupQueryAttention writes each step's keys and values into it in place, so a step copies
    no cache. An answer that ends leaves by the last row moving into its place and a new one is written
    after the last, so a change copies only the rows that move. `room` fits every row's prompt and
    longest answer: the arrays are reallocated, rows copied, when a new answer needs more, and are
    dropped when the batch empties (until then they keep their largest size)."""

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        self.rows: list[Request] = []
        self.lengths: list[int] = []  # each row's cache length
        self.cache: list[np.ndarray] = []
        self.room = 0
        self.bindings = {session: session.io_binding() for session in (decoder.session, decoder.int8) if session}
        self.logits = np.empty((decoder.max_batch, 1, decoder.vocab), dtype=np.float32)

    def leave(self, index: int) -> None:
        last = len(self.rows) - 1
        if index != last:
            used = self.lengths[last]
            for array in self.cache:
                array[index, :, :used] = array[last, :, :used]
            self.rows[index], self.lengths[index] = self.rows[last], self.lengths[last]
        self.rows.pop()
        self.lengths.pop()
        if not self.rows:  # an idle model holds no cache
            self.cache, self.room = [], 0

    def join(self, request: Request, present: list[np.ndarray]) -> None:
        """`request` as the last row, with the cache its prompt left."""
        self._fit(min(self.decoder.context, len(request.prompt) + request.max_new_tokens))
        row = len(self.rows)
        for array, value in zip(self.cache, present, strict=True):
            array[row, :, : value.shape[2]] = value[0]
        self.rows.append(request)
        self.lengths.append(len(request.prompt))

    def _fit(self, room: int) -> None:
        if room <= self.room:
            return
        decoder, rows = self.decoder, len(self.rows)
        room = min(decoder.context, -(-room // ROOM_STEP) * ROOM_STEP)
        shape = (decoder.max_batch, decoder.kv_heads, room, decoder.head_size)
        grown = [np.zeros(shape, dtype=np.float32) for _ in decoder.past_names]
        for array, old in zip(grown, self.cache, strict=False):  # no old arrays when the batch was empty
            array[:rows, :, : self.room] = old[:rows]
        self.cache, self.room = grown, room

    def bind(self) -> None:
        """Bind the first len(rows) rows of each array (views, not copies) for the next steps."""
        decoder, rows = self.decoder, len(self.rows)
        for past, present, array in zip(decoder.past_names, decoder.present_names, self.cache, strict=True):
            value = ort.OrtValue.ortvalue_from_numpy(array[:rows])
            for binding in self.bindings.values():
                binding.bind_ortvalue_input(past, value)
                binding.bind_ortvalue_output(present, value)
        logits = ort.OrtValue.ortvalue_from_numpy(self.logits[:rows])
        for binding in self.bindings.values():
            binding.bind_ortvalue_output("logits", logits)


def choose(logits: np.ndarray, search: Search, seen: list[int]) -> int:
    """The next token: the likeliest (greedy), or drawn with temperature and top-p."""
    if search.repetition_penalty != 1.0 and seen:
        logits = logits.copy()
        ids = np.unique(seen)
        picked = logits[ids]
        logits[ids] = np.where(picked > 0, picked / search.repetition_penalty, picked * search.repetition_penalty)
    if search.temperature <= 0:
        return int(logits.argmax())
    scaled = (logits.astype(np.float64) - logits.max()) / search.temperature
    probs = np.exp(scaled)
    probs /= probs.sum()
    order = np.argsort(-probs)
    kept = order[: int(np.searchsorted(np.cumsum(probs[order]), search.top_p)) + 1]
    return int(np.random.default_rng().choice(kept, p=probs[kept] / probs[kept].sum()))
