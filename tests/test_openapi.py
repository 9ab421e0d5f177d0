"""The HTTP API's OpenAPI document (/openapi.json) and its error shape: the document lists every route
the app serves, schemathesis fuzzes the real server against it (no 5xx, nothing outside the
document), and malformed input of every kind gets a 4xx JSON error and stores nothing."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from adapters.http import HttpChannel, openapi_document
from bot.models.registry import Registry
from bot.server import MAX_REQUEST_BYTES, RunningServer
from tests.support import auth

CHAT = b'{"conversation_id": "c1", "user_id": "u1", "text": %s}'
# Who the fuzzer calls as: an admin, an agent, a customer, an unknown token and no token at all.
CALLERS = ["root", "alice", "u1", "not-a-known-token", None]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 40


async def send(
    server: RunningServer, method: str, path: str, data: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The status, the JSON reply (aiohttp raises if it is not application/json) and the headers."""
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{server.port}{path}"
        async with http.request(method, url, data=data, headers=headers or {}) as resp:
            return resp.status, await resp.json(), dict(resp.headers)


async def nothing_stored(server: RunningServer) -> None:
    store = server.bot.store
    assert await store.turns() == [] and await store.ratings() == [] and await store.corrections() == []
    assert await store.audit_events() == [] and await store.granted_roles() == []
    state = Registry(server.bot.settings.data_dir).state()
    assert (state.current, state.candidate, state.history) == ("v0001", None, [])


async def test_the_document_lists_every_route_the_app_serves(server: RunningServer) -> None:
    status, document, _ = await send(server, "GET", "/openapi.json")  # open, like /healthz
    assert status == 200 and document["openapi"].startswith("3.1")
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    served = {
        (route.method, route.resource.canonical)
        for route in server.runner.app.router.routes()
        if route.method != "HEAD" and route.resource is not None  # aiohttp adds HEAD to every GET
    }
    assert documented == served
    for path, item in document["paths"].items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            assert {"200", "500"} <= codes, (method, path)
            assert ("401" in codes) == (operation["security"] != []), (method, path)
            if "requestBody" in operation:
                assert {"400", "413", "422"} <= codes, (method, path)


# (method, path, body, extra headers, caller, status, the error's start)
MALFORMED = [
    ("POST", "/chat", CHAT % b'"\\ud800"', {}, "u1", 422, "text: Value error, not valid Unicode"),
    ("POST", "/chat", CHAT % b'"\\udfff and more"', {}, "u1", 422, "text: Value error"),
    ("POST", "/chat", b'{"conversation_id": "\\udc80", "user_id": "u", "text": "hi"}', {}, "u1", 422, "conversation_id"),
    ("POST", "/chat", b'{"conversation_id": "c", "user_id": "u", "text": "hi", "\\ud800": 1}', {}, "u1", 422,
     "body: Input should be a valid string"),
    ("POST", "/chat", CHAT % b'"\xff\xfe"', {}, "u1", 400, "body is not UTF-8"),
    ("POST", "/chat", b"[" * 100_000 + b"]" * 100_000, {}, "u1", 400, "body is not valid JSON: nested too deeply"),
    ("POST", "/chat", CHAT % (b"[" * 100_000), {}, "u1", 400, "body is not valid JSON"),
    ("POST", "/chat", b"", {}, "u1", 400, "body is not valid JSON"),
    ("POST", "/chat", b'"hi"', {}, "u1", 422, "body: Input should be a valid dictionary"),
    ("POST", "/chat", b"null", {}, "u1", 422, "body: Input should be a valid dictionary"),
    ("POST", "/chat", b"42", {}, "u1", 422, "body: Input should be a valid dictionary"),
    ("POST", "/chat", b"<chat><text>hi</text></chat>", {"Content-Type": "application/xml"}, "u1", 400,
     "body is not valid JSON"),
    ("POST", "/chat", b"conversation_id=c&user_id=u&text=hi", {"Content-Type": "application/x-www-form-urlencoded"},
     "u1", 400, "body is not valid JSON"),
    ("POST", "/chat", b'--x\r\nContent-Disposition: form-data; name="text"\r\n\r\nhi\r\n--x--\r\n',
     {"Content-Type": "multipart/form-data; boundary=x"}, "u1", 400, "body is not valid JSON"),
    ("POST", "/chat", b"<p>hi</p>", {"Content-Type": "text/html; charset=klingon"}, "u1", 400, "body is not valid JSON"),
    ("POST", "/chat", b" " * (MAX_REQUEST_BYTES + 1), {}, "u1", 413, "request entity too large: Maximum request body"),
    ("POST", "/feedback", b'{"turn_id": 1%s, "rating": 1}' % (b"0" * 400), {}, "alice", 422,
     "turn_id: Input should be less than or equal to 9223372036854775807"),
    ("POST", "/feedback", b'{"turn_id": %d, "rating": 1}' % 2**63, {}, "alice", 422, "turn_id: Input should be less"),
    ("POST", "/feedback", b'{"turn_id": 0, "rating": 1}', {}, "alice", 422, "turn_id: Input should be greater"),
    ("POST", "/feedback", b'{"turn_id": 1%s}' % (b"0" * 5000), {}, "alice", 422, "body: a number has too many digits"),
    ("POST", "/feedback", b'{"turn_id": 1, "rating": 1%s}' % (b"0" * 400), {}, "alice", 422, "rating: must be 1 or -1"),
    ("POST", "/feedback", b'{"turn_id": 1, "correction": "\\ud800"}', {}, "alice", 422, "correction: Value error"),
    ("POST", "/admin/ab", b'{"version": "v0001", "share": 1%s}' % (b"0" * 400), {}, "root", 422, "share: Input"),
    ("POST", "/admin/ab", b'{"version": "v0001", "share": NaN}', {}, "root", 422, "share: Input should be a finite"),
    ("POST", "/admin/promote", b'{"version": "\\ud800"}', {}, "root", 422, "version: Value error"),
    ("POST", "/admin/rollback", b"[]", {}, "root", 422, "body: Input should be a valid dictionary"),
    ("POST", "/admin/roles", b'{"subject": "http:u1", "role": "\\ud800"}', {}, "root", 422, "role: Value error"),
    ("GET", "/admin/audit?limit=1" + "0" * 400, b"", {}, "root", 422, "limit: must be between"),
    ("GET", "/admin/audit?limit=1" + "0" * 5000, b"", {}, "root", 422, "limit: Unable to parse"),
    ("GET", "/admin/audit?actor=%ED%A0%80", b"", {}, "root", 200, ""),  # not UTF-8: kept percent-encoded
    ("GET", "/admin/audit?actor=" + "a" * 300, b"", {}, "root", 422, "actor: String should have at most"),
    # A query past aiohttp's default 8 KiB request line still reaches the handler (the fuzzer sends such).
    ("GET", "/admin/audit?actor=" + "%F2%BD%82%B5" * 3000, b"", {}, "root", 422, "actor: String should have at most"),
    ("GET", "/no/such/route", b"", {}, "root", 404, "not found: GET /no/such/route"),
    ("GET", "/chat", b"", {}, "root", 405, "method not allowed: GET /chat"),
]  # fmt: skip


async def test_malformed_input_gets_a_json_error_and_stores_nothing(server: RunningServer) -> None:
    for method, path, body, headers, who, status, error in MALFORMED:
        got, reply, _ = await send(server, method, path, body, headers | auth(who))
        assert got == status, (path, body[:80], reply)
        assert reply.get("error", "").startswith(error) if status != 200 else "events" in reply, (path, reply)
    await nothing_stored(server)


async def test_headers_that_are_not_utf8_are_an_unknown_token(server: RunningServer) -> None:
    """aiohttp keeps undecodable header bytes as lone surrogates; they must not reach the token check
    (a raw request: HTTP clients will not send such bytes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /admin/roles HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n")
    head, _, body = (await reader.read()).partition(b"\r\n\r\n")
    writer.close()
    assert head.split()[1] == b"401" and b"application/json" in head and b"invalid token" in body


async def test_an_unexpected_failure_is_a_json_500_with_a_logged_traceback(
    server: RunningServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    [channel] = [c for c in server.channels if isinstance(c, HttpChannel)]

    async def broken(message: Any) -> Any:
        raise RuntimeError("the core broke")

    monkeypatch.setattr(channel.service, "handle", broken)
    status, reply, headers = await send(server, "POST", "/chat", CHAT % b'"hi"', auth("u1"))
    assert (status, reply) == (500, {"error": "internal error"}) and headers["Content-Type"].startswith(
        "application/json"
    )
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "adapters.http"]
    assert "POST /chat failed" in record.getMessage() and record.exc_info and "the core broke" in caplog.text


def fuzz(base_url: str) -> set[str]:
    """Every operation of the served document, positive and negative data, each case sent as every
    kind of caller; every response must be documented (status, content type, headers, body) and none
    a 5xx. The operations fuzzed."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    with requests.Session() as http:
        for operation in operations:
            cases = operation.as_strategy(schemathesis.GenerationMode.POSITIVE) | operation.as_strategy(
                schemathesis.GenerationMode.NEGATIVE
            )

            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                phases=[Phase.generate],  # no shrinking: the failure report has the request to replay
                suppress_health_check=list(HealthCheck),
            )
            @given(case=cases)
            def check(case: schemathesis.Case) -> None:
                for who in CALLERS:
                    case.call_and_validate(
                        base_url=base_url, session=http, headers=auth(who), checks=CHECKS, timeout=60
                    )

            check()
    return {operation.label for operation in operations}


async def test_schemathesis_finds_no_server_error_and_nothing_undocumented(server: RunningServer) -> None:
    # The fuzzer is synchronous (requests): it runs in a thread while this loop serves its calls.
    fuzzed = await asyncio.to_thread(fuzz, f"http://127.0.0.1:{server.port}")
    documented = {f"{method.upper()} {path}" for path, item in openapi_document()["paths"].items() for method in item}
    assert fuzzed == documented - {"GET /openapi.json"}  # schemathesis leaves out the document itself
