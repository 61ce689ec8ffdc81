"""The docs say what the code does, and hold together.

- The references generated from the code (docs/reference/routes.md, settings.md, metrics.md) are
  fresh: each equals what its script writes now. Every setting is in settings.md exactly once,
  every route the router answers is in routes.md, and params.md names every field of the params
  models.
- README.md stays an introduction (under 200 lines); every relative link in README.md,
  CHANGELOG.md, docker/README.md and docs/**/*.md reaches an existing file (and heading, when it
  names one); no doc or source points at a `shared/` folder outside the repository.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from pathlib import Path
from types import ModuleType

import pytest

from server.app import create_app
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"


def _script(name: str) -> ModuleType:
    """A script of scripts/ loaded as a module (they are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "docker" / "README.md", *sorted(DOCS.rglob("*.md"))]


# -- the generated references ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "script, output",
    [
        ("routes_table", "routes.md"),
        ("settings_table", "settings.md"),
        ("metrics_table", "metrics.md"),
    ],
)
def test_generated_reference_is_fresh(script, output):
    """Each generated file equals what its script writes now, and says which script writes it."""
    module = _script(script)
    path = REFERENCE / output
    assert path.exists(), f"{path.relative_to(ROOT)} is missing: run scripts/{script}.py"
    text = path.read_text()
    assert f"scripts/{script}.py" in text.splitlines()[0], "the file's first line names the script that writes it"
    assert text == module.render(), f"{path.relative_to(ROOT)} is stale: run scripts/{script}.py"


def test_every_setting_is_documented_once():
    """Every variable of every feature's settings model has exactly one row in settings.md."""
    table = _script("settings_table")
    models = table.load_models()
    assert len(models) >= 5
    text = (REFERENCE / "settings.md").read_text()
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", text, flags=re.MULTILINE)
    names = [name for _title, model in models for name in table.env_names(model)]
    missing = sorted(set(names) - set(rows))
    assert not missing, f"settings missing from docs/reference/settings.md: {missing}"
    twice = sorted({name for name in rows if rows.count(name) > 1})
    assert not twice, f"settings documented more than once in docs/reference/settings.md: {twice}"


def test_every_route_is_documented():
    """Every path the router answers appears in routes.md (path parameters compared by position)."""
    text = (REFERENCE / "routes.md").read_text()
    app = create_app(Settings(asr_preload=False))
    paths = {route.resource.canonical for route in app.router.routes() if route.resource is not None}
    missing = []
    for path in sorted(paths):
        literal = re.sub(r"\{[^}]+\}", "{", path).rstrip("/")
        pattern = re.escape(literal).replace(r"\{", r"\{[^}]+\}")
        if literal and not re.search(pattern, text):
            missing.append(path)
    assert not missing, f"routes missing from docs/reference/routes.md: {missing}"


def test_params_reference_names_every_params_field():
    """params.md is written by hand: it must still name every option the params models read."""
    from inference.asr.stage import CaptionParams
    from inference.vision.stage import VisionParams
    from media.overlay import OverlayOptions

    text = (REFERENCE / "params.md").read_text()

    def section(title: str) -> str:
        match = re.search(rf"^## `{title}`\n(.*?)(?=^## )", text, flags=re.MULTILINE | re.DOTALL)
        assert match, f"docs/reference/params.md has no `{title}` section"
        return match.group(1)

    overlay_keys = {"enabled", "clock"}  # the others are captions.burn_in / vision.burn_in
    overlay_fields = {f.name for f in dataclasses.fields(OverlayOptions)}
    assert overlay_keys <= overlay_fields
    expected = {
        "captions": set(CaptionParams.model_fields),
        "vision": set(VisionParams.model_fields) | {"burn_in"},  # read by the overlay (media/overlay.py)
        "overlay": overlay_keys,
    }
    missing = {title: sorted(k for k in keys if f"`{k}`" not in section(title)) for title, keys in expected.items()}
    assert not any(missing.values()), f"params missing from docs/reference/params.md: {missing}"


# -- the README and the links ---------------------------------------------------------------------


def test_readme_is_an_introduction():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines; move detail into docs/"


_FENCE = re.compile(r"^```.*?^```", flags=re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _links(text: str) -> list[str]:
    text = _INLINE_CODE.sub("", _FENCE.sub("", text))
    return _LINK.findall(text)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    anchors = set()
    for line in _FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))  # a link keeps its text
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_every_relative_link_resolves():
    broken = []
    for doc in _markdown_files():
        for target in _links(doc.read_text()):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.IGNORECASE):
                continue  # http:, https:, mailto: — not a file here
            file_part, _, anchor = target.partition("#")
            where = (doc.parent / file_part).resolve() if file_part else doc
            name = f"{doc.relative_to(ROOT)} → {target}"
            if not where.exists():
                broken.append(f"{name} (no such file)")
            elif not where.is_relative_to(ROOT):
                broken.append(f"{name} (outside the repository)")
            elif anchor and where.suffix == ".md" and anchor not in _anchors(where):
                broken.append(f"{name} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


# A `shared/` folder next to the checkout is not part of the repository: nothing may point at it.
# (The pattern is assembled from pieces so that this file does not match itself.)
_SHARED = re.compile(r"(?<![\w.-])(?:\.\./)+shared/|(?<![\w/.-])shared" + "/reference|/work/" + "shared")
_SOURCE_SUFFIXES = {".md", ".py", ".js", ".html", ".css", ".sh", ".toml", ".yml", ".yaml", ".txt", ".in"}
_SKIP_DIRS = {
    ".git",
    "node_modules",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "data",
    "shared",
    "out",
}


def _repository_files() -> list[Path]:
    files = []
    for folder, subfolders, names in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if d not in _SKIP_DIRS and not d.startswith(".venv")]
        files += [
            Path(folder) / name
            for name in names
            if Path(name).suffix in _SOURCE_SUFFIXES or name in ("Makefile", "Dockerfile")
        ]
    return files


def test_nothing_points_at_a_shared_folder_outside_the_repository():
    found = []
    for path in _repository_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if _SHARED.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, "references to a shared/ folder outside the repository:\n" + "\n".join(found)
