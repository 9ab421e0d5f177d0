"""A fake OpenAI-compatible model server on 127.0.0.1, speaking what vLLM and llama.cpp's server speak:
GET /v1/models, and POST /v1/chat/completions streamed (server-sent events of chat.completion.chunk
objects, ending `data: [DONE]`; the bot always asks for a stream). It serves one model name and answers
every question with the same text; `mode` makes it misbehave."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from aiohttp import web

from tests.fakes import serve_on_loopback

# ok | fail (500, models too) | rate_limit (429 + Retry-After) | malformed (a chunk that is not JSON)
# | truncated (the stream stops halfway, no finish_reason, no [DONE]) | interrupted (halfway, then [DONE]
# without a finish_reason, as llama.cpp's server ends an answer a new request cut short) | hang (never
# answers, models too) | wrong_model (chunks name another model)
MODES = ("ok", "fail", "rate_limit", "malformed", "truncated", "interrupted", "hang", "wrong_model")


class FakeModelServer:
    def __init__(self, model: str, answer: str, delay: float = 0.0, chunk_delay: float = 0.0) -> None:
        """`delay` before the first chunk, `chunk_delay` between chunks (one chunk per word)."""
        self.model = model
        self.answer = answer
        self.delay = delay
        self.chunk_delay = chunk_delay
        self.mode = "ok"
        self.retry_after = 1
        self.requests: list[dict[str, Any]] = []  # the body of every chat completion asked for
        self.probes = 0  # GET /v1/models calls
        self.hung_up = 0  # streams the bot closed before their end (it stopped generating)
        self.url = ""
        self._released = asyncio.Event()  # ends hanging handlers at stop
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        """Serve; the base URL (ending /v1), as BOT_MODEL_BACKENDS takes it."""
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner, port = await serve_on_loopback(app)
        self.url = f"http://127.0.0.1:{port}/v1"
        return self.url

    async def stop(self) -> None:
        self._released.set()
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

    async def _models(self, request: web.Request) -> web.Response:
        self.probes += 1
        if self.mode == "hang":
            await self._released.wait()
        if self.mode == "fail":
            return web.json_response({"error": {"message": "internal error"}}, status=500)
        return web.json_response(
            {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "fake"}]}
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if self.mode == "hang":
            await self._released.wait()
        if self.mode == "fail":
            return web.json_response({"error": {"message": "CUDA out of memory"}}, status=500)
        if self.mode == "rate_limit":
            headers = {"Retry-After": str(self.retry_after)}
            return web.json_response({"error": {"message": "too many requests"}}, status=429, headers=headers)
        if body.get("model") != self.model:  # as vLLM answers
            message = f"The model `{body.get('model')}` does not exist."
            return web.json_response({"object": "error", "message": message, "code": 404}, status=404)
        await asyncio.sleep(self.delay)
        return await self._stream(request)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        words = re.findall(r"\S+\s*", self.answer)
        if self.mode in ("truncated", "interrupted"):
            words = words[: len(words) // 2]
        chunks = [{"role": "assistant", "content": ""}] + [{"content": w} for w in words]
        try:
            for i, delta in enumerate(chunks):
                if self.mode == "malformed" and i == 2:
                    await response.write(b'data: {"id": "chatcmpl-fake", "choices": [{"delta": \n\n')
                    return response
                await response.write(self._chunk(delta))
                await asyncio.sleep(self.chunk_delay)
            if self.mode == "ok":
                await response.write(self._chunk({}, finish_reason="stop") + b"data: [DONE]\n\n")
            elif self.mode == "interrupted":
                await response.write(b"data: [DONE]\n\n")
        except ConnectionResetError:  # the bot stopped reading (e.g. the customer stopped the answer)
            self.hung_up += 1
        return response

    def _chunk(self, delta: dict[str, str], finish_reason: str | None = None) -> bytes:
        chunk = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": "v9999" if self.mode == "wrong_model" else self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()
