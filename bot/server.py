"""The bot's one HTTP server: the HTTP API plus the channels' routes (Slack events, Telegram
webhook), the channels' background work, and following the model registry."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiohttp import web

from bot.app import MAX_REQUEST_BYTES, Bot, Channel, build_bot
from bot.config import BotSettings, SlackSettings, TelegramSettings, load_slack, load_telegram

log = logging.getLogger(__name__)


def channels_for(bot: Bot, telegram: TelegramSettings, slack: SlackSettings) -> list[Channel]:
    from adapters.http import HttpChannel

    channels: list[Channel] = [HttpChannel(bot)]
    if telegram.enabled:
        from adapters.telegram import TelegramChannel

        channels.append(TelegramChannel(bot, telegram))
    if slack.enabled:
        from adapters.slack import SlackChannel

        channels.append(SlackChannel(bot, slack))
    return channels


@dataclass
class RunningServer:
    bot: Bot
    channels: list[Channel]
    runner: web.AppRunner
    follower: asyncio.Task
    port: int

    async def stop(self) -> None:
        self.follower.cancel()
        for channel in reversed(self.channels):
            await channel.stop()
        await self.runner.cleanup()
        await self.bot.close()


async def start_server(settings: BotSettings, telegram: TelegramSettings | None = None,
                       slack: SlackSettings | None = None) -> RunningServer:
    bot = await build_bot(settings)
    channels = channels_for(bot, telegram or load_telegram(), slack or load_slack())
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    for channel in channels:
        channel.add_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    await site.start()
    port = runner.addresses[0][1]  # the real port, also when 0 asked for any free one
    log.info("listening on http://%s:%d (channels: %s)", settings.http_host, port, ", ".join(c.name for c in channels))
    try:
        for channel in channels:
            await channel.start()
    except BaseException:  # e.g. a platform unreachable at boot: release the port and the store
        await runner.cleanup()
        await bot.close()
        raise
    follower = asyncio.create_task(bot.dialogue.follow_registry())
    return RunningServer(bot, channels, runner, follower, port)
