"""The depth-limited JSON parser shared by every route group (server, byoc, trickle)."""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "DEFAULT_MAX_JSON_DEPTH",
    "JSONBodyError",
    "json_depth_ok",
    "loads_limited",
]

DEFAULT_MAX_JSON_DEPTH = 32


class JSONBodyError(ValueError):
    """A body that is not acceptable JSON (invalid, or nested too deeply) → 400."""


def json_depth_ok(value: Any, limit: int) -> bool:
    """Iterative, so a hostile body cannot exhaust the stack here either."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return True


def loads_limited(raw: bytes | str, max_depth: int = DEFAULT_MAX_JSON_DEPTH, max_bytes: int | None = None) -> Any:
    """`raw` as JSON; `JSONBodyError` naming what is wrong (too large, invalid, too deeply nested).

    The one parser for every JSON a caller sends: bodies, JSON-encoded strings inside them
    (`params`), query parameters, form fields, headers and channel messages. `max_bytes` caps
    input that nothing else bounds (bodies, query strings and messages already have their limits);
    it counts `len(raw)`: bytes, or the characters of a str.
    """
    if max_bytes is not None and len(raw) > max_bytes:
        raise JSONBodyError(f"JSON larger than {max_bytes} bytes")
    try:
        value = json.loads(raw)
    except RecursionError:
        # the C decoder recurses per nesting level: a deep array hits the interpreter's limit
        raise JSONBodyError(f"JSON nested too deeply (at most {max_depth} levels)") from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError (bytes not UTF-8/16/32)
        raise JSONBodyError(f"invalid JSON: {exc}") from None
    if not json_depth_ok(value, max_depth):
        raise JSONBodyError(f"JSON nested too deeply (at most {max_depth} levels)")
    return value
