"""The README documents every setting and every route the server has."""

from __future__ import annotations

import re
from pathlib import Path

from inference.asr.model import AsrSettings
from inference.translate.service import TranslateSettings
from server.app import create_app
from server.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
ENV = re.compile(r"^([A-Z][A-Z0-9_]+)\b")


def test_every_setting_is_documented():
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in README]
    for model in (TranslateSettings, AsrSettings):
        for field in model.model_fields.values():
            match = ENV.match(field.description or "")
            if match and f"`{match.group(1)}`" not in README:
                missing.append(match.group(1))
    for name in ("VISION_BACKEND", "VISION_VLM_ENDPOINTS", "VISION_TENSORRT_ENGINE", "GPU_MIN_FREE_MB"):
        if f"`{name}`" not in README:
            missing.append(name)
    assert not missing, f"settings missing from README: {missing}"


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
