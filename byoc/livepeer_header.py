"""The `Livepeer` request header of BYOC jobs (as go-livepeer's BYOC gateway builds it).

Base64 of a JSON object `{"id", "request", "parameters", "capability", "capability_url", "sender",
"sig", "timeout_seconds"}`; `request` and `parameters` are usually JSON-encoded *strings*. The
orchestrator does not forward this header to workers, so a worker must never require it; when a
client calls the worker directly with one, it is decoded and honoured (`timeout_seconds`).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from httpapi.json_body import JSONBodyError, loads_limited

HEADER_NAME = "Livepeer"
# A header this large is not a BYOC job description; refuse before decoding.
MAX_HEADER_CHARS = 64 * 1024


class LivepeerHeaderError(ValueError):
    """The header is present but unusable (→ 400)."""


@dataclass
class LivepeerHeader:
    capability: str | None = None
    request: Any = None  # decoded from its JSON string when it is one
    parameters: Any = None
    timeout_seconds: float | None = None
    id: str | None = None
    sender: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """What a handler may echo back (never the signature)."""
        return {
            "id": self.id,
            "capability": self.capability,
            "request": self.request,
            "parameters": self.parameters,
            "timeout_seconds": self.timeout_seconds,
            "sender": self.sender,
        }


def _b64decode(text: str) -> bytes:
    text = text.strip()
    padded = text + "=" * (-len(text) % 4)  # tolerate stripped padding
    for altchars in (None, b"-_"):  # standard alphabet (Go's StdEncoding), then URL-safe
        try:
            return base64.b64decode(padded.encode("ascii"), altchars=altchars, validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            continue
    raise LivepeerHeaderError("Livepeer header is not valid base64")


def _maybe_json(value: Any, name: str) -> Any:
    """`request`/`parameters` arrive as JSON-encoded strings; decode them, keep other values."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return None
    try:
        return loads_limited(text)
    except JSONBodyError:
        raise LivepeerHeaderError(f"Livepeer header field '{name}' is a string but not JSON") from None


def parse_livepeer_header(value: str | None) -> LivepeerHeader | None:
    """None when the header is absent; raises LivepeerHeaderError when it is malformed."""
    if value is None or not value.strip():
        return None
    if len(value) > MAX_HEADER_CHARS:
        raise LivepeerHeaderError("Livepeer header is too large")
    decoded = _b64decode(value)
    try:
        payload = loads_limited(decoded)
    except JSONBodyError:
        raise LivepeerHeaderError("Livepeer header does not decode to JSON") from None
    if not isinstance(payload, dict):
        raise LivepeerHeaderError("Livepeer header must decode to a JSON object")

    timeout = payload.get("timeout_seconds")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise LivepeerHeaderError("Livepeer header timeout_seconds must be a positive number")
        timeout = float(timeout)
    capability = payload.get("capability")
    if capability is not None and not isinstance(capability, str):
        raise LivepeerHeaderError("Livepeer header capability must be a string")
    return LivepeerHeader(
        capability=capability or None,
        request=_maybe_json(payload.get("request"), "request"),
        parameters=_maybe_json(payload.get("parameters"), "parameters"),
        timeout_seconds=timeout,
        id=payload.get("id") if isinstance(payload.get("id"), str) else None,
        sender=payload.get("sender") if isinstance(payload.get("sender"), str) else None,
        raw=payload,
    )


def encode_livepeer_header(payload: dict[str, Any]) -> str:
    """The header value for `payload` (what a gateway/client sends); JSON-encodes request/parameters."""
    body = dict(payload)
    for key in ("request", "parameters"):
        if key in body and not isinstance(body[key], str):
            body[key] = json.dumps(body[key])
    return base64.b64encode(json.dumps(body).encode()).decode()
