"""Reading training and evaluation files. Every format becomes a list of chats (lists of
{"role", "content"} ending with the assistant's answer).

Accepted: the origin document's JSON list `[{"context": "用户:...\\n客服:", "response": "..."}]`,
chat JSONL `{"messages": [...]}` (one per line), and CSV with `instruction` and `response` columns.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from bot.models.chat import Chat

SPEAKERS = {"用户": "user", "客户": "user", "user": "user", "客服": "assistant", "assistant": "assistant"}
SHIPPED_DATA = Path(__file__).resolve().parent.parent / "data" / "sample"
# Which shipped sample "the sample data" is: "full" (unset: every file in data/sample, over 3,000 chats) or
# "small" (data/sample/small, 418 chats of the same data). The tests set "small" (tests/conftest.py), so
# their starter model and tunes train in minutes; subprocesses inherit it, so a test's `tuning run` splits
# the same rows its starter did.
SAMPLE_ENV = "TUNING_SAMPLE"
SAMPLES = {"full": SHIPPED_DATA, "small": SHIPPED_DATA / "small"}
# An assistant message with this key set to "true" is context only: the model sees it, its loss is masked
# (a bot answer nobody approved, kept for the conversation around an approved one). Templates ignore it.
CONTEXT_ONLY = "context_only"


def as_context(message: dict[str, str]) -> dict[str, str]:
    return {**message, CONTEXT_ONLY: "true"}


def is_target(message: dict[str, str]) -> bool:
    """Whether training learns this message: an assistant message not marked context only."""
    return message["role"] == "assistant" and message.get(CONTEXT_ONLY) != "true"


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and the row."""


def shipped_files() -> list[Path]:
    """The data files of the shipped sample that TUNING_SAMPLE selects (`SAMPLES`)."""
    choice = os.environ.get(SAMPLE_ENV) or "full"
    if choice not in SAMPLES:
        raise DataError(f"{SAMPLE_ENV}={choice!r}: use {' or '.join(SAMPLES)}")
    return sorted(p for p in SAMPLES[choice].iterdir() if p.suffix in {".csv", ".jsonl", ".json"})


def read_chats(path: Path) -> list[Chat]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        if path.suffix == ".csv":
            return _read_csv(path)
        if path.suffix == ".jsonl":
            return [_chat_from_row(json.loads(line), path, n) for n, line in enumerate(_lines(path), 1) if line.strip()]
        if path.suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(rows, list):
                raise DataError(f"{path}: expected a JSON list of {{context, response}} objects")
            return [_chat_from_row(row, path, n) for n, row in enumerate(rows, 1)]
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from None
    raise DataError(f"{path}: unknown format {path.suffix!r}: use .json, .jsonl or .csv")


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _read_csv(path: Path) -> list[Chat]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"instruction", "response"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        return [_pair(row.get("instruction"), row.get("response"), path, n) for n, row in enumerate(reader, 2)]


def _pair(question: Any, answer: Any, path: Path, n: int) -> Chat:
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{path}: row {n}: empty question")
    if not isinstance(answer, str) or not answer.strip():
        raise DataError(f"{path}: row {n}: no response")
    return [{"role": "user", "content": question.strip()}, {"role": "assistant", "content": answer.strip()}]


def _chat_from_row(row: Any, path: Path, n: int) -> Chat:
    if not isinstance(row, dict):
        raise DataError(f"{path}: row {n}: expected an object")
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict)
            and m.get("role") in {"system", "user", "assistant"}
            and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise DataError(f"{path}: row {n}: messages must be a list of {{role, content}}")
        if not messages or messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
            raise DataError(f"{path}: row {n}: no response (the last message must be the assistant's)")
        return [m for m in messages if m["role"] != "system"]
    if "context" in row:
        return _origin_context(row["context"], path, n) + _pair("x", row.get("response"), path, n)[1:]
    if "instruction" in row:
        return _pair(row.get("instruction"), row.get("response"), path, n)
    raise DataError(f"{path}: row {n}: expected messages, context/response or instruction/response")


def _origin_context(context: Any, path: Path, n: int) -> Chat:
    """ "用户:我的订单什么时候到?\\n客服:" -> [{"role": "user", ...}]; the trailing empty 客服: is the slot."""
    if not isinstance(context, str):
        raise DataError(f"{path}: row {n}: context must be text")
    chat: Chat = []
    for line in context.splitlines():
        speaker, sep, text = line.replace(":", ":").partition(":")
        role = SPEAKERS.get(speaker.strip().lower()) if sep else None
        if role:
            chat.append({"role": role, "content": text.strip()})
        elif chat:
            chat[-1]["content"] += "\n" + line
    while chat and chat[-1]["role"] == "assistant" and not chat[-1]["content"]:
        chat.pop()
    if not chat or chat[-1]["role"] != "user" or not chat[-1]["content"]:
        raise DataError(f"{path}: row {n}: context has no customer question")
    return chat
