"""Continuous batching on CPU: every answer in progress advances one token per model run, in one batch.

onnxruntime-genai's own engine batches continuously only with paged attention (CUDA), and its
generator batches only prompts that start together. So this loop drives the builder's ONNX graph
directly: its GroupQueryAttention takes each row's length from the attention mask, so rows of
different lengths share one batch, right-padded. A new answer's prompt is read alone (a prefill of
one row, exactly as if it were the only one) and its key/value cache then joins the batch between two
steps; a finished or cancelled answer leaves between two steps. Python does per step only what
cannot be avoided: the next token of each row from its logits.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from prometheus_client import Histogram

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
        batch = _Batch(self, [], [], [])
        while True:
            # Between two steps: ended answers leave and waiting ones join, in one regrouping.
            keep = [i for i, request in enumerate(batch.rows) if not request.done.is_set()]
            joined = self._admit(self.max_batch - len(keep))
            if joined or len(keep) < len(batch.rows):
                batch = batch.regroup(keep, joined)
            if not batch.rows:
                with self._lock:  # nothing running: stop, unless an answer arrived meanwhile
                    if self._waiting.empty():
                        self._running = False
                        return
                continue
            try:
                self._step(batch)
            except Exception as exc:  # every answer in the batch gets it; they leave at the next regrouping
                for request in batch.rows:
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

    def _run(self, ids: list[int], cache: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One row: `ids` read after its `cache`."""
        width = cache[0].shape[2] + len(ids)
        feed = {"input_ids": np.asarray([ids], dtype=np.int64), "attention_mask": np.ones((1, width), dtype=np.int64)}
        logits, *present = self.session.run(
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
        batch.binding.bind_cpu_input("input_ids", np.asarray([[r.tokens[-1]] for r in batch.rows], dtype=np.int64))
        batch.binding.bind_cpu_input("attention_mask", mask)
        self.session.run_with_iobinding(batch.binding)
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
    """The answers being decoded and their caches. Per past name one array [rows, kv_heads, room,
    head_size], bound as both the model's past and its present: GroupQueryAttention then writes each
    step's keys and values into it in place, so a step copies no cache. `room` fits every row's prompt
    and longest answer, so the arrays change only when a row joins or leaves."""

    def __init__(self, decoder: Decoder, rows: list[Request], lengths: list[int], cache: list[np.ndarray]) -> None:
        self.decoder, self.rows, self.lengths, self.cache = decoder, rows, lengths, cache
        self.binding = decoder.session.io_binding()
        self.logits = np.empty((len(rows), 1, decoder.vocab), dtype=np.float32)
        if rows:
            names = zip(decoder.past_names, decoder.present_names, cache, strict=True)
            for past, present, array in names:
                value = ort.OrtValue.ortvalue_from_numpy(array)
                self.binding.bind_ortvalue_input(past, value)
                self.binding.bind_ortvalue_output(present, value)
            self.binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self.logits))

    def regroup(self, keep: Sequence[int], joined: list[tuple[Request, list[np.ndarray]]]) -> _Batch:
        """A batch of rows `keep` of this one, then the `joined` requests with the caches their prompts left."""
        decoder = self.decoder
        rows = [self.rows[i] for i in keep] + [request for request, _ in joined]
        lengths = [self.lengths[i] for i in keep] + [len(request.prompt) for request, _ in joined]
        if not rows:
            return _Batch(decoder, [], [], [])
        room = max(min(decoder.context, len(r.prompt) + r.max_new_tokens) for r in rows)
        used = max((self.lengths[i] for i in keep), default=0)
        cache = []
        for n in range(len(decoder.past_names)):
            array = np.zeros((len(rows), decoder.kv_heads, room, decoder.head_size), dtype=np.float32)
            if keep:
                array[: len(keep), :, :used] = self.cache[n][list(keep), :, :used]
            for j, (_, present) in enumerate(joined, start=len(keep)):
                array[j, :, : present[n].shape[2]] = present[n][0]
            cache.append(array)
        return _Batch(decoder, rows, lengths, cache)


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
