"""`python -m bot run` serves the HTTP API and the configured channels; `python -m bot chat` talks
to the bot in the terminal."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from bot.app import build_bot, ensure_model
from bot.config import BotSettings, load_settings, load_slack, load_telegram
from bot.logs import setup_logging
from bot.server import start_server

log = logging.getLogger("bot")


async def serve(settings: BotSettings) -> None:
    server = await start_server(settings)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop()


async def console(settings: BotSettings) -> None:
    from adapters.console import chat

    bot = await build_bot(settings)
    try:
        await chat(bot)
    finally:
        await bot.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__)
    parser.add_argument("command", choices=["run", "chat"])
    args = parser.parse_args()
    settings = load_settings()
    telegram, slack = load_telegram(), load_slack()
    setup_logging(settings.log_level, [telegram.bot_token, telegram.webhook_secret, slack.bot_token,
                                       slack.signing_secret, slack.app_token])
    ensure_model(settings)
    asyncio.run(serve(settings) if args.command == "run" else console(settings))


if __name__ == "__main__":
    main()
