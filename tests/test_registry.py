"""The model registry's state file, changed by several writers at once (every worker's admin API, the
tuning commands): each change is made under one lock, so none is lost."""

from __future__ import annotations

import asyncio
import fcntl
import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.models import pool
from bot.models.registry import LOCK, MANIFEST, Registry, RegistryError
from bot.server import RunningServer
from tests.support import ORDER_A, ORDER_Q, get, post


def registry_with(tmp_path: Path, *versions: str) -> Registry:
    for version in versions:
        (tmp_path / "models" / version).mkdir(parents=True)
        (tmp_path / "models" / version / MANIFEST).write_text(json.dumps({"version": version}))
    return Registry(tmp_path)


def test_a_change_waits_for_the_writer_holding_the_lock(tmp_path: Path) -> None:
    registry = registry_with(tmp_path, "v0001", "v0002")
    registry.promote("v0001")
    with open(registry.root / LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another writer, between its read and its write
        writer = threading.Thread(target=registry.set_candidate, args=("v0002", 0.5))
        writer.start()
        writer.join(timeout=0.5)
        assert writer.is_alive() and registry.state().candidate is None
        registry.root.joinpath("state.json").write_text(  # what the other writer saves
            json.dumps({"current": "v0002", "candidate": None, "ab_share": 0.0, "history": ["v0001"]})
        )
    writer.join(timeout=5)
    state = registry.state()
    # The waiting change was made to the state the other writer left, not to the one before it.
    assert (state.current, state.candidate, state.ab_share, state.history) == ("v0002", "v0002", 0.5, ["v0001"])


def test_a_new_version_name_is_chosen_under_the_lock_and_never_takes_a_build_in_progress(tmp_path: Path) -> None:
    """The bot's first start builds the starter (`tuning bootstrap`) while a `tuning run` may build too."""
    registry = registry_with(tmp_path, "v0001")
    running, running_scratch = Registry(tmp_path).start_version()  # another builder, still at work
    (running_scratch / "loss.jsonl").write_text("{}")
    (registry.root / "v0009.partial").mkdir()  # left by a build that was killed: nobody holds it
    with open(registry.root / LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a writer, between its read and its write
        started: list[tuple[str, Path]] = []
        builder = threading.Thread(target=lambda: started.append(registry.start_version()))
        builder.start()
        builder.join(timeout=0.5)
        assert builder.is_alive() and not started
        registry_with(tmp_path, "v0003")  # what the writer registers meanwhile
    builder.join(timeout=5)
    [(version, scratch)] = started
    assert running == "v0002" and version == "v0004" and scratch == registry.root / "v0004.partial"
    assert (running_scratch / "loss.jsonl").exists() and not (registry.root / "v0009.partial").exists()
    registry.register(version, scratch, {"parent": "v0001"})
    assert registry.versions() == ["v0001", "v0003", "v0004"] and registry.start_version()[0] == "v0005"


def test_a_refused_change_leaves_the_state_as_it_was(tmp_path: Path) -> None:
    registry = registry_with(tmp_path, "v0001")
    registry.promote("v0001")
    before = registry.root.joinpath("state.json").read_text()
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback()
    assert registry.root.joinpath("state.json").read_text() == before


async def test_a_version_that_fails_to_load_is_reported_retried_and_the_last_good_one_serves(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "RETRY_LOAD_S", 0.5)
    registry = Registry(server.bot.settings.data_dir)
    version, scratch = registry.start_version()
    (scratch / "onnx").mkdir()
    (scratch / "onnx" / "genai_config.json").write_text("{}")  # a build that cannot load
    registry.register(version, scratch, {"parent": "v0001"})
    registry.promote(version)

    health = await healthy_when(server, lambda h: h["load_error"] is not None)
    assert health["model_version"] == "v0001" and health["status"] == "ok"
    status, reply = await post(server, "/chat", {"conversation_id": "c", "user_id": "u", "text": ORDER_Q})
    assert (status, reply["answer"], reply["model_version"]) == (200, ORDER_A, "v0001")

    broken = registry.onnx_dir(version)  # the operator repairs the build: the next try loads it
    shutil.rmtree(broken)
    shutil.copytree(registry.onnx_dir("v0001"), broken)
    health = await healthy_when(server, lambda h: h["model_version"] == version)
    assert health["load_error"] is None


async def healthy_when(server: RunningServer, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    for _ in range(200):
        status, health = await get(server, "/healthz")
        if check(health):
            return health
        await asyncio.sleep(0.05)
    raise AssertionError(f"/healthz never got there: {health}")
