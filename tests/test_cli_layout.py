"""The CLI package has one module per command group and no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import peercrypt.cli

PACKAGE = Path(peercrypt.cli.__file__).parent
# The fast path and what it shares with the click commands (no click in them).
LIGHT = {"fast", "follow", "send_report", "status_view", "echo", "progress"}


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The sibling modules of peercrypt.cli that ``path`` imports (at any depth)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "peercrypt.cli":
                found |= {alias.name for alias in node.names if alias.name in modules}
            elif node.module.startswith("peercrypt.cli."):
                found.add(node.module.removeprefix("peercrypt.cli.").split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("peercrypt.cli."):
                    found.add(alias.name.removeprefix("peercrypt.cli.").split(".")[0])
    return found


def _graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return {m: _imports(PACKAGE / f"{m}.py", modules) for m in modules}


def test_no_import_cycle() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for dep in sorted(graph[module]):
            visit(dep, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())


def test_only_app_assembles_the_group() -> None:
    graph = _graph()
    importers = {m for m, deps in graph.items() if "app" in deps}
    assert importers == set(), f"{importers} import the assembled group"
    # (runner: the entry point's click-only helpers, loaded before any command)
    assert graph["common"] <= LIGHT | {"runner"}, "common must not depend on a command group"


def test_the_fast_path_imports_no_command_group() -> None:
    """peercrypt/cli/fast.py runs `status` and `send` without click: what it
    imports of the package is light too."""
    graph = _graph()
    for module in LIGHT:
        assert graph[module] <= LIGHT, module
