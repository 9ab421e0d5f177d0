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
LOCK = "state.lock"  # held while state.json is read, changed and written, or a version name chosen
PARTIAL = ".partial"  # a version folder being built: `v0007.partial`, renamed to `v0007` when complete
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
        self._building: dict[str, int] = {}  # version -> the open, locked scratch folder (start_version)

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

    def line(self, version: str | None) -> list[str]:
        """`version` and the registered versions it was tuned from (`tuned_from`), newest first; a hub model
        or a folder (`tuning run --base`) ends the line, and the first version's `tuned_from` names it."""
        line: list[str] = []
        while version in self.versions():
            line.append(str(version))
            version = self.manifest(str(version)).get("tuned_from")
        return line

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
        """A fresh version name and the scratch folder to build it in, chosen under the writers' lock:
        two builders at once (the bot's first-start starter and a `tuning run`) get different names. The
        scratch folder stays locked by this process until `register`; an unlocked one was left by a
        killed build and is removed."""
        with self._lock():
            for left in self.root.glob(f"v*{PARTIAL}"):
                if not _building(left):
                    shutil.rmtree(left, ignore_errors=True)
            taken = [p.name.removesuffix(PARTIAL) for p in self.root.iterdir() if p.is_dir()]
            numbers = [int(name[1:]) for name in taken if VERSION_NAME.fullmatch(name)]
            version = f"v{max(numbers, default=0) + 1:04d}"
            scratch = self.root / f"{version}{PARTIAL}"
            scratch.mkdir()
            handle = os.open(scratch, os.O_RDONLY)
            fcntl.flock(handle, fcntl.LOCK_EX)  # goes with the process, also when it is killed
            self._building[version] = handle
        return version, scratch

    def register(self, version: str, scratch: Path, manifest: dict[str, Any]) -> Path:
        manifest = {"version": version, "created_at": datetime.now(timezone.utc).isoformat(), **manifest}
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        final = self.root / version
        os.replace(scratch, final)
        handle = self._building.pop(version, None)
        if handle is not None:
            os.close(handle)
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
        with self._lock():
            state = self.state()
            yield state
            _atomic_write(self.root / STATE, json.dumps(state.__dict__, indent=2))
        if self.redis_url:  # the workers would find it by polling; a notice has them swap at once
            publish_registry_change(self.redis_url, self.root.parent)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """The writers' lock, held for milliseconds: a read of the registry and a write."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


def _building(scratch: Path) -> bool:
    """Whether a live process builds in this scratch folder (holds its lock, see `start_version`)."""
    try:
        handle = os.open(scratch, os.O_RDONLY)
    except FileNotFoundError:  # registered meanwhile (renamed)
        return True
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(handle)  # also lets go of the lock just taken
    return False


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
