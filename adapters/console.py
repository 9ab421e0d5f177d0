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
        reply = await service.handle(UserMessage(CHANNEL, conversation, user, uuid.uuid4().hex, text))
        print(f"bot> {reply.text}" if reply.outcome != "with_agent" else "(an agent has this conversation; no answer)")
