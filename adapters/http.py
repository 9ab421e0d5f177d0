"""HTTP channel: a small JSON API for local use, tests and other front ends.

Every route is one entry of ROUTES, which also documents it: `GET /openapi.json` (OpenAPI 3.1) is made
from that table and the pydantic models it names, so a new route is a handler method plus one entry.

Tokens (README "HTTP API"): the service token (BOT_API_TOKEN) or a personal one (BOT_API_KEYS); which
routes need one is the entry's `access`. With no token configured the API is open to its loopback
address only (BotSettings.check). Every error is JSON, `{"error": "..."}`, also for malformed input
and unexpected failures (500).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any, Literal, Protocol, TypeVar

from aiohttp import hdrs, web
from aiohttp.typedefs import LooseHeaders
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from bot.feedback import Caller, NotAllowed, Role, UnknownTurn
from bot.message import BotReply, UserMessage
from bot.server import MAX_LINE_BYTES, MAX_REQUEST_BYTES
from bot.service import ChannelService

CHANNEL = "http"
log = logging.getLogger(__name__)
# Chinese answers stay readable in the JSON instead of \uXXXX escapes.
dumps = partial(json.dumps, ensure_ascii=False)
# The caller's name scopes what it sends: `<caller>/<id>` inside the UserMessage.
SCOPE = "/"
# SQLite integers are 64-bit: a larger id is refused (422) before it reaches the store.
SQLITE_MAX_INT = 2**63 - 1


class AdminApi(Protocol):
    """What the HTTP channel needs besides its ChannelService (bot/admin.py `Admin`)."""

    async def authenticate(self, token: str | None) -> Caller | None: ...

    async def require_admin(self, caller: Caller, action: str) -> None: ...

    async def promote(self, caller: Caller, version: str) -> dict[str, Any]: ...

    async def rollback(self, caller: Caller) -> dict[str, Any]: ...

    async def ab_test(self, caller: Caller, version: str, share: float) -> dict[str, Any]: ...

    async def audit_log(
        self, caller: Caller, limit: int, actor: str | None = None, action: str | None = None
    ) -> list[dict[str, Any]]: ...

    async def roles_list(self, caller: Caller) -> list[dict[str, Any]]: ...

    async def grant(self, caller: Caller, subject: str, role: str) -> dict[str, Any]: ...


def _is_unicode(text: str) -> bool:
    """False for text with lone surrogates (a JSON escape such as "\\ud800", or undecodable header
    bytes): it can be neither stored in SQLite nor sent to Telegram or Slack."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- requests ---------------------------------------------------------------------------------------------


class Request(BaseModel):
    """A request's body or query: unknown fields are refused, and so is text that is not valid Unicode."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")  # before pydantic-core, whose own refusal names no cause
    @classmethod
    def _unicode_only(cls, value: Any) -> Any:
        if isinstance(value, str) and not _is_unicode(value):
            raise ValueError("not valid Unicode text (it has a lone surrogate such as \\ud800)")
        return value


class ChatRequest(Request):
    conversation_id: StrictStr = Field(min_length=1, max_length=200)
    user_id: StrictStr = Field(min_length=1, max_length=200)
    text: StrictStr = Field(description="the customer's message, at most BOT_MAX_MESSAGE_CHARS characters")
    message_id: StrictStr | None = Field(
        None, min_length=1, max_length=200, description="makes a retry idempotent: the same answer again"
    )
    stream: StrictBool = Field(
        False,
        description="answer as server-sent events: `partial` events with the text so far (filtered), then one"
        " `answer` event with the reply; closing the connection stops generation",
    )


class FeedbackRequest(Request):
    turn_id: StrictInt = Field(ge=1, le=SQLITE_MAX_INT)
    rating: StrictInt | None = Field(None, description="1 (good) or -1 (bad); may be left out with a correction")
    correction: StrictStr | None = Field(None, description="a better answer (agents only)")


class VersionRequest(Request):
    version: StrictStr = Field(min_length=1, max_length=100)


class AbRequest(VersionRequest):
    # Not a bare int: float() of a huge one overflows.
    share: StrictFloat = Field(allow_inf_nan=False, description="0 to 1; 0 ends the A/B test")


class EmptyRequest(Request):
    pass


class RoleRequest(Request):
    subject: StrictStr = Field(min_length=1, max_length=210, description="telegram:<id>, slack:<id> or http:<name>")
    role: StrictStr = Field(description="customer (takes back a granted role), agent or admin")


class ConversationRequest(Request):
    channel: Literal["http", "telegram", "slack"]
    conversation_id: StrictStr = Field(
        min_length=1, max_length=400, description="as GET /admin/handoffs lists it (HTTP ones start with the caller)"
    )


class AgentReplyRequest(ConversationRequest):
    text: StrictStr = Field(min_length=1, description="sent to the customer as written, stored masked")


class Query(Request):
    """Query parameters (all strings on the wire): unknown ones are ignored, as is usual."""

    model_config = ConfigDict(extra="ignore")


class AuditQuery(Query):
    limit: int = Field(100, ge=1, description="the newest rows to return (the server allows up to 1000)")
    actor: StrictStr = Field("", max_length=200, description="only this actor's rows, e.g. http:root")
    action: StrictStr = Field("", max_length=100, description="only rows of this action, e.g. promote")


class HistoryQuery(Query):
    conversation_id: StrictStr = Field(min_length=1, max_length=200)


# --- replies (documentation only: the handlers build them) -------------------------------------------------


class ErrorReply(BaseModel):
    error: str


class ChatReply(BaseModel):
    answer: str
    turn_id: int | None = Field(description="what /feedback rates; null for a reply that is not an answer")
    cached: bool
    model_version: str
    outcome: str = Field(
        description="answered, or e.g. handed_off (the customer asked for a person) and with_agent (an agent"
        " will answer: `answer` is empty; GET /chat/history shows the agent's reply)"
    )


class FeedbackReply(BaseModel):
    turn_id: int
    correction: Literal["stored"] | None = None
    role: str | None = Field(None, description="what the rating counted as: agent (trains) or customer")
    handed_off: bool | None = Field(None, description="true: this 👎 (the second in a row) handed off to agents")
    customer_reply: str | None = Field(None, description="with handed_off: what to tell the customer")


class HistoryTurn(BaseModel):
    turn_id: int
    question: str = Field(description="as stored: personal data masked")
    answer: str
    outcome: str = Field(description="answered by the bot, agent (an agent's reply), with_agent (waiting), ...")
    at: str


class History(BaseModel):
    turns: list[HistoryTurn]
    with_agents: bool = Field(description="an agent has the conversation now")


class HandOffRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    channel: str
    conversation_id: str
    reason: str = Field(description="asked, two_downvotes or taken_over")
    turns: list[dict[str, str]] = Field(description="the latest turns, masked: question and answer")


class HandOffs(BaseModel):
    handoffs: list[HandOffRow]


class AgentReplyResult(BaseModel):
    turn_id: int = Field(description="the turn that keeps the reply")


class ReleaseResult(BaseModel):
    released: bool = Field(description="false: the conversation was not with agents")


class CacheStats(BaseModel):
    size: int
    hits: int
    misses: int


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(description="store and model: ok, or what is wrong")
    model_version: str
    candidate: str | None
    ab_share: float
    load_error: str | None = Field(
        description="why the registry's newest versions could not be loaded (the ones above still serve; tried again every minute)"
    )
    cache: CacheStats


class ModelState(BaseModel):
    current: str | None
    candidate: str | None
    ab_share: float
    history: list[str] = Field(description="earlier production versions, newest last")


class AuditEvent(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int
    at: str
    actor: str
    action: str
    detail: Any


class AuditEvents(BaseModel):
    events: list[AuditEvent]


class RoleRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    subject: str
    role: str
    source: str
    effective: str


class Roles(BaseModel):
    roles: list[RoleRow]


class RoleReply(BaseModel):
    subject: str
    role: str = Field(description="the subject's role now")


# --- the route table ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One route and its documentation."""

    method: str
    path: str
    handler: str  # the HttpChannel method that answers
    summary: str
    reply: type[BaseModel] | str  # the 200 reply: a JSON model, or the media type of a free-form reply
    body: type[BaseModel] | None = None  # a JSON body; optional where the model has no required field
    query: type[BaseModel] | None = None
    errors: dict[int, str] = field(default_factory=dict)  # beyond those every route of its kind may answer
    # "token": a bearer token is needed; "open"; "loopback": open to loopback peers, else a token.
    access: Literal["token", "open", "loopback"] = "token"
    streams: bool = False  # the 200 reply may also be server-sent events (asked for in the body)


NOT_ADMIN = {403: "the caller is not an admin"}
NOT_AGENT = {403: "the caller is not an agent"}
NO_CONVERSATION = {404: "no such conversation"}
UNKNOWN_VERSION = {404: "no such registered model version"}
# fmt: off
ROUTES: tuple[Route, ...] = (
    Route("POST", "/chat", "chat", "Answer a customer's message", reply=ChatReply, body=ChatRequest,
          errors={400: "the body is not JSON, or the text is empty", 413: "the text (or the body) is too long"},
          streams=True),
    Route("POST", "/feedback", "feedback", "Rate or correct an answer; the rater is the token's owner",
          reply=FeedbackReply, body=FeedbackRequest,
          errors={403: "a correction by a caller who is not an agent", 404: "no such answer (or another caller's)"}),
    Route("GET", "/chat/history", "chat_history", "The latest turns of one of the caller's conversations",
          reply=History, query=HistoryQuery),
    Route("GET", "/healthz", "healthz", "Store and model checks, serving versions, cache counters", reply=Health,
          access="open", errors={503: "the store or the model is not working (the body says which)"}),
    Route("GET", "/metrics", "metrics", "Prometheus metrics", reply="text/plain", access="loopback"),
    Route("GET", "/openapi.json", "openapi", "This document", reply="application/json", access="open"),
    Route("POST", "/admin/promote", "admin_promote", "Make a registered model version the production one",
          reply=ModelState, body=VersionRequest, errors=NOT_ADMIN | UNKNOWN_VERSION),
    Route("POST", "/admin/rollback", "admin_rollback", "Go back to the previous production version",
          reply=ModelState, body=EmptyRequest, errors=NOT_ADMIN | {422: "nothing to roll back to, or a field sent"}),
    Route("POST", "/admin/ab", "admin_ab", "Serve a version to a share of the users (A/B test)",
          reply=ModelState, body=AbRequest, errors=NOT_ADMIN | UNKNOWN_VERSION),
    Route("GET", "/admin/audit", "admin_audit", "The newest audit rows, oldest first",
          reply=AuditEvents, query=AuditQuery, errors=NOT_ADMIN),
    Route("GET", "/admin/roles", "admin_roles", "Every configured or granted role", reply=Roles, errors=NOT_ADMIN),
    Route("POST", "/admin/roles", "admin_grant", "Grant a role at run time (customer takes a granted one back)",
          reply=RoleReply, body=RoleRequest, errors=NOT_ADMIN),
    Route("GET", "/admin/handoffs", "admin_handoffs", "Conversations handed off to agents, with transcripts",
          reply=HandOffs, errors=NOT_AGENT),
    Route("POST", "/admin/reply", "admin_reply", "An agent's reply to a customer (takes the conversation over)",
          reply=AgentReplyResult, body=AgentReplyRequest, errors=NOT_AGENT | NO_CONVERSATION),
    Route("POST", "/admin/release", "admin_release", "Give a handed-off conversation back to the bot",
          reply=ReleaseResult, body=ConversationRequest, errors=NOT_AGENT),
)
# fmt: on

# What every route of a kind may answer; a route's own `errors` add to these or say more.
ALWAYS = {500: "an unexpected failure (logged with its traceback)"}
NEEDS_TOKEN = {401: "no bearer token, or an unknown one"}
TAKES_JSON = {
    400: "the body is not JSON: malformed, not UTF-8 or nested too deeply",
    413: f"the body is larger than {MAX_REQUEST_BYTES // 2**20} MiB",
    422: "a field is missing, unknown, of the wrong type or out of range",
}
REF = "#/components/schemas/{model}"
# One server-sent event of a streamed /chat: `partial` {"text"} while the answer grows, then `answer` (ChatReply).
SSE_EVENT = {
    "type": "object",
    "properties": {"event": {"enum": ["partial", "answer"]}, "data": {"type": "string", "description": "JSON"}},
    "required": ["event", "data"],
}
DESCRIPTION = (
    "Every route but /healthz and /openapi.json needs `Authorization: Bearer <token>` (BOT_API_TOKEN or a"
    ' BOT_API_KEYS token); /metrics is also open to loopback peers. Every error is JSON: {"error": "..."},'
    f" except a request line or header over {MAX_LINE_BYTES // 1024} KiB, which the HTTP server refuses itself"
    " (400, plain text)."
)


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ROUTES, served at /openapi.json."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorReply, "serialization")]
    for route in ROUTES:
        models += [(route.body, "validation")] if route.body else []
        models += [(route.reply, "serialization")] if isinstance(route.reply, type) else []
    refs, schemas = models_json_schema(list(dict.fromkeys(models)), ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        errors = ALWAYS | (NEEDS_TOKEN if route.access != "open" else {}) | (TAKES_JSON if route.body else {})
        if route.query:
            errors[422] = TAKES_JSON[422]
        content = _content(route.reply, refs) | ({"text/event-stream": {"schema": SSE_EVENT}} if route.streams else {})
        responses = {"200": {"description": "OK", "content": content}}
        responses |= {
            str(status): {"description": text, "content": _content(ErrorReply, refs)}
            for status, text in sorted((errors | route.errors).items())
        }
        operation: dict[str, Any] = {"summary": route.summary, "operationId": route.handler, "responses": responses}
        operation["security"] = {"token": [{"bearer": []}], "open": [], "loopback": [{}, {"bearer": []}]}[route.access]
        if route.body:
            operation["requestBody"] = {
                "required": _needs_fields(route.body),
                "content": {"application/json": {"schema": refs[(route.body, "validation")]}},
            }
        if route.query:
            operation["parameters"] = _parameters(route.query)
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "shopbot HTTP API", "version": "1", "description": DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _needs_fields(model: type[BaseModel]) -> bool:
    return any(f.is_required() for f in model.model_fields.values())


def _content(reply: type[BaseModel] | str, refs: dict[Any, Any]) -> dict[str, Any]:
    if isinstance(reply, str):
        return {reply: {"schema": {"type": "object" if reply == "application/json" else "string"}}}
    return {"application/json": {"schema": refs[(reply, "serialization")]}}


def _parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    return [
        {
            "name": name,
            "in": "query",
            "required": name in schema.get("required", []),
            "description": prop.pop("description", ""),
            "schema": prop,
        }
        for name, prop in schema["properties"].items()
    ]


# --- parsing and replies ------------------------------------------------------------------------------------


def _error(status: int, message: str, headers: LooseHeaders | None = None) -> web.Response:
    return web.json_response(dumps=dumps, data={"error": message}, status=status, headers=headers)


def _ok(data: Any) -> web.Response:
    return web.json_response(dumps=dumps, data=data)


def _chat_reply(reply: BotReply) -> dict[str, Any]:
    return {
        "answer": reply.text,
        "turn_id": reply.turn_id,
        "cached": reply.cached,
        "model_version": reply.model_version,
        "outcome": reply.outcome,
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    """One server-sent event (JSON has no raw line breaks, so one data line)."""
    return f"event: {name}\ndata: {dumps(data)}\n\n".encode()


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own refusals (404, 405, 413 for a body over the limit) as JSON errors, and an
    unexpected exception as a JSON 500 instead of aiohttp's HTML page."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = exc.headers.copy()
        headers.popall(hdrs.CONTENT_TYPE, None)  # ours is JSON
        default = f"{exc.status}: {exc.reason}"  # aiohttp's text when it has nothing to add
        detail = exc.text if exc.text and exc.text != default else f"{request.method} {request.path}"
        return _error(exc.status, f"{exc.reason.lower()}: {detail}", headers)
    except Exception:
        log.exception("http: %s %s failed", request.method, request.path)
        return _error(500, "internal error")


Parsed = TypeVar("Parsed", bound=BaseModel)
# Fields that used to say who is calling; now only the token does.
REFUSED_FIELDS = {"rater": "rater: not accepted: the rater is the owner of the Authorization token"}


async def _parse(request: web.Request, model: type[Parsed]) -> Parsed | web.Response:
    """The JSON body as `model` (whatever the Content-Type says: `curl -d` sends a form type), or the
    error to answer. An empty body stands for {} where the model needs no field."""
    raw = await request.read()
    if not raw and not _needs_fields(model):
        return model.model_validate({})
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return _error(400, "body is not UTF-8 text")
    except RecursionError:
        return _error(400, "body is not valid JSON: nested too deeply")
    except json.JSONDecodeError:
        return _error(400, "body is not valid JSON")
    except ValueError:  # Python refuses ints of more than 4300 digits (sys.get_int_max_str_digits)
        return _error(422, "body: a number has too many digits")
    return _validate(model, body)


def _validate(model: type[Parsed], data: Any) -> Parsed | web.Response:
    if isinstance(data, dict):
        for name, message in REFUSED_FIELDS.items():
            if name in data:
                return _error(422, message)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return _error(422, f"{where}: {first['msg']}")


def _bearer(request: web.Request) -> str | None:
    """The bearer token of the request; "" for an Authorization header of another kind, empty, or
    with bytes that are not UTF-8 (aiohttp keeps those as lone surrogates)."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and _is_unicode(token) else ""


def _from_loopback(request: web.Request) -> bool:
    try:
        return request.remote is not None and ipaddress.ip_address(request.remote).is_loopback
    except ValueError:
        return False


Handler = Callable[[web.Request, Caller], Awaitable[web.StreamResponse]]


class HttpChannel:
    name = CHANNEL

    def __init__(self, service: ChannelService, admin: AdminApi) -> None:
        """`admin` checks tokens and runs the admin API."""
        self.service = service
        self.admin = admin

    def add_routes(self, app: web.Application) -> None:
        """ROUTES, and JSON errors for every request the app serves."""
        app.middlewares.append(json_errors)
        for route in ROUTES:
            handler = getattr(self, route.handler)
            if route.access == "token":
                handler = self._authenticated(handler)
            if route.method == "GET":
                app.router.add_get(route.path, handler)  # and HEAD, for probes
            else:
                app.router.add_route(route.method, route.path, handler)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    # --- who is calling ---------------------------------------------------------------------------------

    async def caller(self, request: web.Request) -> Caller | web.Response:
        """The request's caller, or the 401 to answer. Refusals are logged without the body or token."""
        token = _bearer(request)
        caller = await self.admin.authenticate(token) if token != "" else None
        if caller is None:
            reason = "missing bearer token" if token is None else "invalid token"
            log.warning("http: %s %s from %s refused: %s", request.method, request.path, request.remote, reason)
            return _error(
                401,
                f"{reason}: send Authorization: Bearer <token> (BOT_API_TOKEN or a BOT_API_KEYS token)",
                {"WWW-Authenticate": 'Bearer realm="bot"'},
            )
        return caller

    def _authenticated(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def route(request: web.Request) -> web.StreamResponse:
            caller = await self.caller(request)
            if isinstance(caller, web.Response):
                return caller
            try:
                return await handler(request, caller)
            except NotAllowed as exc:  # refused for the caller's role; audited where it was decided
                log.info("http: %s %s refused for %s: %s", request.method, request.path, caller.sender, exc)
                return _error(403, str(exc))

        return route

    # --- chat and feedback ------------------------------------------------------------------------------

    async def chat(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        parsed = await _parse(request, ChatRequest)
        if isinstance(parsed, web.Response):
            return parsed
        if not parsed.text.strip():
            return _error(400, "text is empty")
        if len(parsed.text) > self.service.max_message_chars:
            return _error(413, f"text is longer than {self.service.max_message_chars} characters")
        scope = caller.name + SCOPE  # callers never see or continue each other's conversations or retries
        message = UserMessage(
            channel=CHANNEL,
            conversation_id=scope + parsed.conversation_id,
            user_id=scope + parsed.user_id,
            message_id=scope + (parsed.message_id or uuid.uuid4().hex),
            text=parsed.text,
        )
        if parsed.stream:
            return await self._chat_stream(request, message)
        return _ok(_chat_reply(await self.service.handle(message)))

    async def _chat_stream(self, request: web.Request, message: UserMessage) -> web.StreamResponse:
        """Server-sent events: `partial` {"text"} while the answer grows, then `answer` (the /chat reply)."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def partial(text: str) -> None:  # raises once the client is gone: generation then stops
            await response.write(_event("partial", {"text": text}))

        reply = await self.service.handle(message, partial)
        try:
            await response.write(_event("answer", _chat_reply(reply)))
            await response.write_eof()
        except ConnectionError:
            log.info("http: %s left before the answer", message.conversation_id)
        return response

    async def feedback(self, request: web.Request, caller: Caller) -> web.Response:
        parsed = await _parse(request, FeedbackRequest)
        if isinstance(parsed, web.Response):
            return parsed
        if parsed.rating not in (1, -1) and not (parsed.rating is None and parsed.correction):
            return _error(422, "rating: must be 1 or -1")
        if not caller.role.includes(Role.AGENT) and not await self._own_turn(caller, parsed.turn_id):
            return _error(404, f"no answer with turn_id {parsed.turn_id}")  # another caller's: not shown
        try:
            result: dict[str, Any] = {"turn_id": parsed.turn_id}
            if parsed.correction is not None:
                await self.service.correct(parsed.turn_id, caller.name, parsed.correction)
                result["correction"] = "stored"
            if parsed.rating is not None:
                rated = await self.service.rate(parsed.turn_id, caller.name, parsed.rating)
                result["role"] = rated.role.value
                if rated.handed_off is not None:
                    result |= {"handed_off": True, "customer_reply": rated.customer_reply}
        except UnknownTurn as exc:
            return _error(404, str(exc))
        except ValueError as exc:
            return _error(422, str(exc))
        return _ok(result)

    async def _own_turn(self, caller: Caller, turn_id: int) -> bool:
        """Whether the turn was answered in one of this caller's HTTP conversations."""
        turn = await self.service.turn(turn_id)
        return turn is not None and turn.channel == CHANNEL and turn.conversation_id.startswith(caller.name + SCOPE)

    async def chat_history(self, request: web.Request, caller: Caller) -> web.Response:
        """What a front end shows its customer, agents' replies during a hand-off included."""
        parsed = _validate(HistoryQuery, dict(request.query))
        if isinstance(parsed, web.Response):
            return parsed
        conversation = caller.name + SCOPE + parsed.conversation_id
        turns = [
            {"turn_id": t.id, "question": t.user_text, "answer": t.answer, "outcome": t.outcome, "at": t.created_at}
            for t in await self.service.transcript(conversation)
        ]
        return _ok({"turns": turns, "with_agents": await self.service.with_agents(CHANNEL, conversation)})

    # --- open routes --------------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        health = await self.service.status()
        return web.json_response(dumps=dumps, data=health, status=200 if health["status"] == "ok" else 503)

    async def openapi(self, request: web.Request) -> web.Response:
        return _ok(openapi_document())

    async def metrics(self, request: web.Request) -> web.Response:
        """Open to loopback peers (a local Prometheus); from elsewhere any valid token."""
        if not _from_loopback(request):
            caller = await self.caller(request)
            if isinstance(caller, web.Response):
                return caller
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # --- admin API (admins only; Admin checks the role and audits refusals) -------------------------------

    async def admin_promote(self, request: web.Request, caller: Caller) -> web.Response:
        async def run(parsed: VersionRequest) -> Any:
            return await self.admin.promote(caller, parsed.version)

        return await self._operation(request, caller, "promote", VersionRequest, run)

    async def admin_rollback(self, request: web.Request, caller: Caller) -> web.Response:
        async def run(parsed: EmptyRequest) -> Any:
            return await self.admin.rollback(caller)

        return await self._operation(request, caller, "rollback", EmptyRequest, run)

    async def admin_ab(self, request: web.Request, caller: Caller) -> web.Response:
        async def run(parsed: AbRequest) -> Any:
            return await self.admin.ab_test(caller, parsed.version, parsed.share)

        return await self._operation(request, caller, "ab_test", AbRequest, run)

    async def admin_grant(self, request: web.Request, caller: Caller) -> web.Response:
        async def run(parsed: RoleRequest) -> Any:
            return await self.admin.grant(caller, parsed.subject, parsed.role)

        return await self._operation(request, caller, "grant_role", RoleRequest, run)

    async def admin_roles(self, request: web.Request, caller: Caller) -> web.Response:
        return _ok({"roles": await self.admin.roles_list(caller)})

    async def admin_audit(self, request: web.Request, caller: Caller) -> web.Response:
        await self.admin.require_admin(caller, "read_audit")
        query = _validate(AuditQuery, dict(request.query))
        if isinstance(query, web.Response):
            return query
        try:
            rows = await self.admin.audit_log(caller, query.limit, query.actor or None, query.action or None)
        except ValueError as exc:
            return _error(422, str(exc))
        return _ok({"events": rows})

    # --- hand-off: agents answer customers of any channel (bot/handoff.py checks the role, audits) --------

    async def admin_handoffs(self, request: web.Request, caller: Caller) -> web.Response:
        return _ok({"handoffs": await self.service.handoffs(caller.name)})

    async def admin_reply(self, request: web.Request, caller: Caller) -> web.Response:
        parsed = await _parse(request, AgentReplyRequest)
        if isinstance(parsed, web.Response):
            return parsed
        try:
            turn_id = await self.service.agent_reply(
                parsed.channel, parsed.conversation_id, caller.name, parsed.text, uuid.uuid4().hex
            )
        except LookupError as exc:
            return _error(404, str(exc))
        except ValueError as exc:
            return _error(422, str(exc))
        return _ok({"turn_id": turn_id})

    async def admin_release(self, request: web.Request, caller: Caller) -> web.Response:
        parsed = await _parse(request, ConversationRequest)
        if isinstance(parsed, web.Response):
            return parsed
        return _ok({"released": await self.service.release(parsed.channel, parsed.conversation_id, caller.name)})

    async def _operation(
        self,
        request: web.Request,
        caller: Caller,
        action: str,
        model: type[Parsed],
        run: Callable[[Parsed], Awaitable[Any]],
    ) -> web.Response:
        """One admin operation: the role first (a refusal is audited, its body never read), then the
        body; unknown versions answer 404, other bad input 422, and nothing is written."""
        await self.admin.require_admin(caller, action)
        parsed = await _parse(request, model)
        if isinstance(parsed, web.Response):
            return parsed
        try:
            return _ok(await run(parsed))
        except LookupError as exc:
            return _error(404, str(exc))
        except ValueError as exc:
            return _error(422, str(exc))
