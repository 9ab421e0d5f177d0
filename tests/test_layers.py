"""The layers point one way, read from the source with `ast`: the serving core (`bot/`) never imports
`tuning`, and only the process entry point (`bot/__main__.py`) knows about `adapters`. Adapters see
the bot through `bot.service` and never the store; tuning uses other packages' public names only."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import ROOT

PACKAGES = ("bot", "adapters", "tuning")
ENTRY_POINT = "bot/__main__.py"
# What a channel may import from the core: the narrow service, the neutral message and the settings.
ADAPTER_MAY_USE = {"bot.service", "bot.message", "bot.config", "bot.feedback", "bot.store", "bot.server", "bot.app"}


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every import in the file, wherever it stands (lazy ones too)."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def sources() -> dict[str, list[tuple[str, list[str]]]]:
    return {
        str(path.relative_to(ROOT)): imports(path) for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


def top(module: str) -> str:
    return module.split(".")[0]


def test_the_serving_core_never_imports_tuning() -> None:
    """Not even the entry point: it starts the trainer as a process (`python -m tuning bootstrap`)."""
    wrong = [
        (file, module)
        for file, found in sources().items()
        if file.startswith("bot/")
        for module, _ in found
        if top(module) == "tuning"
    ]
    assert wrong == []


def test_only_the_entry_point_knows_the_adapters() -> None:
    wrong = [
        (file, module)
        for file, found in sources().items()
        if not file.startswith("adapters/") and file != ENTRY_POINT
        for module, _ in found
        if top(module) == "adapters"
    ]
    assert wrong == []


def test_adapters_never_touch_the_store_or_the_pipeline() -> None:
    """A channel gets a `ChannelService`; it may name the stored turn's type, never open the store."""
    wrong = []
    for file, found in sources().items():
        if not file.startswith("adapters/"):
            continue
        for module, names in found:
            if top(module) == "bot" and module not in ADAPTER_MAY_USE:
                wrong.append((file, module))
            if module == "bot.store" and set(names) - {"StoredTurn"}:
                wrong.append((file, f"{module}: {names}"))
            if module == "bot.app" and file != "adapters/__init__.py":  # only the registry builds services
                wrong.append((file, module))
    assert wrong == []
    for path in (ROOT / "adapters").glob("*.py"):
        assert ".store" not in path.read_text(encoding="utf-8").replace("bot.store", ""), path


def test_tuning_uses_public_names_only() -> None:
    wrong = [
        (file, module, name)
        for file, found in sources().items()
        if file.startswith("tuning/")
        for module, names in found
        if top(module) in PACKAGES
        for name in names
        if name.startswith("_")
    ]
    assert wrong == []


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    """The walk finds lazy imports inside functions too, so the tests above can fail."""
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from tuning.bootstrap import bootstrap\n    import adapters.slack\n")
    assert [module for module, _ in imports(source)] == ["tuning.bootstrap", "adapters.slack"]
