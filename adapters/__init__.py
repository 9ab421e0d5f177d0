"""Channel adapters: each translates one platform to and from the bot's neutral messages, and sees
the bot only through a `ChannelService`.

A chat channel is registered here as data: its name, its settings class and its channel class. The
HTTP API is always on; the others start when their settings turn them on (a bot token).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from adapters.console import CHANNEL as CONSOLE
from adapters.console import chat
from adapters.http import CHANNEL as HTTP
from adapters.http import HttpChannel
from adapters.slack import SlackChannel
from adapters.telegram import TelegramChannel
from bot.app import Bot
from bot.config import ChannelSettings, SlackSettings, TelegramSettings
from bot.server import Channel
from bot.service import ChannelService, build_admin

CHANNELS: dict[str, tuple[type[ChannelSettings], Callable[[ChannelService, Any], Channel]]] = {
    "telegram": (TelegramSettings, TelegramChannel),
    "slack": (SlackSettings, SlackChannel),
}


def build_channels(bot: Bot, settings: Mapping[str, ChannelSettings]) -> list[Channel]:
    """The HTTP channel, then every registered channel whose settings turn it on."""
    channels: list[Channel] = [HttpChannel(ChannelService(bot, HTTP), build_admin(bot))]
    for name, (_, channel_class) in CHANNELS.items():
        given = settings.get(name)
        if given is not None and given.enabled:
            channels.append(channel_class(ChannelService(bot, name), given))
    return channels


async def console(bot: Bot) -> None:
    """Talk to `bot` in the terminal."""
    await chat(ChannelService(bot, CONSOLE))
