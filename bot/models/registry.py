"""Model registry: one folder per version under `<data dir>/models`, and `state.json` saying which
version serves (current), which is on trial (candidate, with its A/B share) and what came before.

A version folder appears under its final name only when complete (built as `.partial`, then renamed),
and state.json is replaced atomically, so an interrupted run never leaves a half-registered version.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bot.shared import publish_registry_change

STATE = "state.json"
LOCK = "state.lock"  # held while state.json is read, changed and written (see Registry._changing)
MANIFEST = "manifest.json"
VERSION_NAME = re.compile(r"v\d{4,}")  # what start_version names: never a path
# Inside a version folder: the merged PyTorch weights (what the next tune starts from) and their ONNX build.
HF_DIR = "hf"
ONNX_DIR = "onnx"


class RegistryError(Exception):
    pass


@dataclass
class State:
    current: str | None = None
    candidate: str | None = None
    ab_share: float = 0.0
    ab_started_at: str | None = None  # when the running A/B test started (UTC, ISO): `tuning ab-report` counts from it
    history: list[str] = field(default_factory=list)  # earlier production versions, newest last


class Registry:
    def __init__(self, data_dir: Path, redis_url: str = "") -> None:
        """With `redis_url` (BOT_REDIS_URL), every change of the state is also announced to the workers."""
        self.root = Path(data_dir) / "models"
        self.redis_url = redis_url

    # --- reading ------------------------------------------------------------------------------

    def state(self) -> State:
        path = self.root / STATE
        if not path.exists():
            return State()
        return State(**json.loads(path.read_text()))

    def state_stamp(self) -> float:
        """Changes whenever the state changes: cheap to poll."""
        path = self.root / STATE
        return path.stat().st_mtime_ns if path.exists() else 0

    def versions(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and (p / MANIFEST).exists())

    def path(self, version: str) -> Path:
        if not VERSION_NAME.fullmatch(version):
            raise RegistryError(f"not a version name: {version!r} (versions are named v0001, v0002, ...)")
        folder = self.root / version
        if not (folder / MANIFEST).exists():
            raise RegistryError(
                f"no registered model version {version!r} (have: {', '.join(self.versions()) or 'none'})"
            )
        return folder

    def hf_dir(self, version: str) -> Path:
        return self.path(version) / HF_DIR

    def onnx_dir(self, version: str) -> Path:
        return self.path(version) / ONNX_DIR

    def manifest(self, version: str) -> dict[str, Any]:
        return json.loads((self.path(version) / MANIFEST).read_text())

    def resolve(self, name: str) -> str:
        """`current`, `candidate` or a version name -> a version name."""
        state = self.state()
        version = {"current": state.current, "candidate": state.candidate}.get(name, name)
        if not version:
            raise RegistryError(f"there is no {name} model version yet: run `python -m tuning bootstrap`")
        self.path(version)
        return version

    # --- writing ------------------------------------------------------------------------------

    def start_version(self) -> tuple[str, Path]:
        """A fresh version name and the scratch folder to build it in."""
        self.root.mkdir(parents=True, exist_ok=True)
        numbers = [int(v[1:]) for v in self.versions() if v[1:].isdigit()]
        version = f"v{max(numbers, default=0) + 1:04d}"
        scratch = self.root / f"{version}.partial"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        return version, scratch

    def register(self, version: str, scratch: Path, manifest: dict[str, Any]) -> Path:
        manifest = {"version": version, "created_at": datetime.now(timezone.utc).isoformat(), **manifest}
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        final = self.root / version
        os.replace(scratch, final)
        return final

    def update_manifest(self, version: str, **fields: Any) -> None:
        path = self.path(version) / MANIFEST
        manifest = json.loads(path.read_text()) | fields
        _atomic_write(path, json.dumps(manifest, indent=2, ensure_ascii=False))

    def promote(self, version: str) -> State:
        self.path(version)
        with self._changing() as state:
            if state.current and state.current != version:
                state.history.append(state.current)
            state.current = version
            if state.candidate == version:
                state.candidate, state.ab_share, state.ab_started_at = None, 0.0, None
        return state

    def rollback(self) -> State:
        with self._changing() as state:
            if not state.history:
                raise RegistryError("nothing to roll back to: no earlier production version")
            state.current = state.history.pop()
        return state

    def set_candidate(self, version: str | None, ab_share: float = 0.0) -> State:
        if version is not None:
            self.path(version)
        if not 0.0 <= ab_share <= 1.0:
            raise RegistryError(f"A/B share must be between 0 and 1, got {ab_share}")
        with self._changing() as state:
            running = state.candidate == version and state.ab_share > 0 and state.ab_started_at is not None
            if not (version and ab_share > 0):
                state.ab_started_at = None
            elif not running:  # a new test; a changed share continues the running one
                state.ab_started_at = datetime.now(timezone.utc).isoformat()
            state.candidate, state.ab_share = version, ab_share if version else 0.0
        return state

    @contextmanager
    def _changing(self) -> Iterator[State]:
        """The state to change, saved at the end unless the block raises. Writers (the admin API of
        every worker, the tuning commands) take turns on a file lock, so none overwrites another's
        change with a state it read before that change."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # held for a read and a write: milliseconds
            state = self.state()
            yield state
            _atomic_write(self.root / STATE, json.dumps(state.__dict__, indent=2))
        if self.redis_url:  # the workers would find it by polling; a notice has them swap at once
            publish_registry_change(self.redis_url, self.root.parent)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
