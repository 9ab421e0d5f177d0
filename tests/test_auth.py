"""Who may do what: tokens on the HTTP API, roles in one place, the admin API and its audit trail.
End to end through the real server (`bot.__main__.start`) on 127.0.0.1 with the starter model."""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.__main__ import start
from bot.config import BotSettings, ConfigError, load
from bot.feedback import Feedback, Role
from bot.models.registry import Registry
from bot.server import RunningServer
from bot.store import Store
from tests.support import ORDER_A, ORDER_Q, TOKENS, auth, get, make_settings, post

CHAT = {"conversation_id": "c1", "user_id": "u1", "text": ORDER_Q}
SECRET_TEXT = "body-marker-that-must-not-be-logged"


@pytest.fixture
async def served(data_dir: Path) -> AsyncIterator[list[RunningServer]]:
    """Servers a test starts with its own settings, stopped at the end."""
    running: list[RunningServer] = []
    yield running
    for server in running:
        await server.stop()


async def serve(served: list[RunningServer], settings: BotSettings) -> RunningServer:
    server = await start(settings, {})
    served.append(server)
    return server


async def call(server: RunningServer, method: str, path: str, body: Any = None, headers: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{server.port}{path}"
        async with http.request(method, url, json=body, headers=headers or {}) as resp:
            return resp.status, (await resp.json() if resp.content_type == "application/json" else await resp.text())


def actions(events: list[dict[str, Any]], actor: str | None = None) -> list[str]:
    return [e["action"] for e in events if actor is None or e["actor"] == actor]


ROUTES = [
    ("POST", "/chat", {**CHAT, "text": SECRET_TEXT}),
    ("POST", "/feedback", {"turn_id": 1, "rating": 1, "correction": SECRET_TEXT}),
    ("POST", "/admin/promote", {"version": "v0001"}),
    ("POST", "/admin/rollback", {}),
    ("POST", "/admin/ab", {"version": "v0001", "share": 0.5}),
    ("GET", "/admin/audit", None),
    ("GET", "/admin/roles", None),
    ("POST", "/admin/roles", {"subject": "telegram:5", "role": "admin"}),
]


async def test_every_route_but_healthz_needs_a_token(server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for method, path, body in ROUTES:
        for headers in ({}, {"Authorization": "Bearer not-a-known-token"}, {"Authorization": "Basic YWxpY2U6cHc="}):
            status, reply = await call(server, method, path, body, headers)
            assert status == 401 and "token" in reply["error"], (method, path, headers, reply)
    status, health = await call(server, "GET", "/healthz")
    assert status == 200 and health["status"] == "ok"
    store = server.bot.store
    assert await store.turns() == [] and await store.ratings() == [] and await store.audit_events() == []
    assert Registry(server.bot.settings.data_dir).state().candidate is None
    logged = caplog.text
    assert "refused: missing bearer token" in logged and "refused: invalid token" in logged
    assert SECRET_TEXT not in logged and "not-a-known-token" not in logged


async def test_the_rater_is_the_tokens_owner_never_a_body_field(data_dir: Path, served: list[RunningServer]) -> None:
    # alice is an agent by her key's role alone (not in AGENT_IDS).
    server = await serve(served, make_settings(data_dir, agent_ids=""))
    _, chat = await post(server, "/chat", CHAT)
    status, reply = await post(server, "/feedback", {"turn_id": chat["turn_id"], "rating": 1, "rater": "alice"})
    assert status == 422 and reply["error"].startswith("rater: not accepted")
    status, reply = await post(server, "/feedback", {"turn_id": chat["turn_id"], "rating": 1}, who="alice")
    assert status == 200 and reply["role"] == "agent"
    status, reply = await post(server, "/feedback", {"turn_id": chat["turn_id"], "rating": -1})
    assert status == 200 and reply["role"] == "customer"
    ratings = {r["rater"]: r["role"] for r in await server.bot.store.ratings()}
    assert ratings == {"http:alice": "agent", "http:service": "customer"}


async def test_conversations_and_retries_are_scoped_to_the_caller(server: RunningServer) -> None:
    mine = await post(server, "/chat", {**CHAT, "message_id": "m1"})
    again = await post(server, "/chat", {**CHAT, "message_id": "m1"})  # a retry: the same answer
    theirs = await post(server, "/chat", {**CHAT, "message_id": "m1"}, who="u1")  # same ids, another caller
    assert mine[0] == again[0] == theirs[0] == 200 and mine[1]["answer"] == ORDER_A
    assert again[1]["turn_id"] == mine[1]["turn_id"] != theirs[1]["turn_id"]
    turns = {t.id: t for t in await server.bot.store.turns()}
    assert len(turns) == 2
    assert (turns[mine[1]["turn_id"]].conversation_id, turns[mine[1]["turn_id"]].message_id) == (
        "service/c1",
        "service/m1",
    )
    assert turns[theirs[1]["turn_id"]].conversation_id == "u1/c1"
    # A customer caller cannot rate another caller's answer, nor learn that it exists.
    status, reply = await post(server, "/feedback", {"turn_id": mine[1]["turn_id"], "rating": -1}, who="u1")
    assert status == 404 and reply["error"] == f"no answer with turn_id {mine[1]['turn_id']}"
    status, _ = await post(server, "/feedback", {"turn_id": theirs[1]["turn_id"], "rating": -1})
    assert status == 404 and await server.bot.store.ratings() == []
    # Agents review every answer.
    assert (await post(server, "/feedback", {"turn_id": theirs[1]["turn_id"], "rating": 1}, who="alice"))[0] == 200


async def test_a_role_that_may_not_is_refused_with_403_and_audited(server: RunningServer) -> None:
    _, chat = await post(server, "/chat", CHAT)
    status, reply = await post(server, "/feedback", {"turn_id": chat["turn_id"], "correction": "x"}, who="service")
    assert status == 403 and "not an agent" in reply["error"]
    for who, (method, path, body) in [
        ("alice", ROUTES[2]),
        ("alice", ROUTES[4]),
        ("u1", ROUTES[5]),
        ("service", ROUTES[7]),
    ]:
        status, reply = await call(server, method, path, body, auth(who))
        assert status == 403 and "not an admin" in reply["error"], (who, path, reply)
    events = await server.bot.store.audit_events()
    refused = [(e["actor"], e["action"], e["outcome"]) for e in events if e["outcome"] == "refused"]
    assert refused == [
        ("http:service", "correction_refused", "refused"),
        ("http:alice", "promote_refused", "refused"),
        ("http:alice", "ab_test_refused", "refused"),
        ("http:u1", "read_audit_refused", "refused"),
        ("http:service", "grant_role_refused", "refused"),
    ]
    assert await server.bot.store.corrections() == [] and await server.bot.store.granted_roles() == []
    assert Registry(server.bot.settings.data_dir).state().candidate is None


async def test_admin_api_promotes_rolls_back_and_ab_tests_through_the_registry(server: RunningServer) -> None:
    registry = Registry(server.bot.settings.data_dir)
    version, scratch = registry.start_version()
    shutil.copytree(registry.path("v0001") / "onnx", scratch / "onnx")
    registry.register(version, scratch, {"parent": "v0001", "base_model": "copy of v0001"})
    root = auth("root")

    for body, status, error in [
        ({"version": "v0042"}, 404, "no registered model version 'v0042'"),
        ({"version": "../models/v0001"}, 404, "no registered model version"),
        ({"version": 2}, 422, "version: Input should be a valid string"),
        ({}, 422, "version: Field required"),
    ]:
        got, reply = await call(server, "POST", "/admin/promote", body, root)
        assert (got, error in reply["error"]) == (status, True), reply
    got, reply = await call(server, "POST", "/admin/rollback", None, root)
    assert got == 422 and "nothing to roll back" in reply["error"]
    for body, error in [({"version": version, "share": 1.5}, "between 0 and 1"), ({"version": version}, "share")]:
        got, reply = await call(server, "POST", "/admin/ab", body, root)
        assert got == 422 and error in reply["error"], reply
    assert registry.state().current == "v0001" and registry.state().candidate is None
    assert await server.bot.store.audit_events() == []  # nothing written by bad input

    got, state = await call(server, "POST", "/admin/ab", {"version": version, "share": 0.25}, root)
    assert got == 200 and (state["candidate"], state["ab_share"]) == (version, 0.25)
    got, state = await call(server, "POST", "/admin/promote", {"version": version}, root)
    assert got == 200 and state == {"current": version, "candidate": None, "ab_share": 0.0, "history": ["v0001"]}
    for _ in range(100):  # the running bot follows the registry
        if server.bot.models.version_of("current") == version:
            break
        await asyncio.sleep(0.1)
    assert server.bot.models.version_of("current") == version
    got, state = await call(server, "POST", "/admin/rollback", None, root)
    assert got == 200 and state["current"] == "v0001" and registry.state().current == "v0001"

    got, audit = await get(server, "/admin/audit?actor=http:root&limit=2", who="root")  # not the bot's hot swaps
    assert got == 200 and [e["action"] for e in audit["events"]] == ["promote", "rollback"]
    assert {e["actor"] for e in audit["events"]} == {"http:root"}
    assert audit["events"][1]["detail"] == {"version": "v0001", "previous": version}
    for query in ("limit=0", "limit=abc", "limit=100000"):
        got, reply = await get(server, f"/admin/audit?{query}", who="root")
        assert got == 422 and "limit" in reply["error"]
    got, audit = await get(server, "/admin/audit?action=ab_test", who="root")
    assert [(e["target"], e["detail"]["share"]) for e in audit["events"]] == [(f"model:{version}", 0.25)]


async def test_roles_granted_at_run_time_are_stored_audited_and_revocable(server: RunningServer) -> None:
    _, chat = await post(server, "/chat", CHAT, who="u1")
    fix = {"turn_id": chat["turn_id"], "correction": "更好的答案"}
    assert (await post(server, "/feedback", fix, who="u1"))[0] == 403
    for body, error in [
        ({"subject": "u1", "role": "agent"}, "subject: expected"),
        ({"subject": "http:u1", "role": "owner"}, "role: must be one of customer, agent, admin"),
        ({"subject": "http:service", "role": "agent"}, "service token"),
    ]:
        status, reply = await post(server, "/admin/roles", body, who="root")
        assert status == 422 and error in reply["error"], reply
    assert await server.bot.store.granted_roles() == []

    status, reply = await post(server, "/admin/roles", {"subject": "http:u1", "role": "agent"}, who="root")
    assert status == 200 and reply == {"subject": "http:u1", "role": "agent"}
    assert (await post(server, "/feedback", fix, who="u1"))[0] == 200  # an agent now, at once
    assert (await post(server, "/admin/roles", {"subject": "telegram:77", "role": "admin"}, who="root"))[0] == 200
    assert await server.bot.feedback.role("telegram:77") is Role.ADMIN
    status, listing = await get(server, "/admin/roles", who="root")
    rows = {(r["subject"], r["source"]): r for r in listing["roles"]}
    assert (
        rows[("http:u1", "granted")]["granted_by"] == "http:root"
        and rows[("http:u1", "granted")]["effective"] == "agent"
    )
    assert (
        rows[("http:alice", "BOT_API_KEYS")]["role"] == "agent"
        and rows[("http:root", "BOT_API_KEYS")]["role"] == "admin"
    )
    assert all("sha256" not in json.dumps(r) and TOKENS["root"] not in json.dumps(r) for r in listing["roles"])

    status, reply = await post(server, "/admin/roles", {"subject": "http:u1", "role": "customer"}, who="root")
    assert status == 200 and reply["role"] == "customer"
    assert (await post(server, "/feedback", fix, who="u1"))[0] == 403
    # A configured role stays: revoking takes back only what was granted.
    status, reply = await post(server, "/admin/roles", {"subject": "http:alice", "role": "customer"}, who="root")
    assert reply["role"] == "agent"
    events = await server.bot.store.audit_events(actor="http:root")
    assert [(e["action"], e["target"]) for e in events] == [
        ("role_granted", "http:u1"),
        ("role_granted", "telegram:77"),
        ("role_revoked", "http:u1"),
        ("role_revoked", "http:alice"),
    ]


async def test_roles_in_one_place(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "bot.sqlite3")
    try:
        settings = make_settings(tmp_path, agent_ids="telegram:1", admin_ids="slack:UADMIN")
        feedback = Feedback.from_settings(store, settings)
        assert await feedback.role("telegram:1") is Role.AGENT and await feedback.role("slack:UADMIN") is Role.ADMIN
        assert await feedback.role("http:alice") is Role.AGENT and await feedback.role("http:root") is Role.ADMIN
        assert await feedback.role("http:u1") is Role.CUSTOMER
        # The agents' room makes nobody an agent unless BOT_TRUST_AGENT_ROOM says so.
        assert await feedback.role("telegram:77", in_agent_chat=True) is Role.CUSTOMER
        trusting = Feedback.from_settings(store, make_settings(tmp_path, trust_agent_room=True))
        assert await trusting.role("telegram:77", in_agent_chat=True) is Role.AGENT
        assert await trusting.role("telegram:77") is Role.CUSTOMER
        # The service token speaks for customers, whatever the lists say.
        listed = Feedback.from_settings(store, make_settings(tmp_path, agent_ids="http:service"))
        assert await listed.role("http:service") is Role.CUSTOMER
        # Admins can do everything agents can; a refused correction is audited.
        turn_id = await store.add_turn(
            channel="slack",
            conversation_id="c",
            session=1,
            user_id="u",
            message_id="m",
            user_text="q",
            answer="a",
            model_version="v0001",
            latency_ms=1.0,
        )
        await feedback.correct(turn_id, "slack:UADMIN", "fixed")
        assert await feedback.rate(turn_id, "slack:UADMIN", 1) is Role.AGENT
        with pytest.raises(PermissionError):
            await feedback.correct(turn_id, "telegram:77", "no", in_agent_chat=True)
        assert actions(await store.audit_events()) == ["correction", "rating", "correction_refused"]
    finally:
        await store.close()


async def test_without_a_token_the_api_is_open_on_loopback_only(
    data_dir: Path, served: list[RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    open_settings = make_settings(data_dir, api_token="", api_keys="")
    with pytest.raises(ConfigError, match=r"^config error: BOT_HTTP_HOST: 0\.0\.0\.0 is not a loopback address"):
        await start(open_settings.model_copy(update={"http_host": "0.0.0.0"}), {})
    caplog.set_level(logging.INFO)
    server = await serve(served, open_settings)
    assert sum("no BOT_API_TOKEN or BOT_API_KEYS" in r.getMessage() for r in caplog.records) == 1
    status, reply = await post(server, "/chat", CHAT, who=None)
    assert status == 200 and reply["answer"] == ORDER_A
    assert (await post(server, "/chat", CHAT, who="alice"))[0] == 401  # no token is known
    assert (await get(server, "/admin/roles", who=None))[0] == 403  # the open caller is a customer
    status, reply = await post(server, "/feedback", {"turn_id": reply["turn_id"], "correction": "x"}, who=None)
    assert status == 403


def test_bad_token_settings_stop_start_up_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    for name in [n for n in os.environ if n.startswith("BOT_") or n in ("AGENT_IDS", "ADMIN_IDS")]:
        monkeypatch.delenv(name)
    digest = "ab" * 32
    for env, message in [
        ({"BOT_API_KEYS": "bob:agent"}, "BOT_API_KEYS: Value error, expected comma-separated name:role:sha256hex"),
        ({"BOT_API_KEYS": f"bob:owner:{digest}"}, "BOT_API_KEYS: Value error, bob: role must be one of"),
        ({"BOT_API_KEYS": "bob:agent:abc123"}, "BOT_API_KEYS: Value error, bob: the third part must be"),
        ({"BOT_API_KEYS": f"service:admin:{digest}"}, "BOT_API_KEYS: Value error, 'service'"),
        ({"BOT_API_KEYS": f"bob:agent:{digest},bob:admin:{digest}"}, "bob: listed twice"),
        ({"BOT_API_TOKEN": "short"}, "BOT_API_TOKEN: Value error, must be at least 16 characters"),
        ({"BOT_HTTP_HOST": "0.0.0.0"}, "BOT_HTTP_HOST: 0.0.0.0 is not a loopback address; set BOT_API_TOKEN"),
    ]:
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            with pytest.raises(ConfigError) as raised:
                load(BotSettings)
            assert str(raised.value).startswith("config error: ") and message in str(raised.value), raised.value
    monkeypatch.setenv("BOT_HTTP_HOST", "0.0.0.0")
    monkeypatch.setenv("BOT_API_KEYS", f"bob:admin:{digest}")
    assert load(BotSettings).http_host == "0.0.0.0"  # with a token, any address


def test_the_cli_records_the_os_user_as_actor(data_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")} | {"BOT_DATA_DIR": str(data_dir)}
    result = subprocess.run(
        [sys.executable, "-m", "tuning", "promote", "v0001"], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr

    async def audit() -> list[dict[str, Any]]:
        store = await Store.open(data_dir / "bot.sqlite3")
        try:
            return await store.audit_events()
        finally:
            await store.close()

    [event] = asyncio.run(audit())
    assert (event["actor"], event["action"], event["target"]) == (f"cli:{getpass.getuser()}", "promote", "model:v0001")
