"""Print the README's settings tables from the settings models (so docs and code agree).

    .venv/bin/python scripts/settings_table.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import BaseModel  # noqa: E402

from server.settings import Settings  # noqa: E402

ENV_PREFIX = re.compile(r"^([A-Z][A-Z0-9_]+)\b:?\s*")


def default_of(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    if value is None or value == "":
        return "unset"
    if hasattr(value, "get_secret_value"):
        return "unset"
    return f"`{value}`"


def server_rows() -> list[str]:
    rows = []
    for name, field in Settings.model_fields.items():
        desc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name.upper()}` | {default_of(field)} | {desc} |")
    return rows


def described_rows(model: type[BaseModel]) -> list[str]:
    """Rows for models whose descriptions start with their env var name."""
    rows = []
    for _name, field in model.model_fields.items():
        match = ENV_PREFIX.match(field.description or "")
        if not match:
            continue
        desc = (field.description or "")[match.end():].replace("|", "\\|") or "-"
        rows.append(f"| `{match.group(1)}` | {default_of(field)} | {desc} |")
    return rows


if __name__ == "__main__":
    header = ["| variable | default | meaning |", "| --- | --- | --- |"]
    print("\n".join(header + server_rows()))
    from inference.translate.service import TranslateSettings

    print()
    print("\n".join(header + described_rows(TranslateSettings)))
    try:
        from inference.asr.model import AsrSettings

        print()
        print("\n".join(header + described_rows(AsrSettings)))
    except ImportError:
        pass
