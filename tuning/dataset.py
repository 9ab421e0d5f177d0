"""Dataset stage: rated chats from the store, mixed with the shipped sample data and extra files,
written as a Hugging Face DatasetDict and as chat JSONL, with a small data card.

- an agent's correction, an answer agents rated 👍 (net), or an agent's own answer during a hand-off
  becomes a training target; the conversation before it is context, and of its earlier answers only
  the approved ones are learnt too (the others are marked context only, `formats.CONTEXT_ONLY`);
- an answer agents rated 👎 without a correction is kept out of training, as a labelled negative;
- customers' reactions are counted in the card but never become targets;
- personal data is masked again; duplicates are dropped (rated chats win over file rows);
- rated chats always train (they are what the monthly tune is for); the other rows are split into
  train/eval by a hash of the normalised question, so paraphrases of one template stay together.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from bot.cache import normalise_question
from bot.privacy import mask_personal_data
from bot.store import Store
from tuning import formats

COLUMNS = (
    "messages",
    "label",
    "rating",
    "correction",
    "chosen",
    "rejected",
    "source",
    "channel",
    "conversation_id",
    "model_version",
)
EVAL_PERCENT = 10


def _row(messages: list[dict[str, str]], source: str, **fields: Any) -> dict[str, Any]:
    row = dict.fromkeys(COLUMNS)
    row.update({"messages": messages, "source": source, "label": "reference"} | fields)
    return row


async def rated_chats(store: Store) -> tuple[list[dict[str, Any]], Counter]:
    """One row per answered turn that agents rated or corrected, and per question an agent answered."""
    ratings: dict[int, list[dict[str, Any]]] = {}
    for r in await store.ratings():
        ratings.setdefault(r["turn_id"], []).append(r)
    corrections = {c["turn_id"]: c["text"] for c in await store.corrections()}  # the latest wins
    counts: Counter = Counter()
    rows = []
    by_agents = {t.id for t in await store.turns(outcome="agent") if t.user_text}
    for turn_id in sorted(set(ratings) | set(corrections) | by_agents):
        turn = await store.turn(turn_id)
        if turn is None or turn.outcome not in ("answered", "agent"):
            continue
        agent_score = agent_net(ratings.get(turn_id, []))
        counts.update(
            f"customer_{'up' if r['rating'] > 0 else 'down'}"
            for r in ratings.get(turn_id, [])
            if r["role"] == "customer"
        )
        context = []
        for past in await store.session_turns(turn.channel, turn.conversation_id, turn.session, turn.id):
            said = {"role": "assistant", "content": mask_personal_data(corrections.get(past.id, past.answer))}
            # Earlier answers are context; only approved ones (corrected, 👍 by agents, an agent's) are learnt.
            approved = past.id in corrections or past.outcome == "agent" or agent_net(ratings.get(past.id, [])) > 0
            context += [
                {"role": "user", "content": mask_personal_data(past.user_text)},
                said if approved else formats.as_context(said),
            ]
        question = {"role": "user", "content": mask_personal_data(turn.user_text)}
        answer = mask_personal_data(turn.answer)
        meta = {
            "channel": turn.channel,
            "conversation_id": turn.conversation_id,
            "model_version": turn.model_version,
            "rating": agent_score or None,
        }
        if turn_id in corrections:
            fixed = mask_personal_data(corrections[turn_id])
            label, target, verdict = "corrected", fixed, {"correction": fixed, "chosen": fixed, "rejected": answer}
        elif turn.outcome == "agent" or agent_score > 0:
            label, target, verdict = "good", answer, {"chosen": answer}
        elif agent_score < 0:
            label, target, verdict = "bad", answer, {"rejected": answer}
        else:
            continue
        messages = [*context, question, {"role": "assistant", "content": target}]
        rows.append(_row(messages, "chats", label=label, **verdict, **meta))
        counts[rows[-1]["label"]] += 1
    return rows, counts


def agent_net(ratings: list[dict[str, Any]]) -> int:
    """Agents' 👍 minus 👎 on one answer (customers' ratings never decide what is learnt)."""
    return sum(r["rating"] for r in ratings if r["role"] == "agent")


def file_rows(paths: list[Path]) -> list[dict[str, Any]]:
    return [
        _row([{**m, "content": mask_personal_data(m["content"])} for m in chat], path.name)
        for path in paths
        for chat in formats.read_chats(path)
    ]


def template_key(messages: list[dict[str, str]]) -> str:
    """The question with numbers and {{placeholders}} removed: paraphrase templates share it."""
    question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    return re.sub(r"\{\{[^}]*\}\}|\d+", "#", normalise_question(question))


def in_eval(messages: list[dict[str, str]], percent: int = EVAL_PERCENT) -> bool:
    digest = hashlib.sha256(template_key(messages).encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < percent


def build(
    store: Path | str | None, extra_files: list[Path], include_sample: bool = True, eval_percent: int = EVAL_PERCENT
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """The splits (train, eval, negatives) and the data card. `store`: where the rated chats are (see
    `bot.store.store_location`); None, or a SQLite file not created yet, has none."""
    if isinstance(store, Path) and not store.exists():
        store = None  # opening it would create it
    chats, counts = asyncio.run(_read_store(store)) if store is not None else ([], Counter())
    files = (formats.shipped_files() if include_sample else []) + list(extra_files)
    by_prompt: dict[str, dict[str, Any]] = {}
    for row in file_rows(files) + [r for r in chats if r["label"] != "bad"]:
        # Keyed by everything before the answer: a later source (rated chats) replaces an earlier one.
        key = json.dumps(
            [[m["role"], normalise_question(m["content"])] for m in row["messages"][:-1]], ensure_ascii=False
        )
        by_prompt[key] = row
    splits: dict[str, list[dict[str, Any]]] = {
        "train": [],
        "eval": [],
        "negatives": [r for r in chats if r["label"] == "bad"],
    }
    for row in by_prompt.values():
        held_out = row["source"] != "chats" and in_eval(row["messages"], eval_percent)
        splits["eval" if held_out else "train"].append(row)
    card = {
        "rows": {name: len(rows) for name, rows in splits.items()},
        "sources": dict(Counter(r["source"] for rows in splits.values() for r in rows)),
        "chat_labels": dict(counts),
        "files": [str(p) for p in files],
        "eval_percent": eval_percent,
    }
    return splits, card


async def _read_store(location: Path | str) -> tuple[list[dict[str, Any]], Counter]:
    store = await Store.open(location)
    try:
        return await rated_chats(store)
    finally:
        await store.close()


def write(splits: dict[str, list[dict[str, Any]]], card: dict[str, Any], out_dir: Path) -> str:
    """JSONL per split, the DatasetDict, and the card; returns the data hash (of the JSONL)."""
    from datasets import Dataset, DatasetDict

    out_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    for name, rows in splits.items():
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (out_dir / f"{name}.jsonl").write_text(text, encoding="utf-8")
        digest.update(text.encode())
    DatasetDict(
        {
            name: Dataset.from_list(rows) if rows else Dataset.from_dict({c: [] for c in COLUMNS})
            for name, rows in splits.items()
        }
    ).save_to_disk(str(out_dir / "hf"))
    card = card | {"data_hash": digest.hexdigest()}
    (out_dir / "card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False))
    return card["data_hash"]


def load_split(out_dir: Path, name: str) -> list[dict[str, Any]]:
    path = out_dir / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
