"""Secrets out of caller URLs before they reach a log line or an API answer.

A URL a caller hands the server (trickle subscribe/publish URLs, a video URL) may carry
credentials (`user:pass@`) or a signed query (`?token=`, `?sig=`, `X-Amz-Signature=`). The server
keeps the real URL to connect with; whatever shows one to a person goes through this module:
`redact_url` for one URL, `redact_text` for free text that may quote URLs or a request line (log
messages, error strings, aiohttp's access log), `redact_payload` for a JSON answer.

A query (or fragment) parameter is secret when its name, percent-decoded and lower-cased, is in
`SECRET_NAMES` or contains one of `SECRET_NAME_PARTS`: `?%74oken=` is `token` to the server that
reads it, so it is `token` here too. Its value becomes `[redacted]`; credentials are dropped.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

REDACTED = "[redacted]"
SECRET_NAMES = frozenset({"sig", "key", "auth", "pass", "pwd", "jwt", "code", "session", "sessionid", "otp"})
SECRET_NAME_PARTS = (
    "token",
    "secret",
    "signature",
    "password",
    "passwd",
    "credential",
    "apikey",
    "api_key",
    "api-key",
    "auth",
)
# the names a `key`-like suffix makes secret: accesskey, x-api-key, sharedKey, private_key ...
SECRET_NAME_SUFFIXES = ("key",)
# percent-decoding rounds for a parameter name (`%2574oken` → `%74oken` → `token`)
MAX_DECODE_ROUNDS = 3

# `scheme://user:pass@` in free text: the userinfo is dropped
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/?#@\"'<>\[\]]*@")
# `name=value` after `?`, `&`, `;` or `#`; the value ends at a separator, a quote or whitespace
# an RTMP URL's path after its application is the stream key (rtmp://host/app/KEY): a credential
RTMP_SCHEMES = frozenset({"rtmp", "rtmps", "rtmpt", "rtmpe", "rtmpte", "rtmpts"})
_RTMP_KEY = re.compile(r"(?i)\b(rtmp[a-z]{0,2}://[^\s/?#\"'<>]+/[^\s/?#\"'<>]+/)[^\s?#\"'<>]+")
_PARAM = re.compile(r"([?&;#])([^=&;#\s\"'<>]+)=([^&;#\s\"'<>]*)")


def _decoded_name(name: str) -> str:
    for _ in range(MAX_DECODE_ROUNDS):
        decoded = unquote_plus(name)
        if decoded == name:
            break
        name = decoded
    return name.strip().lower()


def is_secret_name(name: str) -> bool:
    """True when a query parameter called `name` (raw, possibly percent-encoded) may hold a secret."""
    name = _decoded_name(name)
    return (
        name in SECRET_NAMES or any(part in name for part in SECRET_NAME_PARTS) or name.endswith(SECRET_NAME_SUFFIXES)
    )


def _redact_param(match: re.Match[str]) -> str:
    separator, name, value = match.groups()
    if value and is_secret_name(name):
        return f"{separator}{name}={REDACTED}"
    return match.group(0)


def _redact_params(text: str) -> str:
    """A query or fragment (without its leading `?`/`#`) with secret values replaced."""
    if not text:
        return text
    return _PARAM.sub(_redact_param, "&" + text)[1:]


def redact_url(url: str) -> str:
    """`url` without credentials and with secret query/fragment values replaced by `[redacted]`."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an invalid IPv6 literal: redact it as text
        return redact_text(url)
    netloc = parts.netloc.rpartition("@")[2]
    path = parts.path
    if parts.scheme.lower() in RTMP_SCHEMES:
        app, _, key = path.lstrip("/").partition("/")
        path = f"/{app}/{REDACTED}" if key else path
    return urlunsplit((parts.scheme, netloc, path, _redact_params(parts.query), _redact_params(parts.fragment)))


def redact_text(text: str) -> str:
    """Free text with every URL's credentials dropped and every secret parameter's value replaced."""
    if "@" in text:
        text = _USERINFO.sub(r"\1", text)
    if "=" in text:
        text = _PARAM.sub(_redact_param, text)
    if "rtmp" in text.lower():
        text = _RTMP_KEY.sub(rf"\1{REDACTED}", text)
    return text


def redact_payload(value: Any) -> Any:
    """A JSON-ready value with `redact_text` applied to every string that quotes a URL (a copy;
    keys and other values, such as a caller's prompt text, unchanged)."""
    if isinstance(value, str):
        return redact_text(value) if "://" in value else value
    if isinstance(value, dict):
        return {key: redact_payload(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_payload(item) for item in value]
    return value
