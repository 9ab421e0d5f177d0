"""HTTP channel: a small JSON API for local use, tests and other front ends.

Every route but /healthz needs `Authorization: Bearer <token>` (README "HTTP API"): the service
token (BOT_API_TOKEN) or a personal token (BOT_API_KEYS); /metrics is also open to loopback peers.
With no token configured the API is open to its loopback address only (BotSettings.check).

POST /chat {conversation_id, user_id, text[, message_id]} -> {answer, turn_id, cached, model_version}
POST /feedback {turn_id, rating: 1|-1[, correction]}: the rater is the token's owner
GET /healthz, GET /metrics (Prometheus)
POST /admin/promote {version}, POST /admin/rollback, POST /admin/ab {version, share},
GET /admin/audit[?limit=&actor=&action=], GET /admin/roles, POST /admin/roles {subject, role}
"""

from __future__ import annotations

import ipaddress
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError

from bot.feedback import Caller, NotAllowed, Role, UnknownTurn
from bot.message import UserMessage
from bot.service import ChannelService

CHANNEL = "http"
log = logging.getLogger(__name__)
# Chinese answers stay readable in the JSON instead of \uXXXX escapes.
dumps = partial(json.dumps, ensure_ascii=False)
# The caller's name scopes what it sends: `<caller>/<id>` inside the UserMessage.
SCOPE = "/"


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
    correction: StrictStr | None = None


class VersionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: StrictStr = Field(min_length=1, max_length=100)


class AbRequest(VersionRequest):
    share: StrictFloat | StrictInt


class EmptyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RoleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject: StrictStr = Field(min_length=1, max_length=210)
    role: StrictStr


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(dumps=dumps, data={"error": message}, status=status, headers=headers)


def _ok(data: Any) -> web.Response:
    return web.json_response(dumps=dumps, data=data)


Parsed = TypeVar("Parsed", bound=BaseModel)
# Fields that used to say who is calling; now only the token does.
REFUSED_FIELDS = {"rater": "rater: not accepted: the rater is the owner of the Authorization token"}


async def _parse(request: web.Request, model: type[Parsed], empty_ok: bool = False) -> Parsed | web.Response:
    if empty_ok and not await request.read():
        return model.model_validate({})
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "body is not valid JSON")
    if isinstance(body, dict):
        for name, message in REFUSED_FIELDS.items():
            if name in body:
                return _error(422, message)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        return _error(422, f"{field}: {first['msg']}")


def _bearer(request: web.Request) -> str | None:
    """The bearer token of the request; "" for an Authorization header of another kind or empty."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _from_loopback(request: web.Request) -> bool:
    try:
        return request.remote is not None and ipaddress.ip_address(request.remote).is_loopback
    except ValueError:
        return False


Handler = Callable[[web.Request, Caller], Awaitable[web.Response]]


class HttpChannel:
    name = CHANNEL

    def __init__(self, service: ChannelService, admin: AdminApi) -> None:
        """`admin` checks tokens and runs the admin API."""
        self.service = service
        self.admin = admin

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/chat", self._authenticated(self.chat))
        app.router.add_post("/feedback", self._authenticated(self.feedback))
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/admin/promote", self._authenticated(self.admin_promote))
        app.router.add_post("/admin/rollback", self._authenticated(self.admin_rollback))
        app.router.add_post("/admin/ab", self._authenticated(self.admin_ab))
        app.router.add_get("/admin/audit", self._authenticated(self.admin_audit))
        app.router.add_get("/admin/roles", self._authenticated(self.admin_roles))
        app.router.add_post("/admin/roles", self._authenticated(self.admin_grant))

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

    def _authenticated(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def route(request: web.Request) -> web.Response:
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

    async def chat(self, request: web.Request, caller: Caller) -> web.Response:
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
        reply = await self.service.handle(message)
        return _ok(
            {
                "answer": reply.text,
                "turn_id": reply.turn_id,
                "cached": reply.cached,
                "model_version": reply.model_version,
            }
        )

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
                result["role"] = (await self.service.rate(parsed.turn_id, caller.name, parsed.rating)).value
        except UnknownTurn as exc:
            return _error(404, str(exc))
        except ValueError as exc:
            return _error(422, str(exc))
        return _ok(result)

    async def _own_turn(self, caller: Caller, turn_id: int) -> bool:
        """Whether the turn was answered in one of this caller's HTTP conversations."""
        turn = await self.service.turn(turn_id)
        return turn is not None and turn.channel == CHANNEL and turn.conversation_id.startswith(caller.name + SCOPE)

    # --- open routes --------------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return _ok(self.service.status())

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

        return await self._operation(request, caller, "rollback", EmptyRequest, run, empty_ok=True)

    async def admin_ab(self, request: web.Request, caller: Caller) -> web.Response:
        async def run(parsed: AbRequest) -> Any:
            return await self.admin.ab_test(caller, parsed.version, float(parsed.share))

        return await self._operation(request, caller, "ab_test", AbRequest, run)

    async def admin_grant(self, request: web.Request, caller: Caller) -> web.Response:
        async def run(parsed: RoleRequest) -> Any:
            return await self.admin.grant(caller, parsed.subject, parsed.role)

        return await self._operation(request, caller, "grant_role", RoleRequest, run)

    async def admin_roles(self, request: web.Request, caller: Caller) -> web.Response:
        return _ok({"roles": await self.admin.roles_list(caller)})

    async def admin_audit(self, request: web.Request, caller: Caller) -> web.Response:
        await self.admin.require_admin(caller, "read_audit")
        query = request.query
        limit = query.get("limit", "100")
        if not (limit.isascii() and limit.isdigit()):
            return _error(422, "limit: must be a whole number")
        try:
            rows = await self.admin.audit_log(caller, int(limit), query.get("actor"), query.get("action"))
        except ValueError as exc:
            return _error(422, str(exc))
        return _ok({"events": rows})

    async def _operation(
        self,
        request: web.Request,
        caller: Caller,
        action: str,
        model: type[Parsed],
        run: Callable[[Parsed], Awaitable[Any]],
        empty_ok: bool = False,
    ) -> web.Response:
        """One admin operation: the role first (a refusal is audited, its body never read), then the
        body; unknown versions answer 404, other bad input 422, and nothing is written."""
        await self.admin.require_admin(caller, action)
        parsed = await _parse(request, model, empty_ok)
        if isinstance(parsed, web.Response):
            return parsed
        try:
            return _ok(await run(parsed))
        except LookupError as exc:
            return _error(404, str(exc))
        except ValueError as exc:
            return _error(422, str(exc))
