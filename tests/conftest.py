"""Shared fixtures. The starter model is built once per test session (seeded) and copied into each
test's own data directory, so tests never share a SQLite file or a registry."""
from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import AsyncIterator

import pytest

from bot.config import BotSettings, SlackSettings, TelegramSettings
from bot.server import RunningServer, start_server
from tuning.bootstrap import bootstrap

SYSTEM_PROMPT = BotSettings(_env_file=None).system_prompt


@pytest.fixture(scope="session")
def starter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("starter")
    bootstrap(folder, SYSTEM_PROMPT)
    return folder


@pytest.fixture
def data_dir(starter_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "var"
    shutil.copytree(starter_dir / "models", folder / "models")
    return folder


def make_settings(data_dir: Path, **overrides: object) -> BotSettings:
    values: dict[str, object] = dict(data_dir=data_dir, http_port=0, agent_ids="http:alice", registry_poll_s=0.2)
    return BotSettings(_env_file=None, **(values | overrides))


@pytest.fixture
def settings(data_dir: Path) -> BotSettings:
    return make_settings(data_dir)


@pytest.fixture
async def server(settings: BotSettings) -> AsyncIterator[RunningServer]:
    running = await start_server(settings, TelegramSettings(_env_file=None), SlackSettings(_env_file=None))
    yield running
    await running.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
