"""HTTP channel: a small JSON API for local use, tests and other front ends.

POST /chat {conversation_id, user_id, text[, message_id]} -> {answer, turn_id, cached, model_version}
POST /feedback {turn_id, rating: 1|-1, rater[, correction]}
GET /healthz, GET /metrics (Prometheus)
"""

from __future__ import annotations

import json
import uuid
from functools import partial
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from bot.feedback import NotAllowed, UnknownTurn
from bot.message import UserMessage
from bot.service import ChannelService

CHANNEL = "http"
# Chinese answers stay readable in the JSON instead of \uXXXX escapes.
dumps = partial(json.dumps, ensure_ascii=False)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conversation_id: StrictStr = Field(min_length=1, max_length=200)
    user_id: StrictStr = Field(min_length=1, max_length=200)
    text: StrictStr
    message_id: StrictStr | None = Field(None, min_length=1, max_length=200)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    turn_id: StrictInt
    rating: StrictInt | None = None
    rater: StrictStr = Field(min_length=1, max_length=200)
    correction: StrictStr | None = None


def _error(status: int, message: str) -> web.Response:
    return web.json_response(dumps=dumps, data={"error": message}, status=status)


Parsed = TypeVar("Parsed", bound=BaseModel)


async def _parse(request: web.Request, model: type[Parsed]) -> Parsed | web.Response:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "body is not valid JSON")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        return _error(422, f"{field}: {first['msg']}")


class HttpChannel:
    name = CHANNEL

    def __init__(self, service: ChannelService) -> None:
        self.service = service

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/chat", self.chat)
        app.router.add_post("/feedback", self.feedback)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def chat(self, request: web.Request) -> web.Response:
        parsed = await _parse(request, ChatRequest)
        if isinstance(parsed, web.Response):
            return parsed
        if not parsed.text.strip():
            return _error(400, "text is empty")
        if len(parsed.text) > self.service.max_message_chars:
            return _error(413, f"text is longer than {self.service.max_message_chars} characters")
        message = UserMessage(
            channel=CHANNEL,
            conversation_id=parsed.conversation_id,
            user_id=parsed.user_id,
            message_id=parsed.message_id or uuid.uuid4().hex,
            text=parsed.text,
        )
        reply = await self.service.handle(message)
        return web.json_response(
            dumps=dumps,
            data={
                "answer": reply.text,
                "turn_id": reply.turn_id,
                "cached": reply.cached,
                "model_version": reply.model_version,
            },
        )

    async def feedback(self, request: web.Request) -> web.Response:
        parsed = await _parse(request, FeedbackRequest)
        if isinstance(parsed, web.Response):
            return parsed
        if parsed.rating not in (1, -1) and not (parsed.rating is None and parsed.correction):
            return _error(422, "rating: must be 1 or -1")
        try:
            result: dict[str, Any] = {"turn_id": parsed.turn_id}
            if parsed.correction is not None:
                await self.service.correct(parsed.turn_id, parsed.rater, parsed.correction)
                result["correction"] = "stored"
            if parsed.rating is not None:
                result["role"] = (await self.service.rate(parsed.turn_id, parsed.rater, parsed.rating)).value
        except UnknownTurn as exc:
            return _error(404, str(exc))
        except NotAllowed as exc:
            return _error(403, str(exc))
        except ValueError as exc:
            return _error(422, str(exc))
        return web.json_response(dumps=dumps, data=result)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response(dumps=dumps, data=self.service.status())

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
