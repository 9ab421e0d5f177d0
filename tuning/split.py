"""The one train/eval split. `tuning bootstrap`, `dataset`, `train`, `eval` and `run` all use it, so no
version is ever scored on a question it trained on.

A row's group is its answer, normalised: in the sample data one intent in one language, shared by all
of its paraphrased questions (a multi-turn chat whose last answer is its own is a group of one). The
eval set has two views:
- unseen questions: the groups whose answer hashes under UNSEEN_QUESTION_PERCENT are held out whole;
- unseen phrasings: in every other group the first row trains, and each further row is held out when
  its question hashes under UNSEEN_PHRASING_PERCENT (the model learnt the answer from other phrasings).
A held-out row whose question a training row also asks (in any user turn) trains instead, so no eval
question, normalised, appears in the training data.

A third view, "taught", holds out some of what agents taught (`taught`): of the rated chats that train
(agents' 👍, corrections, hand-off replies), those whose question hashes under TAUGHT_PERCENT, keyed by
the question, so chats asking the same question are all held out or all trained. The same rule applies:
a question a training row asks (in any user turn: a file row, or a later turn of the same
conversation) trains instead. It is not kept like the file rows' eval set: rated chats change monthly,
and each version keeps the taught rows it was scored on in its `dataset/eval.jsonl`.

The eval set of a data version (the hash of its file rows) is written once under the registry,
`models/eval/<hash>.jsonl`, and read back by every later bootstrap, dataset and run on that data:
every version and every gate is scored on the same rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.cache import normalise_question
from bot.models.chat import Chat
from bot.models.registry import Registry
from tuning.formats import DataError

TRAIN, UNSEEN_PHRASINGS, UNSEEN_QUESTIONS, TAUGHT = "train", "unseen_phrasings", "unseen_questions", "taught"
UNSEEN_QUESTION_PERCENT = 10  # of the answer groups
UNSEEN_PHRASING_PERCENT = 20  # of the further phrasings in each other group
# Of the questions agents answered, unless a training row asks it. The same hash as the phrasings': a
# question held out of the sample data is held out of the rated chats too.
TAUGHT_PERCENT = 20
EVAL_DIR = "eval"  # in the registry folder


def question(chat: Chat) -> str:
    """What an eval row asks: its last user turn, normalised."""
    return normalise_question(next(m["content"] for m in reversed(chat) if m["role"] == "user"))


def asked(chat: Chat) -> set[str]:
    """Every user turn of a chat, normalised."""
    return {normalise_question(m["content"]) for m in chat if m["role"] == "user"}


def _bucket(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % 100


def sides(chats: list[Chat]) -> list[str]:
    """Per chat, TRAIN or the eval view it is held out for (the rule: this module's docstring)."""
    seen_groups: set[str] = set()
    out = []
    for chat in chats:
        group = normalise_question(chat[-1]["content"])
        if _bucket(group) < UNSEEN_QUESTION_PERCENT:
            out.append(UNSEEN_QUESTIONS)
        elif group not in seen_groups or _bucket(question(chat)) >= UNSEEN_PHRASING_PERCENT:
            out.append(TRAIN)
        else:
            out.append(UNSEEN_PHRASINGS)
        seen_groups.add(group)
    while True:  # a row moved to training may ask another held-out question: repeat until none does
        trained = set().union(*(asked(c) for c, side in zip(chats, out, strict=True) if side == TRAIN))
        clashes = [
            i for i, (c, side) in enumerate(zip(chats, out, strict=True)) if side != TRAIN and question(c) in trained
        ]
        if not clashes:
            return out
        for i in clashes:
            out[i] = TRAIN


def taught(rated: list[Chat], trained: list[Chat]) -> set[str]:
    """The questions of the `rated` chats held out as the taught view (the rule: this module's docstring);
    `trained`: every other chat that trains."""
    others = set().union(*map(asked, trained))
    held = {q for q in map(question, rated) if _bucket(q) < TAUGHT_PERCENT} - others
    while True:  # a rated chat that trains may ask a held-out question in an earlier turn: that one trains too
        clashes = held & set().union(*(asked(c) for c in rated if question(c) not in held))
        if not clashes:
            return held
        held -= clashes


def data_version(chats: list[Chat]) -> str:
    return hashlib.sha256(json.dumps(chats, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class EvalSet:
    """The held-out rows of one data version, each `{"view", "messages"}`."""

    rows: list[dict[str, Any]]
    sha256: str  # of the JSONL it is kept as
    file: str | None  # where, relative to the registry folder (None: not kept)
    questions: set[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "questions", {question(r["messages"]) for r in self.rows})

    def allows(self, chat: Chat) -> bool:
        """Whether `chat` may train: it asks no eval question."""
        return not asked(chat) & self.questions

    def record(self) -> dict[str, Any]:
        """What a manifest keeps of it."""
        return {"file": self.file, "sha256": self.sha256, "rows": dict(Counter(r["view"] for r in self.rows))}


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def eval_set(chats: list[Chat], registry_root: Path | None) -> EvalSet:
    """The eval set of these file chats: the one kept under `registry_root` for their data version, made
    and written (atomically) on first use; with no registry, made and not kept."""
    rows = [{"view": side, "messages": c} for c, side in zip(chats, sides(chats), strict=True) if side != TRAIN]
    if registry_root is None:
        return EvalSet(rows, hashlib.sha256(_jsonl(rows).encode()).hexdigest(), None)
    file = f"{EVAL_DIR}/{data_version(chats)}.jsonl"
    path = registry_root / file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, scratch = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(_jsonl(rows))
        os.replace(scratch, path)
    return load(registry_root, file)


def load(registry_root: Path, file: str) -> EvalSet:
    text = (registry_root / file).read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return EvalSet(rows, hashlib.sha256(text.encode()).hexdigest(), file)


def by_view(rows: list[dict[str, Any]]) -> dict[str, list[Chat]]:
    views: dict[str, list[Chat]] = {}
    for r in rows:
        views.setdefault(r["view"], []).append(r["messages"])
    return views


def trained_questions(registry: Registry, version: str | None) -> set[str]:
    """Every question `version` and the versions it was tuned from trained on, from the training files
    their manifests record (`data_hashes`, relative to the version folder)."""
    questions: set[str] = set()
    for member in registry.line(version):
        for name in registry.manifest(member).get("data_hashes", {}):
            text = (registry.path(member) / name).read_text(encoding="utf-8")
            questions.update(*(asked(json.loads(line)["messages"]) for line in text.splitlines() if line.strip()))
    return questions


def require_unseen(chats: list[Chat], trained: set[str], what: str) -> None:
    """Refuse an eval set any of whose questions was trained on: its scores would say nothing."""
    overlap = sum(question(c) in trained for c in chats)
    if overlap:
        raise DataError(
            f"{overlap} of the {len(chats)} eval rows ask a question {what} trained on: "
            "refused (score on held-out rows only)"
        )
