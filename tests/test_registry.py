"""The model registry's state file, changed by several writers at once (every worker's admin API, the
tuning commands): each change is made under one lock, so none is lost."""

from __future__ import annotations

import fcntl
import json
import threading
from pathlib import Path

import pytest

from bot.models.registry import LOCK, MANIFEST, Registry, RegistryError


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


def test_a_refused_change_leaves_the_state_as_it_was(tmp_path: Path) -> None:
    registry = registry_with(tmp_path, "v0001")
    registry.promote("v0001")
    before = registry.root.joinpath("state.json").read_text()
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback()
    assert registry.root.joinpath("state.json").read_text() == before
