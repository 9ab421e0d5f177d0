"""The shipped sample data (data/make_sample.py): the full sample is the size of the origin document's
claim (3,000 examples), varied, and split with enough held-out rows; the tests' subset is part of it."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bot.cache import normalise_question
from bot.models.chat import Chat
from tests.support import ROOT
from tuning import formats, split
from tuning.config import TuneConfig

ORIGIN_PAIRS = {
    ("我的订单什么时候到?", "您可通过订单号在'我的订单'页面查询物流信息"),
    ("如何退换货?", "7天内可无理由退货,请在APP提交申请并寄回商品"),
}
PINNED = ["我的订单什么时候到?", "如何退换货?", "What payment methods do you accept?", "How do I reset my password?"]


def chats_of(sample: str, monkeypatch: pytest.MonkeyPatch) -> list[Chat]:
    monkeypatch.setenv(formats.SAMPLE_ENV, sample)
    return [chat for path in formats.shipped_files() for chat in formats.read_chats(path)]


def langs_and_turns(folder: Path) -> Counter:
    """(lang, "single" | "multi") per chat of the sample in `folder`."""
    counts: Counter = Counter()
    for path in sorted(folder.iterdir()):
        if path.suffix == ".csv":
            counts.update((row["lang"], "single") for row in csv.DictReader(path.open(encoding="utf-8")))
        elif path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            counts.update((row["lang"], "multi" if len(row["messages"]) > 2 else "single") for row in rows)
    return counts


def test_the_generator_writes_the_shipped_files_byte_for_byte() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "data" / "make_sample.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_the_full_sample_is_over_3000_varied_chats_in_both_languages(monkeypatch: pytest.MonkeyPatch) -> None:
    chats = chats_of("full", monkeypatch)
    counts = langs_and_turns(formats.SAMPLES["full"])
    assert len(chats) == sum(counts.values()) >= 3000
    for lang in ("zh", "en"):
        assert counts[lang, "single"] >= 1000 and counts[lang, "multi"] >= 300
    # Not one question with its numbers changed: the questions differ with their digits taken out too.
    asked = {re.sub(r"\d+", "#", normalise_question(m["content"])) for c in chats for m in c if m["role"] == "user"}
    assert len(asked) >= 3000
    intents = {row["intent"] for row in csv.DictReader((formats.SHIPPED_DATA / "faq.csv").open(encoding="utf-8"))}
    assert len(intents) >= 60
    pairs = {(c[0]["content"], c[1]["content"]) for c in chats if len(c) == 2}
    assert ORIGIN_PAIRS <= pairs


def test_the_subset_is_part_of_the_full_sample_and_what_the_tests_use(monkeypatch: pytest.MonkeyPatch) -> None:
    assert formats.shipped_files()[0].parent == formats.SAMPLES["small"]  # tests/conftest.py chose it
    small, full = chats_of("small", monkeypatch), chats_of("full", monkeypatch)
    assert 300 <= len(small) <= 500
    as_json = {json.dumps(c, ensure_ascii=False) for c in full}
    assert all(json.dumps(c, ensure_ascii=False) in as_json for c in small)
    assert ORIGIN_PAIRS <= {(c[0]["content"], c[1]["content"]) for c in small if len(c) == 2}
    monkeypatch.setenv(formats.SAMPLE_ENV, "medium")
    with pytest.raises(formats.DataError, match="TUNING_SAMPLE='medium': use full or small"):
        formats.shipped_files()


def test_the_full_sample_splits_with_enough_held_out_rows_and_the_pinned_questions_train(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chats = chats_of("full", monkeypatch)
    sides = split.sides(chats)
    counts = Counter(sides)
    assert min(counts[split.UNSEEN_PHRASINGS], counts[split.UNSEEN_QUESTIONS]) >= TuneConfig().min_eval_rows
    trained = set().union(*(split.asked(c) for c, side in zip(chats, sides, strict=True) if side == split.TRAIN))
    assert {normalise_question(q) for q in PINNED} <= trained
    assert not {split.question(c) for c, side in zip(chats, sides, strict=True) if side != split.TRAIN} & trained
