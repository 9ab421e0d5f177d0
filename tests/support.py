"""Helpers and constants the tests share (fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import redis

from bot.config import SERVICE, BotSettings, token_digest
from bot.server import RunningServer

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PROMPT = BotSettings(_env_file=None).system_prompt
# The origin document's question and the starter model's answer to it.
ORDER_Q, ORDER_A = "我的订单什么时候到?", "您可通过订单号在'我的订单'页面查询物流信息"


# HTTP tokens of the test settings: the service token (BOT_API_TOKEN) and personal ones (BOT_API_KEYS).
API_TOKEN = "service-token-for-the-tests"
TOKENS = {
    SERVICE: API_TOKEN,
    "alice": "alice-agent-token-for-the-tests",
    "root": "root-admin-token-for-the-tests",
    "u1": "u1-customer-token-for-the-tests",
}
KEY_ROLES = {"alice": "agent", "root": "admin", "u1": "customer"}


def api_keys(roles: dict[str, str]) -> str:
    """BOT_API_KEYS for {name: role}, each with its token from TOKENS."""
    return ",".join(f"{name}:{role}:{token_digest(TOKENS[name])}" for name, role in roles.items())


def make_settings(data_dir: Path, **overrides: object) -> BotSettings:
    values: dict[str, object] = dict(
        data_dir=data_dir,
        http_port=0,
        agent_ids="http:alice",
        api_token=API_TOKEN,
        api_keys=api_keys(KEY_ROLES),
        registry_poll_s=0.2,
    )
    return BotSettings(_env_file=None, **(values | overrides))  # type: ignore[arg-type]


def auth(who: str | None = SERVICE) -> dict[str, str]:
    """The Authorization header of `who` (a TOKENS name, else taken as the token itself); None: none."""
    return {} if who is None else {"Authorization": f"Bearer {TOKENS.get(who, who)}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def post(server: RunningServer, path: str, body: Any, who: str | None = SERVICE) -> tuple[int, dict[str, Any]]:
    """POST `body` (JSON unless already text) to the running server as `who` (see `auth`); the status
    and the JSON reply."""
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{server.port}{path}", data=data, headers=auth(who)) as resp:
            return resp.status, await resp.json()


async def get(server: RunningServer, path: str, who: str | None = SERVICE) -> tuple[int, Any]:
    """GET `path` from the running server as `who`; the status and the JSON reply."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{server.port}{path}", headers=auth(who)) as resp:
            return resp.status, await resp.json()


# Redis for the tests of state shared by workers (BOT_REDIS_URL); those tests skip, saying so, without it.
REDIS_URL = os.environ.get("BOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_answers() -> bool:
    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


class TcpRelay:
    """A TCP relay on 127.0.0.1 to the server of `url` (Redis, PostgreSQL) that can be cut, as if the
    server went away, and started again on the same port, as if it came back."""

    def __init__(self, url: str) -> None:
        self.target = urlsplit(url)
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> str:
        """Listen (on the port of the first start, when started again); `url` pointing at the relay."""

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(self.target.hostname, self.target.port)
            self.writers += [writer, up_writer]

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

        self.server = await asyncio.start_server(relay, "127.0.0.1", self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        userinfo = self.target.netloc.rpartition("@")[0]
        address = f"127.0.0.1:{self.port}"
        return self.target._replace(netloc=f"{userinfo}@{address}" if userinfo else address).geturl()

    def cut(self) -> None:
        self.server.close()
        for writer in self.writers:
            writer.close()
        self.writers.clear()
