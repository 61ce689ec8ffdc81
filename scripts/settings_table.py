"""Print the README's settings tables from the settings models (so docs and code agree).

    .venv/bin/python scripts/settings_table.py

Every feature has one pydantic-settings model with its env prefix; a variable's name is its
alias when it declares one (e.g. `VISION_BACKEND`), else prefix + field name.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import AliasChoices  # noqa: E402
from pydantic_settings import BaseSettings  # noqa: E402

# (README heading, "module:Model"), in README order
MODELS = [
    ("Server, media, WebRTC and Livepeer (`server/settings.py`)", "server.settings:Settings"),
    ("Translation (`inference/translate`)", "inference.translate.service:TranslateSettings"),
    ("Speech recognition (`inference/asr`)", "inference.asr.model:AsrSettings"),
    ("Vision (`inference/vision`)", "inference.vision.stage:VisionSettings"),
    ("GPU memory (`inference/gpu.py`)", "inference.gpu:GpuSettings"),
    ("Recorded-video analysis (`analysis/`)", "analysis.settings:AnalysisSettings"),
]
LEADING_NAME = re.compile(r"^([A-Z][A-Z0-9_]+)\b:?\s*")


def load_models() -> list[tuple[str, type[BaseSettings]]]:
    found = []
    for title, where in MODELS:
        module, _, name = where.partition(":")
        try:
            found.append((title, getattr(importlib.import_module(module), name)))
        except (ImportError, AttributeError):
            continue  # a feature not in this checkout
    return found


def env_name(model: type[BaseSettings], field_name: str) -> str:
    field = model.model_fields[field_name]
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        for choice in alias.choices:
            if isinstance(choice, str) and choice.isupper():
                return choice
    elif isinstance(alias, str):
        return alias.upper()
    if field.alias:
        return field.alias.upper()
    return (model.model_config.get("env_prefix") or "").upper() + field_name.upper()


def env_names(model: type[BaseSettings]) -> list[str]:
    return [env_name(model, name) for name in model.model_fields]


def default_of(field) -> str:
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is None or value == "" or hasattr(value, "get_secret_value"):
        return "unset"
    return f"`{value}`"


def rows(model: type[BaseSettings]) -> list[str]:
    out = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in model.model_fields.items():
        desc = LEADING_NAME.sub("", field.description or "", count=1) or "-"
        out.append(f"| `{env_name(model, name)}` | {default_of(field)} | {desc.replace('|', chr(92) + '|')} |")
    return out


def tables() -> str:
    parts = []
    for title, model in load_models():
        parts.append(f"### {title}\n\n" + "\n".join(rows(model)))
    return "\n\n".join(parts)


if __name__ == "__main__":
    print(tables())
