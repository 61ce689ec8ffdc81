"""The command line every docs/reference generator shares: write the file, `--check` it is fresh,
or `--stdout` the table alone."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(
    description: str,
    output: Path,
    render: Callable[[], str],
    table: Callable[[], str],
    script: str,
    argv: list[str] | None = None,
) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    parser.add_argument("--stdout", action="store_true", help="print the table instead of writing the file")
    args = parser.parse_args(argv)
    if args.stdout:
        print(table())
        return 0
    text = render()
    if args.check:
        fresh = output.exists() and output.read_text() == text
        if not fresh:
            print(f"{output.relative_to(ROOT)} is stale: run scripts/{script}", file=sys.stderr)
        return 0 if fresh else 1
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    return 0
