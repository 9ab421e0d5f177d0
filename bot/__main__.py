"""The process entry point, and the one place that knows both the serving core and the channels.

`python -m bot run` serves the HTTP API and the configured channels (`--workers N`: N processes on one
address, sharing BOT_DATABASE_URL); `python -m bot chat` talks to the bot in the terminal. With no model configured and none registered, the starter model is built
from data/ first. `python -m bot audit verify|show` checks or prints the audit log (bot/audit.py);
`python -m bot retention --days N` deletes old conversation text (bot/retention.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from bot import audit, retention
from bot.config import BotSettings, ChannelSettings, ConfigError, load, load_settings
from bot.logs import setup_logging
from bot.models.registry import Registry

# The serving stack (channels, model runtime, server) is imported by the functions that serve, so
# `python -m bot audit ...` starts in a fraction of a second.
if TYPE_CHECKING:
    from bot.server import RunningServer

log = logging.getLogger("bot")


def ensure_model(settings: BotSettings) -> None:
    """With no model configured and none registered, build the starter model from data/."""
    if settings.model or Registry(settings.data_dir).state().current:
        return
    log.info(
        "no model in %s yet: building the starter model from data/sample (a few minutes on 2 cores, once)",
        settings.data_dir,
    )
    # The trainer runs as its own process (`python -m tuning bootstrap`): serving never imports it.
    env = os.environ | {"BOT_DATA_DIR": str(settings.data_dir), "BOT_SYSTEM_PROMPT": settings.system_prompt}
    if subprocess.run([sys.executable, "-m", "tuning", "bootstrap"], env=env, stdout=subprocess.DEVNULL).returncode:
        raise SystemExit("error: could not build the starter model (see the lines above)")


async def start(
    settings: BotSettings, channels: Mapping[str, ChannelSettings], reuse_port: bool = False
) -> RunningServer:
    """The bot and its channels, serving; `channels` maps a channel name to its settings."""
    from adapters import build_channels
    from bot.app import build_bot
    from bot.server import start_server

    bot = await build_bot(settings)
    return await start_server(bot, build_channels(bot, channels), reuse_port)


async def serve(settings: BotSettings, channels: Mapping[str, ChannelSettings], reuse_port: bool) -> None:
    server = await start(settings, channels, reuse_port)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop()


async def console(settings: BotSettings) -> None:
    from adapters import console as console_channel
    from bot.app import build_bot

    bot = await build_bot(settings)
    try:
        await console_channel(bot)
    finally:
        await bot.close()


def run_workers(count: int, settings: BotSettings) -> int:
    """Keep `count` worker processes serving one address (each `run --reuse-port`) until SIGINT/SIGTERM,
    starting a new one when one dies. Workers share the database, so they need BOT_DATABASE_URL."""
    if not settings.database_url:
        raise ConfigError("config error: --workers: several workers share one database; set BOT_DATABASE_URL")
    command = [sys.executable, "-m", "bot", "run", "--reuse-port"]
    workers = [subprocess.Popen(command) for _ in range(count)]
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            worker.send_signal(signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping:
        for i, worker in enumerate(workers):
            if worker.poll() is not None and not stopping:
                log.error("worker %d exited with %s; starting another", worker.pid, worker.returncode)
                workers[i] = subprocess.Popen(command)
        time.sleep(1.0)
    return max(worker.wait() for worker in workers)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,chat,audit,retention}")
    run = commands.add_parser("run", help="serve the HTTP API and the configured channels")
    run.add_argument("--workers", type=int, default=1, help="worker processes on one address (needs BOT_DATABASE_URL)")
    run.add_argument("--reuse-port", action="store_true", help="share the address with other workers on this host")
    commands.add_parser("chat", help="talk to the bot in the terminal")
    audit.add_commands(commands.add_parser("audit", help="check (verify) or print (show) the audit log"))
    retention.add_arguments(
        commands.add_parser(
            "retention", help="delete conversation text older than N days", description=retention.__doc__
        )
    )
    args = parser.parse_args()
    if args.command == "run" and args.workers < 1:
        parser.error("--workers: at least 1")
    settings = load_settings()
    if args.command == "audit":
        raise SystemExit(audit.main(args, settings))
    if args.command == "retention":
        raise SystemExit(retention.main(args, settings))
    from adapters import CHANNELS

    channels = {name: load(settings_class) for name, (settings_class, _) in CHANNELS.items()}
    setup_logging(
        settings.log_level, [*settings.secrets(), *(secret for c in channels.values() for secret in c.secrets())]
    )
    ensure_model(settings)
    if args.command == "run" and args.workers > 1:
        raise SystemExit(run_workers(args.workers, settings))
    asyncio.run(serve(settings, channels, args.reuse_port) if args.command == "run" else console(settings))


if __name__ == "__main__":
    main()
