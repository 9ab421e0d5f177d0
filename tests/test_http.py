"""End to end through the HTTP API: real server on 127.0.0.1, real starter model, real SQLite."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.server import RunningServer
from tests.support import ORDER_A, ORDER_Q, post


async def test_chat_answers_from_the_starter_model_and_caches(server: RunningServer) -> None:
    status, first = await post(server, "/chat", {"conversation_id": "c1", "user_id": "u1", "text": ORDER_Q})
    assert status == 200 and first["answer"] == ORDER_A and not first["cached"] and first["model_version"] == "v0001"
    # Another conversation, full-width question mark: the same normalised question, served from the cache.
    status, second = await post(
        server, "/chat", {"conversation_id": "c2", "user_id": "u2", "text": "我的订单什么时候到？"}
    )
    assert second["answer"] == ORDER_A and second["cached"] and second["turn_id"] != first["turn_id"]
    assert server.bot.cache.hits == 1


async def test_feedback_rates_and_corrects(server: RunningServer) -> None:
    # u1 chats and rates with a personal (customer) token; the rater is always the token's owner.
    _, chat = await post(server, "/chat", {"conversation_id": "c1", "user_id": "u1", "text": "如何退换货?"}, who="u1")
    status, body = await post(
        server,
        "/feedback",
        {"turn_id": chat["turn_id"], "rating": -1, "correction": "7天内可无理由退货"},
        who="alice",
    )
    assert status == 200 and body == {"turn_id": chat["turn_id"], "correction": "stored", "role": "agent"}
    status, body = await post(server, "/feedback", {"turn_id": chat["turn_id"], "rating": 1}, who="u1")
    assert body["role"] == "customer"
    ratings = {r["rater"]: (r["role"], r["rating"]) for r in await server.bot.store.ratings(chat["turn_id"])}
    assert ratings == {"http:alice": ("agent", -1), "http:u1": ("customer", 1)}
    assert [c["text"] for c in await server.bot.store.corrections()] == ["7天内可无理由退货"]


@pytest.mark.parametrize(
    "body, status, error",
    [
        ("{not json", 400, "not valid JSON"),
        ([1, 2], 422, "body"),
        ({"conversation_id": "c", "user_id": "u"}, 422, "text: Field required"),
        ({"conversation_id": 5, "user_id": "u", "text": "hi"}, 422, "conversation_id: Input should be a valid string"),
        ({"conversation_id": "c", "user_id": "u", "text": "   \n"}, 400, "text is empty"),
        ({"conversation_id": "c", "user_id": "u", "text": "x" * 1_000_000}, 413, "longer than"),
        ({"conversation_id": "c", "user_id": "u", "text": "hi", "extra": 1}, 422, "extra"),
    ],
)
async def test_bad_chat_requests_get_clear_errors_and_write_nothing(
    server: RunningServer, body: Any, status: int, error: str
) -> None:
    got, reply = await post(server, "/chat", body)
    assert got == status and error in reply["error"]
    assert await server.bot.store.turns() == []


@pytest.mark.parametrize(
    "body, who, status, error",
    [
        ({"turn_id": 999, "rating": 1}, "alice", 404, "no answer with turn_id 999"),
        ({"turn_id": 1, "rating": 0}, "alice", 422, "rating"),
        ({"turn_id": 1, "rating": "up"}, "alice", 422, "rating"),
        ({"turn_id": "1", "rating": 1}, "alice", 422, "turn_id"),
        ({"turn_id": 1, "rating": 1, "correction": "anything"}, "service", 403, "not an agent"),
    ],
)
async def test_bad_feedback_gets_clear_errors_and_writes_nothing(
    server: RunningServer, body: Any, who: str, status: int, error: str
) -> None:
    await post(server, "/chat", {"conversation_id": "c1", "user_id": "u1", "text": ORDER_Q})
    got, reply = await post(server, "/feedback", body, who=who)
    assert got == status and error in reply["error"]
    assert await server.bot.store.ratings() == [] and await server.bot.store.corrections() == []


async def test_control_characters_are_dropped_not_fatal(server: RunningServer) -> None:
    status, reply = await post(
        server, "/chat", {"conversation_id": "c", "user_id": "u", "text": "我的订单\x00\x07什么时候到?"}
    )
    assert status == 200 and reply["answer"] == ORDER_A


async def test_health_and_metrics(server: RunningServer) -> None:
    _, chat = await post(server, "/chat", {"conversation_id": "c1", "user_id": "u1", "text": ORDER_Q})
    await post(server, "/feedback", {"turn_id": chat["turn_id"], "rating": 1}, who="alice")
    await post(server, "/chat", {"conversation_id": "c2", "user_id": "u1", "text": "我的手机13812345678,可以刷单吗"})
    await post(server, "/chat", {"conversation_id": "c3", "user_id": "u1", "text": "转人工"})
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{server.port}/healthz") as resp:
            health = await resp.json()
        async with http.get(f"http://127.0.0.1:{server.port}/metrics") as resp:
            metrics = await resp.text()
    assert health["status"] == "ok" and health["model_version"] == "v0001"
    assert 'bot_messages_total{channel="http",outcome="answered"}' in metrics
    # Prometheus can read it, and it counts what operators watch (values are per process, so at least).
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("bot_masked_total", kind="phone") >= 1
    assert value("bot_filtered_total", direction="input", category="fraud", action="blocked") >= 1
    assert value("bot_ratings_total", role="agent", rating="1", model_version="v0001", variant="current") >= 1
    assert value("bot_handoffs_total", channel="http", reason="asked") >= 1
    assert value("bot_messages_total", channel="http", outcome="handed_off") >= 1
    assert ("bot_model_queue", ()) in samples
