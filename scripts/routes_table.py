"""Print the README's route/role table from the route declarations (so docs and code agree).

    .venv/bin/python scripts/routes_table.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from media.http_routes import registry_of  # noqa: E402
from server.app import create_app  # noqa: E402
from server.settings import Settings  # noqa: E402


def route_rows() -> list[str]:
    app = create_app(Settings(asr_preload=False))
    rows = ["| route | role | what |", "| --- | --- | --- |"]
    for spec in registry_of(app).specs:
        if spec.hidden or spec.method in ("OPTIONS", "HEAD"):
            continue
        roles = " or ".join(f"`{r.value}`" for r in spec.roles)
        extra = " (`?token=` too)" if spec.query_token else ""
        summary = spec.summary.replace("|", "\\|")
        rows.append(f"| `{spec.method} {spec.path}` | {roles}{extra} | {summary} |")
    return rows


if __name__ == "__main__":
    print("\n".join(route_rows()))
