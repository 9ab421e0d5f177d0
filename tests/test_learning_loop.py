"""What agents taught, held out and scored (the "taught" eval view); the preset chosen from the base's
line; and replay: every data file a line trained on is trained on again, or the run stops saying why."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest

from bot.cache import normalise_question
from bot.models.registry import MANIFEST, Registry
from bot.store import Store, store_location
from tests.test_tuning import tuning_cli
from tuning import dataset, split
from tuning.config import preset
from tuning.formats import DataError
from tuning.gate import replay
from tuning.monthly import DATASET_DIR, choose_preset

MONTH = 40  # a month's corrections: about a fifth of them are held out


def question(n: int) -> str:
    return f"订单{n}号的发票怎么开?"


def corrected(n: int) -> str:
    return f"订单{n}号的发票可在'我的订单'页面申请,电子发票三天内发到邮箱"


async def a_months_corrections(location: Path | str, count: int = MONTH) -> None:
    """`count` answers an agent corrected, one conversation each; one more conversation whose second
    answer an agent approved; and an answer an agent answered twice over, in two conversations."""
    store = await Store.open(location)
    try:

        async def turn(conversation: str, text: str, number: int) -> int:
            return await store.add_turn(
                channel="telegram",
                conversation_id=conversation,
                session=1,
                user_id="u1",
                message_id=f"{conversation}-{number}",
                user_text=text,
                answer="请联系人工客服",
                model_version="v0001",
                latency_ms=1.0,
            )

        for n in range(count):
            await store.add_correction(await turn(f"c{n}", question(n), 1), "telegram:42", corrected(n))
        for conversation in ("twice-a", "twice-b"):  # the same question in two conversations
            await store.add_correction(await turn(conversation, question(count), 1), "telegram:42", corrected(count))
        # Two turns of one conversation: the first one's question is in the second one's row as context.
        first = await turn("two-turns", first_turn_held_out(), 1)
        await store.add_correction(first, "telegram:42", "好的")
        await store.set_rating(await turn("two-turns", "那要等多久?", 2), "telegram:42", "agent", 1)
    finally:
        await store.close()


def first_turn_held_out() -> str:
    """A question whose hash holds it out (split.TAUGHT_PERCENT) when it is asked alone."""
    return next(
        q
        for q in (f"我的包裹{n}在哪里?" for n in range(200))
        if split.taught([[{"role": "user", "content": q}, {"role": "assistant", "content": "x"}]], [])
    )


def questions_of(rows: list[dict[str, Any]]) -> set[str]:
    return set().union(*(split.asked(r["messages"]) for r in rows))


def test_a_share_of_what_agents_taught_is_held_out_by_question_and_never_trained(tmp_path: Path) -> None:
    store = tmp_path / "bot.sqlite3"
    asyncio.run(a_months_corrections(store))
    splits, card = dataset.build(store, [], registry_root=tmp_path / "models")
    taught = [r for r in splits["eval"] if r["view"] == split.TAUGHT]
    rated = [r for r in splits["train"] if r["source"] == "chats"]
    assert 5 <= len(taught) <= 20  # about TAUGHT_PERCENT of 43 questions, as their hashes fall
    assert card["taught_rows"] == card["eval_views"][split.TAUGHT] == len(taught)
    assert len(taught) + len(rated) == MONTH + 3  # the two conversations asking the same question are one row
    assert all(r["label"] == "corrected" and r["raters"] == ["telegram:42"] for r in taught)
    # No held-out question is asked by anything that trains: not a file row, not a rated chat's earlier turn.
    assert not {split.question(r["messages"]) for r in taught} & questions_of(splits["train"])
    # The held-out first turn is asked again in the second turn's row, which trains: so it trains too.
    held_alone = normalise_question(first_turn_held_out())
    assert held_alone in questions_of(rated) and held_alone not in questions_of(taught)
    # The same again from the files `tuning dataset` writes: nothing held out is in train.jsonl.
    hashes = dataset.write(splits, card, tmp_path / "ds")
    written = dataset.load_split(tmp_path / "ds", "train")
    assert hashlib.sha256((tmp_path / "ds/train.jsonl").read_bytes()).hexdigest() == hashes["train.jsonl"]
    assert not {split.question(r["messages"]) for r in taught} & questions_of(written)
    assert dataset.build(store, [], registry_root=tmp_path / "models")[0] == splits  # the same every time


def test_the_preset_follows_the_line_the_base_belongs_to(tmp_path: Path) -> None:
    manifests = {
        "v0001": {"parent": None},  # the starter: tuned from nothing
        "v0002": {"tuned_from": "v0001"},
        "v0003": {"tuned_from": "Qwen/Qwen2-0.5B"},  # a first tune of a pretrained base
        "v0004": {"tuned_from": "v0003"},
    }
    for version, manifest in manifests.items():
        (tmp_path / "models" / version).mkdir(parents=True)
        (tmp_path / "models" / version / MANIFEST).write_text(json.dumps(manifest))
    registry = Registry(tmp_path)
    assert registry.line("v0004") == ["v0004", "v0003"] and registry.line(None) == []
    assert choose_preset(registry, None)[0] == "pretrained"
    assert choose_preset(registry, "v0001")[0] == choose_preset(registry, "v0002")[0] == "monthly"
    assert choose_preset(registry, "v0003")[0] == choose_preset(registry, "v0004")[0] == "pretrained-monthly"
    assert "Qwen/Qwen2-0.5B" in choose_preset(registry, "v0004")[1]
    gentle = preset("pretrained-monthly")
    assert gentle.lr <= 1e-4 and gentle.epochs <= 2 and gentle.method == "lora"
    # Steps follow the data's size and the epochs; given steps win.
    assert gentle.sized(100).steps == math.ceil(gentle.epochs * 100 / gentle.batch_size)
    assert preset("monthly", epochs=2, batch_size=4, grad_accum=2).sized(100).steps == 25
    assert preset("monthly", steps=7).sized(100).steps == 7


def test_replayed_files_are_checked_against_what_the_line_trained_on(tmp_path: Path) -> None:
    kept, gone, edited, new = (tmp_path / f"{name}.csv" for name in ("kept", "gone", "edited", "new"))
    for path in (kept, gone, edited, new):
        path.write_text("instruction,response\n问题,答案\n", encoding="utf-8")
    recorded = [dataset.file_record(p) for p in (kept, gone, edited)]
    gone.unlink()
    edited.write_text("instruction,response\n问题,另一个答案\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{gone} is missing: v0002 trained on it.*--forget-data {gone}$"):
        dataset.replayed(recorded, [], [], "v0002")
    with pytest.raises(DataError, match=f"{edited} changed since v0002 trained on it.*as --data"):
        dataset.replayed(recorded, [], [gone], "v0002")
    # Forgotten, or given again (taken as it is now): the line goes on.
    assert dataset.replayed(recorded, [edited, new], [gone], "v0002") == [kept, edited, new]


def test_a_months_corrections_are_partly_held_out_scored_gated_and_their_files_replayed(
    data_dir: Path, tmp_path: Path
) -> None:
    asyncio.run(a_months_corrections(store_location(data_dir)))
    extra = tmp_path / "extra.csv"
    extra.write_text("instruction,response\n礼品卡能退吗?,礼品卡售出后不退不换,余额长期有效\n", encoding="utf-8")
    quick = ["--epochs", "1", "--max-accuracy-drop", "1", "--max-bleu-drop", "1", "--min-taught-rows", "5"]
    result = tuning_cli(data_dir, "run", "--data", str(extra), *quick)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["version"] == "v0002" and report["promoted"], report["outcome"]
    assert report["preset"].startswith("monthly (v0001's line began from the starter")

    registry = Registry(data_dir)
    manifest = registry.manifest("v0002")
    taught = report["data"]["taught_rows"]
    assert taught >= 5 and manifest["data_card"]["taught_rows"] == taught == manifest["eval_set"]["taught"]
    # All three views scored, for both models; the gate judged the taught view apart.
    views = {"unseen_phrasings", "unseen_questions", split.TAUGHT}
    assert set(report["metrics"]["views"]) == views == set(report["production_metrics"]["views"])
    assert report["metrics"]["views"][split.TAUGHT]["examples"] == taught
    assert report["gate"]["taught"]["rows"] == taught and report["gate"]["taught"]["judged"]
    assert report["gate"]["rows"] == report["metrics"]["examples"] - taught
    assert replay(registry.path("v0002") / "gate.json") == manifest["gate"] == report["gate"]
    # Held out: no taught question in the file the version trained on (hashed in its manifest).
    folder = registry.path("v0002") / DATASET_DIR
    held = {split.question(r["messages"]) for r in dataset.load_split(folder, "eval") if r["view"] == split.TAUGHT}
    assert len(held) == taught and not held & split.trained_questions(registry, "v0002")
    assert not held & questions_of(dataset.load_split(folder, "train"))
    # The preset and the steps it came to; the --data file recorded to be replayed.
    examples = sum(
        manifest["config"]["chat_weight"] if r["source"] == "chats" else 1 for r in dataset.load_split(folder, "train")
    )
    assert manifest["config"]["preset"] == "monthly" and manifest["config"]["steps"] == math.ceil(examples / 16)
    assert manifest["replay"] == [dataset.file_record(extra)]

    evaluated = tuning_cli(data_dir, "eval", "--model", "v0002")
    assert evaluated.returncode == 0, evaluated.stderr
    assert {k: v["examples"] for k, v in json.loads(evaluated.stdout)["views"].items()} == {
        k: v["examples"] for k, v in report["metrics"]["views"].items()
    }

    # The next run of the line trains on extra.csv again without being told.
    again = tuning_cli(data_dir, "run", "--force", "--steps", "2", *quick[2:])
    assert again.returncode == 0, again.stderr
    assert str(extra) in json.loads(again.stdout)["data"]["files"]
    assert registry.manifest("v0003")["replay"] == manifest["replay"]
    # Changed or gone, it stops the run with one line saying which and what to do.
    extra.write_text("instruction,response\n礼品卡能退吗?,可以退\n", encoding="utf-8")
    changed = tuning_cli(data_dir, "run", "--force")
    assert changed.returncode == 2 and f"error: {extra} changed since v0003 trained on it" in changed.stderr
    extra.unlink()
    missing = tuning_cli(data_dir, "run", "--force")
    assert missing.returncode == 2 and f"error: {extra} is missing" in missing.stderr
    assert missing.stderr.strip().splitlines()[-1].startswith(f"error: {extra} is missing")
    assert registry.versions() == ["v0001", "v0002", "v0003"]
