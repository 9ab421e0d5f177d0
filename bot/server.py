"""The bot's one HTTP server: the channels' routes (HTTP API, Slack events, Telegram webhook), the
channels' background work, and following the model registry."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from bot.app import Bot

log = logging.getLogger(__name__)
# Request bodies up to this size reach the handlers, which answer oversize text with a JSON error.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
# A request line (a long query) or header up to this size reaches the handlers too, which refuse an
# over-long value with a JSON 422. Beyond it aiohttp answers a plain-text 400 itself (its default: 8 KiB).
MAX_LINE_BYTES = 64 * 1024


class Channel(Protocol):
    """What the server needs of a channel: its routes, and start/stop of its background work."""

    @property
    def name(self) -> str: ...

    def add_routes(self, app: web.Application) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class RunningServer:
    bot: Bot
    channels: Sequence[Channel]
    runner: web.AppRunner
    follower: asyncio.Task[None]
    port: int

    async def stop(self) -> None:
        self.follower.cancel()
        for channel in reversed(self.channels):
            await channel.stop()
        await self.runner.cleanup()
        await self.bot.close()


async def start_server(bot: Bot, channels: Sequence[Channel], reuse_port: bool = False) -> RunningServer:
    """Serve `channels` on the configured address; on failure the port and the store are released.
    Without any HTTP token configured the API is open, so it may only listen on loopback. With
    `reuse_port`, workers on this host share the address and the kernel spreads connections over them."""
    settings = bot.settings
    try:
        settings.check()  # also for settings not read through config.load (tests, embedding)
    except BaseException:
        await bot.close()
        raise
    if not settings.auth_configured:
        log.warning(
            "no BOT_API_TOKEN or BOT_API_KEYS: the HTTP API needs no token, so it listens on loopback (%s) only",
            settings.http_host,
        )
    app = web.Application(
        client_max_size=MAX_REQUEST_BYTES,
        handler_args={"max_line_size": MAX_LINE_BYTES, "max_field_size": MAX_LINE_BYTES},
    )
    for channel in channels:
        channel.add_routes(app)
    runner = web.AppRunner(app, access_log=None)
    try:
        await runner.setup()
        await web.TCPSite(runner, settings.http_host, settings.http_port, reuse_port=reuse_port or None).start()
        port = runner.addresses[0][1]  # the real port, also when 0 asked for any free one
        log.info(
            "listening on http://%s:%d (channels: %s)", settings.http_host, port, ", ".join(c.name for c in channels)
        )
        for channel in channels:
            await channel.start()
    except BaseException:  # e.g. a platform unreachable at boot
        await runner.cleanup()
        await bot.close()
        raise
    follower = asyncio.create_task(bot.dialogue.follow_registry())
    return RunningServer(bot, channels, runner, follower, port)
