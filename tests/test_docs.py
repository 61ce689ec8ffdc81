"""The README documents every setting and every route the server has."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from server.app import create_app
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _settings_table_module():
    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "scripts" / "settings_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_setting_is_documented():
    """Every variable of every feature's settings model, with the generated tables up to date."""
    table = _settings_table_module()
    models = table.load_models()
    assert len(models) >= 5
    missing = [name for _title, model in models for name in table.env_names(model) if f"`{name}`" not in README]
    assert not missing, f"settings missing from README: {missing}"
    assert table.tables() in README, "README's settings tables are stale: rerun scripts/settings_table.py"


def test_every_route_is_documented():
    app = create_app(Settings(asr_preload=False))
    paths = {route.resource.canonical for route in app.router.routes() if route.resource is not None}
    missing = []
    for path in sorted(paths):
        # README writes path parameters by name; compare on the literal parts
        literal = re.sub(r"\{[^}]+\}", "{", path).rstrip("/")
        pattern = re.escape(literal).replace(r"\{", r"\{[^}]+\}")
        if literal and not re.search(pattern, README):
            missing.append(path)
    assert not missing, f"routes missing from README: {missing}"


def test_the_route_role_table_matches_the_declarations():
    """README "Every route and its role" is generated from the route declarations."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    table = subprocess.run([sys.executable, str(root / "scripts" / "routes_table.py")], capture_output=True,
                           text=True, check=True, cwd=root).stdout.strip()
    assert table in README, "README's route table is stale: rerun scripts/routes_table.py"
