"""Where answers are generated: the in-process model and OpenAI-compatible model servers (vLLM on a GPU,
llama.cpp's server, TGI) behind one balancer (BOT_MODEL_BACKENDS).

Each backend serves model versions: a server the model ids its `/v1/models` lists (`vllm serve DIR
--served-model-name v0007`), the in-process model the versions its pool has loaded. An answer goes to the
ready backend serving the wanted version with the fewest answers in flight per weight; one that fails
(connection, 5xx, 429, malformed or cut-off stream, wrong model, no first words by half the time left) is
counted and logged, and the next one is asked, while the deadline allows. The in-process model is always
the last resort, so when every server is down the bot still answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from prometheus_client import Counter

from bot.config import LOCAL_BACKEND, BackendSpec
from bot.models.pool import ModelBusy, ModelPool
from bot.models.runtime import GenerationSettings, OnText

log = logging.getLogger(__name__)
REQUESTS = Counter("bot_backend_requests", "Answers asked of each model backend, by outcome", ["backend", "outcome"])
FAILURES_TO_OPEN = 3  # failures in a row that open a server's circuit: it gets no answers until a probe succeeds
PROBE_S = 5.0  # how often a server's model list is read again (and an open circuit probed)
PROBE_TIMEOUT_S = 2.0
MAX_PAUSE_S = 60.0  # the longest Retry-After honoured
Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Generated:
    """An answer and who made it: the stored model version is the one that produced it."""

    text: str
    version: str
    backend: str


class BackendFailed(Exception):
    """A model server did not answer; `kind` is the metrics outcome, e.g. timeout or server_error."""

    def __init__(self, kind: str, detail: str, retry_after: float = 0.0) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.retry_after = retry_after


class Backend(Protocol):
    name: str
    weight: float

    @property
    def in_flight(self) -> int: ...

    def serves(self, version: str, now: float) -> bool:
        """Whether it can take an answer of `version` now (up, not paused, the version listed)."""
        ...

    async def generate(self, messages: Messages, version: str, deadline: float, on_text: OnText | None) -> Generated:
        """The answer, by `deadline` (time.monotonic()); `on_text` as in ChatModel.generate."""
        ...


class LocalBackend:
    """The in-process model (ModelPool), serving the versions the pool has loaded. As the last resort it
    answers a version it does not have with its current one."""

    def __init__(self, pool: ModelPool, weight: float = 1.0) -> None:
        self.pool = pool
        self.name = LOCAL_BACKEND
        self.weight = weight

    @property
    def in_flight(self) -> int:
        return self.pool.in_flight

    def serves(self, version: str, now: float) -> bool:
        return version in self.pool.versions

    async def generate(self, messages: Messages, version: str, deadline: float, on_text: OnText | None) -> Generated:
        model = self.pool.model_for(version)
        text = await self.pool.generate(model, messages, on_text, max_time=deadline - time.monotonic())
        return Generated(text, model.version, self.name)


class RemoteBackend:
    """An OpenAI-compatible server: `POST {url}/chat/completions` streamed (server-sent events, read as
    they arrive), `GET {url}/models` for the versions it serves. Its circuit is open until the first
    probe succeeds, and again after FAILURES_TO_OPEN failures in a row; a probe that succeeds then lets
    it try again, and one more failure opens it at once. A 429 pauses it for its Retry-After."""

    def __init__(
        self, name: str, url: str, weight: float, settings: GenerationSettings, probe_s: float = PROBE_S
    ) -> None:
        self.name, self.url, self.weight, self.probe_s = name, url, weight, probe_s
        self.in_flight = 0
        self.versions: set[str] = set()
        self.open = True
        self.failures = 0
        self.paused_until = 0.0
        self.next_probe = 0.0
        self._sampling: dict[str, Any] = {
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
        }
        if settings.repetition_penalty != 1.0:  # not OpenAI's, but vLLM's and TGI's
            self._sampling["repetition_penalty"] = settings.repetition_penalty
        # No httpx timeout: the answer's deadline bounds every call. Model servers are on the internal
        # network, so a proxy from the environment is not for them.
        self._client = httpx.AsyncClient(base_url=url, timeout=None, trust_env=False)
        self._probe: asyncio.Task[None] | None = None

    def serves(self, version: str, now: float) -> bool:
        return not self.open and now >= self.paused_until and version in self.versions

    def probe_when_due(self, now: float) -> None:
        """Start a probe in the background once `probe_s` has passed since the last."""
        if now >= self.next_probe and (self._probe is None or self._probe.done()):
            self._probe = asyncio.create_task(self.probe())

    async def probe(self) -> None:
        """Read the server's model list: success closes the circuit, failure opens it."""
        self.next_probe = time.monotonic() + self.probe_s
        try:
            response = await asyncio.wait_for(self._client.get("/models"), PROBE_TIMEOUT_S)
            response.raise_for_status()
            versions = {str(model["id"]) for model in response.json()["data"]}
        except (httpx.HTTPError, asyncio.TimeoutError, ValueError, LookupError, TypeError) as exc:
            if self.in_flight and isinstance(exc, asyncio.TimeoutError):
                return  # busy answering (llama.cpp's server lists its models only between answers): they tell
            if not self.open:
                log.warning("model backend %s is down (%s): circuit open", self.name, str(exc) or type(exc).__name__)
            self.open = True
            return
        if self.open or versions != self.versions:
            log.info("model backend %s (%s) is up, serving %s", self.name, self.url, ", ".join(sorted(versions)))
        self.versions, self.open = versions, False
        self.failures = min(self.failures, FAILURES_TO_OPEN - 1)

    async def generate(self, messages: Messages, version: str, deadline: float, on_text: OnText | None) -> Generated:
        self.in_flight += 1
        try:
            text = await self._answer(messages, version, deadline, on_text)
        except BackendFailed as failure:
            self._failed(failure, version)
            raise
        finally:
            self.in_flight -= 1
        self.failures = 0
        return Generated(text, version, self.name)

    def _failed(self, failure: BackendFailed, version: str) -> None:
        if failure.kind == "rate_limited":  # busy, not broken: paused, and no step towards opening
            self.paused_until = time.monotonic() + failure.retry_after
            return
        if failure.kind == "unknown_model":  # until the next probe lists it again
            self.versions.discard(version)
        self.failures += 1
        if self.failures >= FAILURES_TO_OPEN and not self.open:
            self.open = True
            self.next_probe = time.monotonic() + self.probe_s
            log.warning("model backend %s failed %d times in a row: circuit open", self.name, self.failures)

    async def _answer(self, messages: Messages, version: str, deadline: float, on_text: OnText | None) -> str:
        pieces = self._pieces(messages, version)
        try:
            # Half the time left for the first words: when this server hangs, another still has time.
            text = await asyncio.wait_for(anext(pieces, ""), (deadline - time.monotonic()) / 2)
            return await asyncio.wait_for(self._rest(pieces, text, on_text), deadline - time.monotonic())
        except asyncio.TimeoutError:
            raise BackendFailed("timeout", "no answer in time") from None
        except httpx.ConnectError as exc:
            raise BackendFailed("refused", str(exc)) from None
        except httpx.HTTPError as exc:  # a transport error, or a body that does not decode
            kind = "connection_lost" if isinstance(exc, httpx.TransportError) else "malformed"
            raise BackendFailed(kind, f"{type(exc).__name__}: {exc}") from None
        finally:
            await pieces.aclose()

    @staticmethod
    async def _rest(pieces: AsyncIterator[str], text: str, on_text: OnText | None) -> str:
        """The whole answer, from its first piece on; `on_text` returning False stops it there."""
        while text:
            if on_text is not None and not on_text(text.strip()):
                break
            piece = await anext(pieces, "")
            if not piece:
                break
            text += piece
        return text.strip()

    async def _pieces(self, messages: Messages, version: str) -> AsyncGenerator[str, None]:
        """The answer's text as it arrives (the content of each streamed chunk that has any)."""
        body = {"model": version, "messages": messages, "stream": True, **self._sampling}
        async with self._client.stream("POST", "/chat/completions", json=body) as response:
            await _check(response)
            finished = False
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments (keep-alives), event names
                data = line[len("data:") :].strip()
                if data == "[DONE]":  # some servers (llama.cpp's, when interrupted) send it without finishing
                    break
                content, finished = _chunk(data, version)
                if content:
                    yield content
            if not finished:
                raise BackendFailed("truncated", "the stream ended without a finish_reason or [DONE]")

    async def close(self) -> None:
        if self._probe:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self._client.aclose()


async def _check(response: httpx.Response) -> None:
    """Raise BackendFailed unless the response is a stream of server-sent events."""
    status = response.status_code
    if status == 200 and response.headers.get("content-type", "").startswith("text/event-stream"):
        return
    detail = f"HTTP {status}: {(await response.aread())[:200].decode(errors='replace')}"
    if status == 429:
        try:
            pause = float(response.headers.get("retry-after", "1"))
        except ValueError:  # an HTTP date: rare from model servers
            pause = 1.0
        raise BackendFailed("rate_limited", detail, retry_after=min(max(pause, 0.0), MAX_PAUSE_S))
    kind = {200: "malformed", 404: "unknown_model"}.get(status, "server_error" if status >= 500 else "rejected")
    raise BackendFailed(kind, detail)


def _chunk(data: str, version: str) -> tuple[str, bool]:
    """(text, finished) of one streamed chat.completion.chunk."""
    try:
        chunk = json.loads(data)
        if "error" in chunk:
            raise BackendFailed("server_error", str(chunk["error"])[:200])
        if chunk.get("model", version) != version:
            raise BackendFailed("unknown_model", f"asked for {version}, {chunk['model']!r} answered")
        if not chunk["choices"]:  # e.g. the usage chunk
            return "", False
        choice = chunk["choices"][0]
        return choice["delta"].get("content") or "", choice.get("finish_reason") is not None
    except (ValueError, LookupError, TypeError, AttributeError) as exc:
        raise BackendFailed("malformed", f"{type(exc).__name__} in {data[:80]!r}") from None


def _outcome(exc: Exception) -> str:
    if isinstance(exc, BackendFailed):
        return exc.kind
    return "busy" if isinstance(exc, ModelBusy) else "timeout" if isinstance(exc, asyncio.TimeoutError) else "error"


class Balancer:
    """Chooses a backend per answer and asks the next when one fails; `fallback` (the in-process model)
    is asked last, whether or not it is also one of `backends`."""

    def __init__(self, backends: Sequence[Backend], fallback: Backend, timeout_s: float) -> None:
        self.backends = list(backends)
        self.fallback = fallback
        self.timeout_s = timeout_s
        self._remotes = [b for b in dict.fromkeys([*self.backends, fallback]) if isinstance(b, RemoteBackend)]
        self._credit = {b.name: 0.0 for b in self.backends}

    async def start(self) -> None:
        """Read every server's model list; the ones that do not answer stay closed to traffic for now."""
        await asyncio.gather(*(remote.probe() for remote in self._remotes))
        for remote in self._remotes:
            if remote.open:
                log.warning(
                    "model backend %s (%s) does not answer: it gets no traffic until it does", remote.name, remote.url
                )

    def order(self, version: str) -> list[Backend]:
        """The backends to ask for `version`, best first: the ready ones by fewest answers in flight per
        weight, ties (e.g. one answer at a time) going round in proportion to the weights; then the
        fallback."""
        now = time.monotonic()
        for remote in self._remotes:
            remote.probe_when_due(now)
        ready = [b for b in self.backends if b.serves(version, now)]
        if ready:
            load = {b.name: b.in_flight / b.weight for b in ready}
            tied = [b for b in ready if load[b.name] == min(load.values())]
            for backend in tied:  # smooth weighted round-robin among the least loaded
                self._credit[backend.name] += backend.weight
            best = max(tied, key=lambda b: self._credit[b.name])
            self._credit[best.name] -= sum(b.weight for b in tied)
            ready.sort(key=lambda b: (b is not best, load[b.name]))
        return ready if self.fallback in ready else [*ready, self.fallback]

    async def generate(self, messages: Messages, version: str, on_text: OnText | None = None) -> Generated:
        """The answer to `messages` from a backend serving `version` if any can (else the fallback's own
        version), within the model timeout. A backend that fails before the deadline passes the question on;
        the last one's error (ModelBusy, TimeoutError, ...) is raised. A retried stream starts again:
        `on_text` then sees the new answer grow from its beginning."""
        deadline = time.monotonic() + self.timeout_s
        order = self.order(version)
        for backend, after in zip(order, [*order[1:], None], strict=True):
            try:
                answer = await backend.generate(messages, version, deadline, on_text)
            except Exception as exc:
                REQUESTS.labels(backend.name, _outcome(exc)).inc()
                if after is None or not isinstance(exc, (BackendFailed, ModelBusy)):
                    raise
                if time.monotonic() >= deadline:
                    raise asyncio.TimeoutError(f"{backend.name} failed at the deadline") from exc
                log.warning("model backend %s failed (%s); asking %s", backend.name, exc, after.name)
                continue
            REQUESTS.labels(backend.name, "ok").inc()
            return answer
        raise AssertionError("the fallback is always asked")

    async def close(self) -> None:
        await asyncio.gather(*(remote.close() for remote in self._remotes))


def build_balancer(
    specs: list[BackendSpec], pool: ModelPool, settings: GenerationSettings, timeout_s: float
) -> Balancer:
    """The balancer over BOT_MODEL_BACKENDS; without any, the in-process model alone."""
    backends: list[Backend] = [
        RemoteBackend(s.name, s.url, s.weight, settings) if s.url else LocalBackend(pool, s.weight) for s in specs
    ]
    local = next((b for b in backends if isinstance(b, LocalBackend)), None) or LocalBackend(pool)
    return Balancer(backends, local, timeout_s)
