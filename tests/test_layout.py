"""The code's layout rules: no import cycle among the project's modules (module-level imports,
`if TYPE_CHECKING:` ones included: a cycle through a type hint is still a cycle), settings read as
typed attributes of the one settings tree (server/settings.py), never `getattr(settings, ..., default)`
with a second copy of the default, and the environment read only by the settings models."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("server", "media", "httpapi", "trickle", "byoc", "inference", "analysis", "rtmp")

# library and process environment, not settings: which GPU the CUDA runtime may see, and the
# `streamlens analyze --server` client's default token (a client option, not a server setting)
ENVIRON_ALLOWED = {"CUDA_VISIBLE_DEVICES", "API_TOKEN"}


def module_files(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _module_level(body: list[ast.stmt]):
    """Statements run at import: the module body and the bodies of its top-level if/try blocks."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            yield from _module_level(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            yield from _module_level(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                yield from _module_level(handler.body)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    out = set()
    for node in _module_level(ast.parse(path.read_text()).body):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        out.update(t for t in targets if t in modules and t != name)
    return out


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    modules = module_files(root, packages)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, f"import cycles among the project's modules: {cycles}"


def test_cycle_finder_sees_a_cycle(tmp_path: Path) -> None:
    """The check itself: two modules importing each other (one only for a type hint) are a cycle."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import B\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\nB = 1\n")
    (package / "c.py").write_text("def late():\n    from pkg import a\n")  # a function's import: not module level
    assert find_cycles(import_graph(tmp_path, ("pkg",))) == [["pkg.a", "pkg.b"]]


GETATTR_SETTINGS = re.compile(r"getattr\(\s*(self\.settings|settings|(request\.)?app\[\"settings\"\])\s*,")
ENVIRON_READ = re.compile(r"os\.environ(?:\.get\(|\[)\s*[\"']([A-Z0-9_]+)[\"']|os\.getenv\(\s*[\"']([A-Z0-9_]+)[\"']")


def test_settings_are_typed_attributes() -> None:
    """No `getattr(settings, ...)`: a field is `settings.x` (its default lives only in server/settings.py)."""
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in module_files().values()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if GETATTR_SETTINGS.search(line)
    ]
    assert not found, f"getattr on settings (use the typed attribute): {found}"


def test_environment_is_read_by_the_settings_models_only() -> None:
    found = []
    for path in module_files().values():
        text = path.read_text()
        for number, line in enumerate(text.splitlines(), 1):
            if "os.environ" not in line and "os.getenv" not in line:
                continue
            names = {a or b for a, b in ENVIRON_READ.findall(line)}
            if not names or names - ENVIRON_ALLOWED:
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, f"environment read outside the settings models: {found}"
