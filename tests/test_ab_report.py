"""`tuning ab-report` on hand-made store rows: what counts (turns since the start, users not ratings,
agents apart from customers), the interval of the difference, and the decision."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bot.models.registry import STATE, Registry
from bot.store import Store
from tests.test_tuning import tuning_cli
from tuning.ab import KEEP_TESTING, PROMOTE, STOP, Rule, ab_report

START = datetime(2025, 3, 1, tzinfo=timezone.utc)
LATER = (START + timedelta(days=1)).isoformat()


class Rows:
    """Turns and ratings written to a real store, one conversation per turn."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.added = 0

    async def answer(self, variant: str, user: str, created_at: str = LATER, outcome: str = "answered") -> int:
        self.added += 1
        return await self.store.add_turn(
            channel="http",
            conversation_id=f"c{self.added}",
            session=1,
            user_id=user,
            message_id=f"m{self.added}",
            user_text="如何退换货?",
            answer="7天内可无理由退货",
            model_version={"current": "v0001", "candidate": "v0002"}.get(variant, variant),
            variant=variant,
            latency_ms=100.0,
            outcome=outcome,
            created_at=created_at,
        )

    async def rated(self, variant: str, user: str, rating: int, role: str = "agent", **turn: str) -> int:
        turn_id = await self.answer(variant, user, **turn)
        rater = "http:alice" if role == "agent" else f"http:{user}"
        await self.store.set_rating(turn_id, rater, role, rating)
        return turn_id

    async def report(self, min_users: int = Rule.min_users) -> dict:
        return ab_report(await self.store.turns(), await self.store.ratings(), START, Rule(min_users=min_users))


@pytest.fixture
async def rows(tmp_path: Path):
    store = await Store.open(tmp_path / "bot.sqlite3")
    yield Rows(store)
    await store.close()


async def test_users_not_ratings_since_the_start_agents_apart_from_customers(rows: Rows) -> None:
    before = (START - timedelta(hours=1)).isoformat()
    for _ in range(5):  # before the test started: ignored, however many
        await rows.rated("candidate", "old", -1, created_at=before)
    for _ in range(10):  # one user, ten 👍: one user, not ten ratings
        await rows.rated("candidate", "u1", 1)
    await rows.rated("candidate", "u2", -1)
    await rows.rated("current", "u3", 1)
    await rows.rated("current", "u3", -1, role="customer")
    await rows.rated("current", "u4", 1, role="customer")
    await rows.rated("agent", "u5", 1, outcome="agent")  # an agent's answer is no variant
    report = await rows.report()

    candidate, current = report["variants"]["candidate"], report["variants"]["current"]
    assert report["since"] == START.isoformat()
    assert candidate["model_versions"] == ["v0002"] and candidate["turns"] == 11
    assert candidate["agent"] == {"ratings": 11, "users": 2, "thumbs_up_share": 0.5}  # (1 + 0) / 2, not 10/11
    assert candidate["customer"] == {"ratings": 0, "users": 0, "thumbs_up_share": None}
    assert current["model_versions"] == ["v0001"] and current["turns"] == 3
    assert current["agent"] == {"ratings": 1, "users": 1, "thumbs_up_share": 1.0}
    assert current["customer"] == {"ratings": 2, "users": 2, "thumbs_up_share": 0.5}
    assert report["difference"]["agent"]["candidate_minus_current"] == -0.5
    assert report["difference"]["agent"]["users"] == {"current": 1, "candidate": 2}
    assert report["difference"]["customer"] == {
        "candidate_minus_current": None,
        "ci": None,
        "users": {"current": 2, "candidate": 0},
    }
    assert report["decision"]["outcome"] == KEEP_TESTING and "fewer than 30 users" in report["decision"]["reason"]


async def users(rows: Rows, variant: str, thumbs_up: int, thumbs_down: int, role: str = "agent") -> None:
    for n in range(thumbs_up + thumbs_down):
        await rows.rated(variant, f"{variant}-{role}-{n}", 1 if n < thumbs_up else -1, role=role)


async def test_the_interval_is_over_users_and_decides(rows: Rows) -> None:
    await users(rows, "candidate", 36, 4)  # 90% of users 👍
    await users(rows, "current", 20, 20)  # 50%
    await rows.rated("candidate", "candidate-agent-0", 1)  # more ratings by a user already counted
    report = await rows.report()
    agents = report["difference"]["agent"]
    assert agents["candidate_minus_current"] == pytest.approx(0.4) and agents["users"] == {
        "current": 40,
        "candidate": 40,
    }
    # Two independent shares of 40 users: standard error sqrt(.9 * .1 / 40 + .5 * .5 / 40) = 0.092, so about ±0.18.
    low, high = agents["ci"]
    assert low == pytest.approx(0.22, abs=0.04) and high == pytest.approx(0.58, abs=0.04)
    assert report["decision"]["outcome"] == PROMOTE and report["decision"]["min_users"] == 30
    assert "promote if agents' is above 0" in report["decision"]["rule"]
    assert (await rows.report())["difference"] == report["difference"]  # seeded: the same interval again

    assert (await rows.report(min_users=41))["decision"]["outcome"] == KEEP_TESTING

    await users(rows, "candidate", 3, 37, role="customer")  # customers clearly dislike the candidate
    await users(rows, "current", 30, 10, role="customer")
    decision = (await rows.report())["decision"]
    assert (decision["outcome"], decision["reason"]) == (STOP, "customers rate the candidate worse")


async def test_a_worse_candidate_is_stopped_and_a_close_one_kept_testing(rows: Rows) -> None:
    await users(rows, "candidate", 10, 30)
    await users(rows, "current", 30, 10)
    assert (await rows.report())["decision"]["outcome"] == STOP


async def test_a_close_result_keeps_testing(rows: Rows) -> None:
    await users(rows, "candidate", 21, 19)
    await users(rows, "current", 20, 20)
    report = await rows.report()
    low, high = report["difference"]["agent"]["ci"]
    assert low < 0 < high and report["decision"]["outcome"] == KEEP_TESTING


def test_the_registry_records_when_a_test_starts(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    for _ in range(2):
        version, scratch = registry.start_version()
        registry.register(version, scratch, {})
    assert registry.set_candidate("v0001", 0.0).ab_started_at is None  # kept as candidate, not tested
    started = registry.set_candidate("v0001", 0.1).ab_started_at
    assert started and registry.set_candidate("v0001", 0.5).ab_started_at == started  # a share change continues
    assert registry.set_candidate("v0002", 0.5).ab_started_at not in (None, started)  # another candidate: anew
    assert registry.set_candidate(None).ab_started_at is None
    registry.set_candidate("v0002", 0.5)
    assert registry.promote("v0002").ab_started_at is None
    # A state.json written before the field existed still loads.
    (registry.root / STATE).write_text(json.dumps({"current": "v0001", "candidate": None, "ab_share": 0.0}))
    assert registry.state().ab_started_at is None


async def test_the_command_counts_from_the_recorded_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    registry = Registry(data_dir)
    version, scratch = registry.start_version()
    registry.register(version, scratch, {})
    refused = tuning_cli(data_dir, "ab-report")
    assert refused.returncode == 2 and "give --since" in refused.stderr

    store = await Store.open(data_dir / "bot.sqlite3")
    try:
        rows = Rows(store)
        await rows.rated("current", "u1", 1, created_at=(datetime.now(timezone.utc) - timedelta(days=1)).isoformat())
        registry.set_candidate(version, 0.5)
        await rows.rated("current", "u2", -1, created_at=datetime.now(timezone.utc).isoformat())
    finally:
        await store.close()
    report = json.loads(tuning_cli(data_dir, "ab-report").stdout)
    assert report["since"] == registry.state().ab_started_at
    assert report["variants"]["current"]["agent"] == {"ratings": 1, "users": 1, "thumbs_up_share": 0.0}
    since = json.loads(tuning_cli(data_dir, "ab-report", "--since", "2000-01-01").stdout)
    assert since["variants"]["current"]["agent"]["ratings"] == 2
