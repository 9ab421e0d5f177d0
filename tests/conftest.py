"""Shared fixtures. The starter model is built once (seeded) and copied into each test's own data
directory, so tests never share a SQLite file or a registry. The build is kept in .venv, keyed by a
hash of the data and the training code, so a second `make test` on the same checkout skips it."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.__main__ import start
from bot.config import BotSettings
from bot.server import RunningServer
from tests.support import ROOT, SYSTEM_PROMPT, make_settings
from tuning.bootstrap import bootstrap

# What the starter model is built from: the data, the trainer with its presets, and the export.
STARTER_INPUTS = [
    *sorted((ROOT / "data").rglob("*.*")),
    *(ROOT / "tuning" / name for name in ("bootstrap.py", "train.py", "config.py", "formats.py")),
    ROOT / "bot" / "models" / "export.py",
]


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


@pytest.fixture
def settings(data_dir: Path) -> BotSettings:
    return make_settings(data_dir)


@pytest.fixture
async def server(settings: BotSettings) -> AsyncIterator[RunningServer]:
    running = await start(settings, {})
    yield running
    await running.stop()
