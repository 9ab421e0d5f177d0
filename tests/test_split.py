"""The one train/eval split (tuning/split.py): what it holds out, that it is kept per data version, that
nothing a version trained on is ever scored, and that eval sets that would break this are refused."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from bot.cache import normalise_question
from bot.models.registry import Registry
from tests.support import ORDER_A, ORDER_Q
from tests.test_tuning import tuning_cli
from tuning import dataset, formats, split

SAMPLE = [chat for path in formats.shipped_files() for chat in formats.read_chats(path)]
# Questions whose word-for-word answers other tests rely on: they must train.
PINNED = [ORDER_Q, "如何退换货?", "What payment methods do you accept?", "How do I reset my password?", "在吗?"]


def eval_questions(registry: Registry, version: str) -> set[str]:
    kept = registry.manifest(version)["eval_set"]["file"]
    return {split.question(r["messages"]) for r in split.load(registry.root, kept).rows}


def test_the_split_holds_out_whole_groups_and_some_phrasings_and_never_a_trained_question() -> None:
    sides = split.sides(SAMPLE)
    assert sides == split.sides(SAMPLE)  # hashes decide, nothing random
    by_group: dict[str, Counter] = {}
    for chat, side in zip(SAMPLE, sides, strict=True):
        by_group.setdefault(chat[-1]["content"], Counter())[side] += 1
    counts = Counter(sides)
    assert counts[split.UNSEEN_QUESTIONS] >= 30 and counts[split.UNSEEN_PHRASINGS] >= 30
    # an unseen-phrasing group also trains; an unseen-question group trains only rows a training chat asks too
    assert all(c[split.TRAIN] for c in by_group.values() if c[split.UNSEEN_PHRASINGS])
    assert all(c[split.UNSEEN_QUESTIONS] > c[split.TRAIN] for c in by_group.values() if c[split.UNSEEN_QUESTIONS])
    trained = set().union(*(split.asked(c) for c, side in zip(SAMPLE, sides, strict=True) if side == split.TRAIN))
    assert not {split.question(c) for c, side in zip(SAMPLE, sides, strict=True) if side != split.TRAIN} & trained
    assert {normalise_question(q) for q in PINNED} <= trained


def test_a_held_out_question_that_a_training_chat_asks_trains_instead() -> None:
    held = next(c for c, side in zip(SAMPLE, split.sides(SAMPLE), strict=True) if side == split.UNSEEN_PHRASINGS)
    # first of the origin question's group, so it trains; it asks the held-out question too (in another case)
    dialogue = [
        {"role": "user", "content": f" {held[-2]['content'].upper()} "},
        {"role": "assistant", "content": "x"},
        {"role": "user", "content": ORDER_Q},
        {"role": "assistant", "content": ORDER_A},
    ]
    sides = split.sides([dialogue, *SAMPLE])
    assert sides[0] == sides[1 + SAMPLE.index(held)] == split.TRAIN


def test_the_eval_set_is_kept_per_data_version_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = split.eval_set(SAMPLE, tmp_path)
    assert first.file == f"eval/{split.data_version(SAMPLE)}.jsonl" and (tmp_path / first.file).exists()
    monkeypatch.setattr(split, "UNSEEN_PHRASING_PERCENT", 90)  # a changed rule does not change a kept set
    assert split.eval_set(SAMPLE, tmp_path) == first
    assert split.eval_set(SAMPLE[:-1], tmp_path).file != first.file  # other data: another version, another set
    splits, card = dataset.build(None, [], registry_root=tmp_path)
    assert card["eval_set"] == first.record() and len(splits["eval"]) == len(first.rows)
    assert all(first.allows(r["messages"]) for r in splits["train"])


def test_no_eval_question_is_in_anything_the_starter_trained_on(data_dir: Path) -> None:
    registry = Registry(data_dir)
    manifest = registry.manifest("v0001")
    assert manifest["builds"] == ["fp32"]  # the starter is small: no INT4, no twin
    [(name, digest)] = manifest["data_hashes"].items()
    trained = (registry.path("v0001") / name).read_text(encoding="utf-8")
    assert hashlib.sha256(trained.encode()).hexdigest() == digest
    questions = eval_questions(registry, "v0001")
    assert len(questions) == sum(manifest["eval_set"]["rows"].values()) >= 60
    assert not questions & split.trained_questions(registry, "v0001")
    assert split.trained_questions(registry, "v0001") >= {split.question([{"role": "user", "content": ORDER_Q}])}


@pytest.mark.parametrize(
    "rows, code, message",
    [
        ([(ORDER_Q, ORDER_A), ("Where is my parcel now?", "x")], 2, "1 of the 2 eval rows ask a question"),
        ([], 3, "0 eval rows: the gate needs at least 30"),
        ([("Where is my parcel now?", "x")], 3, "1 eval rows: the gate needs at least 30"),
    ],
)
def test_an_eval_file_that_overlaps_training_or_is_too_small_is_refused(
    data_dir: Path, tmp_path: Path, rows: list[tuple[str, str]], code: int, message: str
) -> None:
    path = tmp_path / "eval.csv"
    path.write_text("instruction,response\n" + "".join(f"{q},{a}\n" for q, a in rows), encoding="utf-8")
    result = tuning_cli(data_dir, "run", "--force", "--eval", str(path))
    assert result.returncode == code and message in result.stderr, result.stderr
    assert Registry(data_dir).versions() == ["v0001"]


def test_eval_reports_both_views_and_refuses_a_file_the_version_trained_on(data_dir: Path, tmp_path: Path) -> None:
    result = tuning_cli(data_dir, "eval", "--out", str(tmp_path / "m.json"))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    kept = Registry(data_dir).manifest("v0001")["eval_set"]["rows"]
    assert {name: view["examples"] for name, view in metrics["views"].items()} == kept
    assert metrics["examples"] == sum(kept.values())
    trained = tmp_path / "trained.csv"
    trained.write_text(f"instruction,response\n{ORDER_Q},{ORDER_A}\n", encoding="utf-8")
    refused = tuning_cli(data_dir, "eval", "--data", str(trained))
    assert refused.returncode == 2 and "1 of the 1 eval rows ask a question v0001 trained on" in refused.stderr
