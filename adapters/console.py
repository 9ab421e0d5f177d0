"""Terminal channel: talk to the bot with no Telegram or Slack account (`python -m bot chat`)."""

from __future__ import annotations

import asyncio
import getpass
import uuid

from bot.message import UserMessage
from bot.service import ChannelService

CHANNEL = "console"


async def chat(service: ChannelService) -> None:
    conversation = uuid.uuid4().hex[:8]
    user = getpass.getuser()
    loop = asyncio.get_running_loop()
    print(f"Model {(await service.status())['model_version']}. Type a question; /reset starts over, Ctrl-D quits.")
    while True:
        try:
            text = await loop.run_in_executor(None, input, "you> ")
        except EOFError:
            print()
            return
        shown = ""

        async def partial(text: str) -> None:  # the answer as it is generated
            nonlocal shown
            if text.startswith(shown):
                print(("bot> " if not shown else "") + text[len(shown) :], end="", flush=True)
                shown = text

        reply = await service.handle(UserMessage(CHANNEL, conversation, user, uuid.uuid4().hex, text), partial)
        if reply.outcome == "with_agent":
            print("(an agent has this conversation; no answer)")
        elif shown and reply.text.startswith(shown):
            print(reply.text[len(shown) :])
        else:  # nothing streamed, or the final reply replaces it (a fallback, a blocked answer)
            print(("\n" if shown else "") + f"bot> {reply.text}")
