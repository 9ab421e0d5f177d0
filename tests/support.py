"""Helpers and constants the tests share (fixtures are in conftest.py)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import aiohttp

from bot.config import BotSettings
from bot.server import RunningServer

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PROMPT = BotSettings(_env_file=None).system_prompt
# The origin document's question and the starter model's answer to it.
ORDER_Q, ORDER_A = "我的订单什么时候到?", "您可通过订单号在'我的订单'页面查询物流信息"


def make_settings(data_dir: Path, **overrides: object) -> BotSettings:
    values: dict[str, object] = dict(data_dir=data_dir, http_port=0, agent_ids="http:alice", registry_poll_s=0.2)
    return BotSettings(_env_file=None, **(values | overrides))  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def post(server: RunningServer, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    """POST `body` (JSON unless already text) to the running server; the status and the JSON reply."""
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{server.port}{path}", data=data) as resp:
            return resp.status, await resp.json()
