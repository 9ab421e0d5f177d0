"""The one neutral message type every channel translates to and from (Rasa's UserMessage idea)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# Chat-template control tokens (<|im_start|>, <|im_end|>, <|endoftext|>...): typed by a person they
# would become real special tokens and could forge a system turn, in answers and in training data.
CONTROL_TOKEN = re.compile(r"<\|[^<>|\s]{1,40}\|>")


def strip_control_tokens(text: str) -> str:
    """People's text without chat-template control tokens."""
    return CONTROL_TOKEN.sub("", text)


def pick_language(texts: tuple[str, str], text: str = "", language: str = "") -> str:
    """The (English, Chinese) reply for a user: by their language setting where the platform gives
    one (e.g. Telegram's `zh-hans`), else by the script of what they wrote."""
    if language:
        return texts[1] if language.lower().startswith("zh") else texts[0]
    return texts[1] if any("\u4e00" <= ch <= "\u9fff" for ch in text) else texts[0]


@dataclass(frozen=True)
class UserMessage:
    channel: str  # "telegram", "slack", "http", "console"
    conversation_id: str  # chat (+thread) on the platform
    user_id: str  # the sender on the platform
    message_id: str  # platform message id: the deduplication key within the channel
    text: str
    time: datetime = field(default_factory=utcnow)

    @property
    def sender(self) -> str:
        """The sender as written in AGENT_IDS: `channel:user_id`."""
        return f"{self.channel}:{self.user_id}"


@dataclass(frozen=True)
class BotReply:
    text: str
    turn_id: int | None  # None for replies that are not answers (e.g. /reset)
    cached: bool = False
    model_version: str = ""
    duplicate: bool = False  # the message was seen before; this is the answer already given
    outcome: str = "answered"  # see pipeline.WorkingTurn.outcome (e.g. handed_off, with_agent)
