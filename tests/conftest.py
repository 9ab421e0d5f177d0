"""Shared fixtures. The starter model is built once (seeded) and copied into each test's own data
directory, so tests never share a SQLite file or a registry. The build is kept in .venv, keyed by a
hash of the data and the training code, so a second `make test` on the same checkout skips it."""
from __future__ import annotations

import hashlib
import shutil
import tempfile
import socket
from pathlib import Path
from typing import AsyncIterator

import pytest

from bot.config import BotSettings, SlackSettings, TelegramSettings
from bot.server import RunningServer, start_server
from tuning.bootstrap import bootstrap

SYSTEM_PROMPT = BotSettings(_env_file=None).system_prompt


ROOT = Path(__file__).resolve().parent.parent
STARTER_INPUTS = [*sorted((ROOT / "data").rglob("*.*")), ROOT / "tuning/bootstrap.py", ROOT / "tuning/train.py",
                  ROOT / "tuning/export.py"]


@pytest.fixture(scope="session")
def starter_dir() -> Path:
    digest = hashlib.sha256(SYSTEM_PROMPT.encode())
    for path in STARTER_INPUTS:
        digest.update(path.read_bytes())
    folder = ROOT / ".venv" / "test-starter" / digest.hexdigest()[:16]
    if not (folder / "models" / "state.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=folder.parent, prefix="building-"))
        bootstrap(scratch, SYSTEM_PROMPT)
        try:
            scratch.rename(folder)
        except OSError:  # another test session finished the same build first
            shutil.rmtree(scratch, ignore_errors=True)
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
