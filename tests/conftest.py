"""Shared fixtures. The starter model is built once (seeded) and copied into each test's own data
directory, so tests never share a SQLite file or a registry. The build is kept in .venv, keyed by a
hash of the data and the training code, so a second `make test` on the same checkout skips it.

The tests' sample data is the small subset (data/sample/small, 418 chats: TUNING_SAMPLE=small, see
tuning/formats.py), set here before any test runs, so the starter, every `tuning run` a test starts (the
subprocesses inherit it) and the split all see the same rows, and a tune takes minutes, not the full
sample's quarter of an hour. `TUNING_SAMPLE=full` builds the tests' starter from the full sample instead
(slow; tests that count the subset's held-out rows then fail)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from bot.__main__ import start
from bot.config import BotSettings
from bot.server import RunningServer
from bot.store import Store
from bot.store.postgres import shown
from tests.support import REDIS_URL, ROOT, SYSTEM_PROMPT, make_settings, redis_answers
from tuning.bootstrap import bootstrap
from tuning.formats import SAMPLE_ENV

os.environ.setdefault(SAMPLE_ENV, "small")

# What the starter model is built from: the data, the trainer with its presets, and the export.
STARTER_INPUTS = [
    *sorted((ROOT / "data").rglob("*.*")),
    *(
        ROOT / "tuning" / name
        for name in ("bootstrap.py", "train.py", "config.py", "formats.py", "dataset.py", "split.py")
    ),
    ROOT / "bot" / "models" / "export.py",
]


@pytest.fixture(scope="session")
def starter_dir() -> Path:
    digest = hashlib.sha256(f"{SYSTEM_PROMPT}\0{os.environ[SAMPLE_ENV]}".encode())
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


# PostgreSQL for the store's tests: each test gets a schema of its own in this database, dropped after.
PG_TEST_URL = os.environ.get("BOT_TEST_DATABASE_URL", "postgresql://127.0.0.1:5432/test")


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A BOT_DATABASE_URL selecting a fresh, empty schema (asyncpg passes `search_path` on as a server
    setting); the test is skipped, saying so, when no PostgreSQL answers at BOT_TEST_DATABASE_URL."""
    try:
        admin = await asyncpg.connect(PG_TEST_URL, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        pytest.skip(f"no PostgreSQL at {shown(PG_TEST_URL)} (set BOT_TEST_DATABASE_URL): {exc}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_TEST_URL}{'&' if '?' in PG_TEST_URL else '?'}search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_at(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a test's store is, once per backend: a SQLite file, or a PostgreSQL schema (`pg_url`)."""
    if request.param == "sqlite":
        return tmp_path / "bot.sqlite3"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def store(store_at: Path | str) -> AsyncIterator[Store]:
    opened = await Store.open(store_at)
    yield opened
    await opened.close()


@pytest.fixture
def redis_url() -> str:
    """BOT_REDIS_URL of the test Redis; the test is skipped, saying so, when none answers there."""
    if not redis_answers():
        pytest.skip(f"no Redis answers at {REDIS_URL} (set BOT_TEST_REDIS_URL)")
    return REDIS_URL
