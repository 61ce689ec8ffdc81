"""One `POST /stream/start` for two shapes: the native one and the Livepeer gateway's.

- native (ComfyStream-BYOC style): `{"subscribe_url", "publish_url" | "stream_url", "params"?,
  "width"?, "height"?, "prompts"?}` → a server-issued manifest id;
- Livepeer (BYOC gateway / ai-runner): header `X-Stream-Id`, body `gateway_request_id`,
  `control_url`, `events_url`, `data_url`, settings inside `params` → manifest id = stream id.

Both normalise to one `StreamSpec` (media/spec.py).
"""

from __future__ import annotations

import re
import secrets
import uuid
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from httpapi.json_body import JSONBodyError, loads_limited
from httpapi.redact import redact_url
from media.spec import StreamSpec

MANIFEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# a caller's own RTMP stream key: long enough not to be guessed, safe in a URL path
STREAM_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
URL_FIELDS = ("subscribe_url", "publish_url", "stream_url", "control_url", "events_url", "data_url")


def check_http_url(value: str | None, name: str) -> str | None:
    if value is None or value == "":
        return None
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"{name} must be an http(s) URL, got {redact_url(value)!r}")
    return value


class RtmpSourceRequest(BaseModel):
    """`"source": {"type": "rtmp"}`: the input is an RTMP publisher (OBS, FFmpeg) with this stream's key."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["rtmp"]
    stream_key: str | None = Field(None, description="your own key (16-128 of A-Z a-z 0-9 _ -); default: a random one")

    @field_validator("stream_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and not STREAM_KEY_RE.fullmatch(value):
            raise ValueError("stream_key must be 16-128 characters of letters, digits, '_' or '-'")
        return value


class StartRequest(BaseModel):
    """The union of both shapes; unknown top-level keys are ignored (as pytrickle does)."""

    model_config = ConfigDict(extra="ignore")

    subscribe_url: str | None = None
    publish_url: str | None = None
    stream_url: str | None = None  # ComfyStream BYOC name for the output URL
    control_url: str | None = None
    events_url: str | None = None
    data_url: str | None = None
    gateway_request_id: str | None = None
    manifest_id: str | None = None
    stream_id: str | None = None
    model_id: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    width: int | None = Field(None, ge=16, le=4096)
    height: int | None = Field(None, ge=16, le=4096)
    prompts: Any = None
    source: RtmpSourceRequest | None = None  # none: the input is the trickle subscribe_url

    @field_validator("params", mode="before")
    @classmethod
    def _params_object(cls, value: Any) -> Any:
        # the BYOC gateway API carries params as a JSON-encoded string
        if value is None:
            return {}
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return {}
            try:
                value = loads_limited(value)
            except JSONBodyError as exc:
                raise ValueError(f"params is a string but not acceptable JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError("params must be an object")
        return value

    @model_validator(mode="after")
    def _urls(self) -> StartRequest:
        for name in URL_FIELDS:
            setattr(self, name, check_http_url(getattr(self, name), name))
        return self


def is_livepeer(body: dict[str, Any], stream_id_header: str | None) -> bool:
    return bool(
        stream_id_header
        or body.get("gateway_request_id")
        or any(body.get(k) for k in ("control_url", "events_url", "data_url"))
    )


def new_manifest_id() -> str:
    return "sl-" + uuid.uuid4().hex[:16]


def parse_start(body: dict[str, Any], stream_id_header: str | None = None) -> StreamSpec:
    """Validate and normalise a start body; raises ValidationError or ValueError with a clear message."""
    return spec_from_request(StartRequest.model_validate(body), stream_id_header)


def spec_from_request(req: StartRequest, stream_id_header: str | None = None) -> StreamSpec:
    """Normalise a validated start body (the access middleware validated it); ValueError if incoherent."""
    livepeer = is_livepeer(req.model_dump(include={"gateway_request_id", *URL_FIELDS}), stream_id_header)
    params = dict(req.params)
    # native keys may sit at the top level (native) or inside params (Livepeer)
    for key in ("width", "height", "prompts"):
        value = getattr(req, key)
        if value is not None and key not in params:
            params[key] = value
    for key in ("width", "height"):
        if key in params:
            value = params[key]
            if not isinstance(value, int) or isinstance(value, bool) or not 16 <= value <= 4096:
                raise ValueError(f"params.{key} must be an integer between 16 and 4096")
    if ("width" in params) != ("height" in params):
        raise ValueError("width and height must be given together")
    publish_url = req.publish_url or req.stream_url
    if livepeer:
        manifest_id = (
            stream_id_header or req.gateway_request_id or req.manifest_id or req.stream_id or new_manifest_id()
        )
    else:
        if req.source is not None and req.subscribe_url:
            raise ValueError("give either subscribe_url or source, not both")
        if not req.subscribe_url and req.source is None:
            raise ValueError("subscribe_url: field required (the trickle URL the input is read from)")
        manifest_id = req.manifest_id or new_manifest_id()
    if not MANIFEST_ID_RE.fullmatch(manifest_id):
        raise ValueError("manifest id must be 1-128 characters of letters, digits, '.', '_', ':' or '-'")
    return StreamSpec(
        manifest_id=manifest_id,
        mode="livepeer" if livepeer else "native",
        subscribe_url=req.subscribe_url,
        publish_url=publish_url,
        control_url=req.control_url,
        events_url=req.events_url,
        data_url=req.data_url,
        params=params,
        model_id=req.model_id,
        source_type=req.source.type if req.source is not None else "trickle",
        stream_key=(req.source.stream_key or new_stream_key()) if req.source is not None else None,
    )


def new_stream_key() -> str:
    return secrets.token_urlsafe(24)


__all__ = ["StartRequest", "parse_start", "ValidationError", "new_manifest_id", "check_http_url"]
