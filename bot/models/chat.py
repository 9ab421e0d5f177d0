"""The chat shape every model takes: a list of {"role", "content"} messages."""

from __future__ import annotations

Chat = list[dict[str, str]]


def with_system(system_prompt: str, messages: Chat) -> Chat:
    """`messages` behind the shop's system prompt: how every prompt, training row and eval row starts."""
    return [{"role": "system", "content": system_prompt}, *messages]
