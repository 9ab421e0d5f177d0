"""`tuning dataset --exclude-rater ID`: exactly the rows that exist only because of that rater go, and the
data card counts rows per rater."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from bot.store import Store
from tests.test_tuning import tuning_cli
from tuning import dataset

A, B, CUSTOMER = "telegram:42", "http:bob", "telegram:7"


async def rated_store(path: Path) -> None:
    """Six answers, one conversation each: three only A made rows of, one only B, two both."""
    store = await Store.open(path)
    try:
        turns = {}
        for n in range(1, 7):
            turns[n] = await store.add_turn(
                channel="telegram",
                conversation_id=f"c{n}",
                session=1,
                user_id="u1",
                message_id=f"m{n}",
                user_text=f"question {n}",
                answer=f"answer {n}",
                model_version="v0001",
                latency_ms=1.0,
            )
        await store.set_rating(turns[1], A, "agent", 1)
        await store.add_correction(turns[2], A, "fixed 2")
        await store.set_rating(turns[3], A, "agent", -1)  # a negative
        await store.set_rating(turns[4], B, "agent", 1)
        await store.set_rating(turns[4], CUSTOMER, "customer", 1)
        await store.set_rating(turns[5], A, "agent", 1)
        await store.set_rating(turns[5], B, "agent", 1)
        await store.add_correction(turns[6], B, "fixed 6")
        await store.set_rating(turns[6], A, "agent", -1)
    finally:
        await store.close()


async def build(store: Path, excluded: frozenset[str] = frozenset()) -> tuple[dict[str, Any], dict[str, Any]]:
    return await asyncio.to_thread(dataset.build, store, [], include_sample=False, exclude_raters=excluded)


def chat_rows(splits: dict[str, list[dict]]) -> dict[str, dict]:
    return {r["messages"][-2]["content"]: r for rows in splits.values() for r in rows if r["source"] == "chats"}


def without_raters(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "raters"}


async def test_excluding_a_rater_drops_exactly_the_rows_only_they_made(tmp_path: Path) -> None:
    store = tmp_path / "bot.sqlite3"
    await rated_store(store)
    splits, card = await build(store)
    rows = chat_rows(splits)
    assert {q: r["raters"] for q, r in rows.items()} == {
        "question 1": [A],
        "question 2": [A],
        "question 3": [A],
        "question 4": [B],
        "question 5": [B, A],
        "question 6": [B, A],
    }
    assert card["rows_per_rater"] == {A: 5, B: 3} and card["excluded_raters"] == []
    assert card["chat_labels"]["customer_up"] == 1

    kept_splits, kept_card = await build(store, frozenset({A}))
    kept = chat_rows(kept_splits)
    assert set(rows) - set(kept) == {"question 1", "question 2", "question 3"} and set(kept) <= set(rows)
    # The rows B also made stay, less A's part in them.
    assert kept["question 4"] == rows["question 4"]
    for question, rating in (("question 5", 1), ("question 6", None)):
        assert without_raters(kept[question]) == without_raters(rows[question]) | {"rating": rating}
    assert all(r["raters"] == [B] for r in kept.values())
    assert kept_card["rows_per_rater"] == {B: 3} and kept_card["excluded_raters"] == [A]

    excluded_customer, card = await build(store, frozenset({CUSTOMER}))
    assert chat_rows(excluded_customer) == rows and "customer_up" not in card["chat_labels"]


async def test_the_command_takes_repeated_and_comma_separated_raters(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    await rated_store(data_dir / "bot.sqlite3")
    out = tmp_path / "ds"
    result = tuning_cli(
        data_dir, "dataset", "--out", str(out), "--no-sample", "--exclude-rater", f"{A},nobody", "--exclude-rater", B
    )
    assert result.returncode == 0, result.stderr
    card = json.loads((out / "card.json").read_text())
    assert card["excluded_raters"] == sorted([A, B, "nobody"]) and card["rows_per_rater"] == {}
    assert card["rows"] == {"train": 0, "eval": 0, "negatives": 0}
    store = await Store.open(data_dir / "bot.sqlite3")
    try:
        [export] = await store.audit_events(action="data_export")
    finally:
        await store.close()
    assert json.loads(export["detail"])["excluded_raters"] == card["excluded_raters"]
