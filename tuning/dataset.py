"""Dataset stage: rated chats from the store, mixed with the shipped sample data and extra files,
written as a Hugging Face DatasetDict and as chat JSONL, with a small data card.

- an agent's correction, an answer agents rated 👍 (net), or an agent's own answer during a hand-off
  becomes a training target; the conversation before it is context, and of its earlier answers only
  the approved ones are learnt too (the others are marked context only, `formats.CONTEXT_ONLY`);
- an answer agents rated 👎 without a correction is kept out of training, as a labelled negative;
- customers' reactions are counted in the card but never become targets;
- a rated chat's row names the agents whose ratings or correction went into it (`raters`; the card counts
  rows per rater); `exclude_raters` builds the dataset as if those raters had never rated or corrected anything;
- personal data is masked again; duplicates are dropped (rated chats win over file rows);
- the file rows are split by `tuning.split` (the eval set of their data version is kept under the
  registry); an eval row whose question a training row asks is left out of this dataset's eval split
  (counted in the card);
- rated chats train (they are what the monthly tune is for), but for a share held out, by question, as
  the eval view "taught" (`split.taught`: is the model learning what agents teach, on questions it
  never trained on?); the card counts them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from bot.cache import normalise_question
from bot.privacy import mask_personal_data
from bot.store import Store
from tuning import formats, split

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
    "view",
    "raters",
)


def _row(messages: list[dict[str, str]], source: str, **fields: Any) -> dict[str, Any]:
    row = dict.fromkeys(COLUMNS)
    row.update({"messages": messages, "source": source, "label": "reference"} | fields)
    return row


async def rated_chats(
    store: Store, exclude_raters: frozenset[str] = frozenset()
) -> tuple[list[dict[str, Any]], Counter]:
    """One row per answered turn that agents rated or corrected, and per question an agent answered,
    leaving out every rating and correction by `exclude_raters` (ids as the store keeps them)."""
    ratings: dict[int, list[dict[str, Any]]] = {}
    for r in await store.ratings():
        if r["rater"] not in exclude_raters:
            ratings.setdefault(r["turn_id"], []).append(r)
    # one correction per answer: the latest wins
    corrections = {c["turn_id"]: c for c in await store.corrections() if c["rater"] not in exclude_raters}
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
            said_text = corrections[past.id]["text"] if past.id in corrections else past.answer
            said = {"role": "assistant", "content": mask_personal_data(said_text)}
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
        raters = {r["rater"] for r in ratings.get(turn_id, []) if r["role"] == "agent"}
        if turn_id in corrections:
            raters.add(corrections[turn_id]["rater"])
            fixed = mask_personal_data(corrections[turn_id]["text"])
            label, target, verdict = "corrected", fixed, {"correction": fixed, "chosen": fixed, "rejected": answer}
        elif turn.outcome == "agent" or agent_score > 0:
            label, target, verdict = "good", answer, {"chosen": answer}
        elif agent_score < 0:
            label, target, verdict = "bad", answer, {"rejected": answer}
        else:
            continue
        messages = [*context, question, {"role": "assistant", "content": target}]
        rows.append(_row(messages, "chats", label=label, raters=sorted(raters), **verdict, **meta))
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


def file_record(path: Path) -> dict[str, str]:
    """What a manifest keeps of a data file a version trained on, to train on it again (`replayed`)."""
    return {"path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def replayed(recorded: list[dict[str, str]], given: list[Path], forget: list[Path], line: str) -> list[Path]:
    """The data files a tune trains on: those its line trained on (`recorded`, as `file_record` wrote
    them), checked to be as they were then, and the `given` ones; `forget` leaves recorded ones out. A
    file given again is taken as it is now. A recorded file now missing or changed is refused (DataError),
    naming it and the ways out."""
    again = {str(p.resolve()) for p in [*given, *forget]}
    kept = []
    for entry in recorded:
        path = Path(entry["path"])
        if entry["path"] in again:
            continue
        if not path.is_file():
            raise formats.DataError(
                f"{path} is missing: {line} trained on it, and every tune of the line trains on it again; "
                f"restore it, or leave it out with --forget-data {path}"
            )
        if file_record(path)["sha256"] != entry["sha256"]:
            raise formats.DataError(
                f"{path} changed since {line} trained on it: restore it, give it as --data to train on it as "
                f"it is now, or leave it out with --forget-data {path}"
            )
        kept.append(path)
    return kept + given


def _prompt_key(row: dict[str, Any]) -> str:
    """Everything before the answer, normalised: rows with the same key are duplicates."""
    return json.dumps([[m["role"], normalise_question(m["content"])] for m in row["messages"][:-1]], ensure_ascii=False)


def build(
    store: Path | str | None,
    extra_files: list[Path],
    include_sample: bool = True,
    registry_root: Path | None = None,
    exclude_raters: frozenset[str] = frozenset(),
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """The splits (train, eval, negatives) and the data card. `store`: where the rated chats are (see
    `bot.store.store_location`); None, or a SQLite file not created yet, has none. `registry_root`: where
    the eval set of this data version is kept (None: made afresh, not kept). `exclude_raters`: see `rated_chats`."""
    if isinstance(store, Path) and not store.exists():
        store = None  # opening it would create it
    chats, counts = asyncio.run(_read_store(store, exclude_raters)) if store is not None else ([], Counter())
    files = (formats.shipped_files() if include_sample else []) + list(extra_files)
    by_prompt = {_prompt_key(row): row for row in file_rows(files)}  # a later file's row replaces an earlier one
    evals = split.eval_set([r["messages"] for r in by_prompt.values()], registry_root)
    by_prompt |= {_prompt_key(row): row for row in chats if row["label"] != "bad"}  # rated chats win
    rated = [r["messages"] for r in by_prompt.values() if r["source"] == "chats"]
    files_train = [r["messages"] for r in by_prompt.values() if r["source"] != "chats" and evals.allows(r["messages"])]
    taught = split.taught(rated, files_train)

    def trains(row: dict[str, Any]) -> bool:
        if row["source"] == "chats":
            return split.question(row["messages"]) not in taught
        return evals.allows(row["messages"])

    train = [r for r in by_prompt.values() if trains(r)]
    trained = set().union(*(split.asked(r["messages"]) for r in train))
    held_out = [r for r in evals.rows if split.question(r["messages"]) not in trained]
    taught_rows = [r | {"view": split.TAUGHT} for r in by_prompt.values() if r["source"] == "chats" and not trains(r)]
    splits: dict[str, list[dict[str, Any]]] = {
        "train": train,
        "eval": [_row(r["messages"], "eval_set", view=r["view"]) for r in held_out] + taught_rows,
        "negatives": [r for r in chats if r["label"] == "bad"],
    }
    card = {
        "rows": {name: len(rows) for name, rows in splits.items()},
        "sources": dict(Counter(r["source"] for rows in splits.values() for r in rows)),
        "chat_labels": dict(counts),
        "files": [str(p) for p in files],
        "eval_set": evals.record(),
        "eval_views": dict(Counter(r["view"] for r in splits["eval"])),
        "taught_rows": len(taught_rows),  # rated chats held out as the taught view (split.TAUGHT_PERCENT)
        "eval_asked_in_training": len(evals.rows) - len(held_out),  # by rated chats that train
        "rows_per_rater": dict(Counter(rater for rows in splits.values() for r in rows for rater in r["raters"] or [])),
        "excluded_raters": sorted(exclude_raters),
    }
    return splits, card


async def _read_store(location: Path | str, exclude_raters: frozenset[str]) -> tuple[list[dict[str, Any]], Counter]:
    store = await Store.open(location)
    try:
        return await rated_chats(store, exclude_raters)
    finally:
        await store.close()


def write(splits: dict[str, list[dict[str, Any]]], card: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """JSONL per split, the DatasetDict, and the card; returns each JSONL file's SHA-256."""
    from datasets import Dataset, DatasetDict

    out_dir.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, rows in splits.items():
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (out_dir / f"{name}.jsonl").write_text(text, encoding="utf-8")
        hashes[f"{name}.jsonl"] = hashlib.sha256(text.encode()).hexdigest()
    DatasetDict(
        {
            name: Dataset.from_list(rows) if rows else Dataset.from_dict({c: [] for c in COLUMNS})
            for name, rows in splits.items()
        }
    ).save_to_disk(str(out_dir / "hf"))
    (out_dir / "card.json").write_text(json.dumps(card | {"data_hashes": hashes}, indent=2, ensure_ascii=False))
    return hashes


def load_split(out_dir: Path, name: str) -> list[dict[str, Any]]:
    path = out_dir / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
