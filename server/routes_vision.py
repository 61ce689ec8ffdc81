"""`POST /vision/describe`: tags or a description for one still image, from any vision backend.

Two request forms:

- ``Content-Type: application/json`` with ``{"image": "<base64 or data: URI>", "mode": "tags" |
  "description", "tag_list": [...], "threshold": 0.5, "prompt": "...", "backend": "embedded" |
  "vlm" | "tensorrt"}`` (everything but ``image`` optional);
- raw ``image/jpeg`` / ``image/png`` / ``image/webp`` (or ``application/octet-stream``) bytes, options
  in the query string (``?mode=tags&tag_list=face,person&threshold=0.5&backend=embedded``).

Answer: ``{"tags": [{"name", "confidence", "box": [x, y, w, h] | null}], "text", "model",
"latency_ms", "backend", "frame_size": [w, h]}``. Errors are ``{"error": {"code", "message"}}``:
400 bad body/image, 413 too large, 415 unsupported content type, 502 the model's answer was
unreadable, 503 backend unavailable or busy.

`describe_capability(body, backends)` is the same operation for a BYOC ``describe`` capability:
it takes the JSON body (bytes, str or dict) and returns the answer dict or raises `DescribeError`
(with `.status`, `.code`, `.message`). This module imports no other `server` module.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import time
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from aiohttp import web
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from httpapi.errors import ApiError
from httpapi.json_body import JSONBodyError, loads_limited
from httpapi.routes import Role, RouteTable
from inference.vision.base import BackendUnavailable, VisionRequest
from inference.vision.stage import VisionBackends
from server.keys import VISION_KEY

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "application/octet-stream")


class DescribeError(ApiError):
    """An `ApiError` with its stable code first; answered by the error middleware (httpapi/errors.py)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, message, code=code)


class DescribeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["tags", "description"] = "tags"
    tag_list: list[str] = Field(default_factory=list, max_length=256)
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    prompt: str | None = Field(None, max_length=4000)
    backend: str | None = Field(None, max_length=64)

    @field_validator("tag_list", mode="before")
    @classmethod
    def _split_string(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value


class DescribeBody(DescribeOptions):
    image: str = Field(..., min_length=1, max_length=MAX_BODY_BYTES * 2)


def image_bytes_from_base64(text: str) -> bytes:
    """Base64 (optionally a ``data:<mime>;base64,`` URI, whitespace allowed) -> bytes."""
    payload = text.strip()
    if payload.startswith("data:"):
        header, _, payload = payload.partition(",")
        if ";base64" not in header:
            raise DescribeError(400, "invalid_image", "data URI must be base64-encoded")
    payload = "".join(payload.split())
    payload += "=" * (-len(payload) % 4)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        try:
            return base64.urlsafe_b64decode(payload)
        except (binascii.Error, ValueError):
            raise DescribeError(400, "invalid_image", "image is not valid base64") from None


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """JPEG/PNG/WebP/... bytes -> RGB uint8 (h, w, 3). Raises DescribeError(400/413)."""
    if not data:
        raise DescribeError(400, "invalid_image", "empty image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # header only: refuse huge images before decoding them
            if width * height > max_pixels:
                raise DescribeError(413, "image_too_large", f"image is {width}x{height}; at most {max_pixels} pixels")
            return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
    except DescribeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DescribeError(400, "invalid_image", f"could not decode image: {exc}") from None


async def run_describe(image_data: bytes, options: DescribeOptions, backends: VisionBackends) -> dict[str, Any]:
    started = time.perf_counter()
    image = await asyncio.to_thread(decode_image, image_data)
    backend_name = options.backend or backends.settings.default_backend
    try:
        request = VisionRequest(
            mode=options.mode,
            tag_list=tuple(options.tag_list),
            threshold=backends.settings.threshold if options.threshold is None else options.threshold,
            prompt=options.prompt,
        )
    except ValueError as exc:
        raise DescribeError(400, "invalid_request", str(exc)) from None
    try:
        backend = await backends.get(backend_name)
        result = await backend.analyze(image, request)
    except BackendUnavailable as exc:  # includes BackendBusy
        raise DescribeError(503, "backend_unavailable", str(exc)) from None
    except Exception as exc:  # a backend bug: still a JSON error, and logged with its traceback
        log.exception("vision backend %s failed", backend_name)
        raise DescribeError(500, "vision_failed", f"{type(exc).__name__}: {exc}") from None
    if result.error:
        raise DescribeError(502, "bad_model_output", result.error)
    height, width = image.shape[:2]
    return {
        "tags": [
            {"name": t.name, "confidence": t.confidence, "box": list(t.box) if t.box is not None else None}
            for t in result.tags
        ],
        "text": result.text,
        "model": result.model or backend.model,
        "backend": backend_name,
        "frame_size": [int(width), int(height)],
        "latency_ms": round((time.perf_counter() - started) * 1000.0, 1),
    }


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))


async def describe_capability(body: bytes | str | Mapping[str, Any], backends: VisionBackends) -> dict[str, Any]:
    """The `describe` operation on a JSON body (see the module docstring). Raises DescribeError."""
    if isinstance(body, (bytes, bytearray, str)):
        try:
            body = loads_limited(body)
        except JSONBodyError as exc:
            raise DescribeError(400, "invalid_json", str(exc)) from None
    if not isinstance(body, Mapping):
        raise DescribeError(400, "invalid_request", "body must be a JSON object")
    try:
        parsed = DescribeBody.model_validate(body)
    except ValidationError as exc:
        raise DescribeError(400, "invalid_request", _validation_message(exc)) from None
    image_data = image_bytes_from_base64(parsed.image)
    options = DescribeOptions.model_validate(parsed.model_dump(exclude={"image"}))
    return await run_describe(image_data, options, backends)


async def handle_describe(request: web.Request) -> web.Response:
    """JSON or raw image bytes; the access middleware has read the body under MAX_BODY_BYTES."""
    backends = request.app[VISION_KEY]
    content_type = request.content_type
    if content_type == "application/json":
        answer = await describe_capability(await request.read(), backends)
    elif content_type in RAW_IMAGE_TYPES:
        try:
            options = DescribeOptions.model_validate(dict(request.query))
        except ValidationError as exc:
            raise DescribeError(400, "invalid_request", _validation_message(exc)) from None
        answer = await run_describe(await request.read(), options, backends)
    else:
        raise DescribeError(
            415, "unsupported_media_type", f"send application/json or one of {', '.join(RAW_IMAGE_TYPES)}"
        )
    return web.json_response(answer)


routes = RouteTable()
routes.add(
    "POST",
    "/vision/describe",
    handle_describe,
    role=Role.API,
    content_types=("application/json", *RAW_IMAGE_TYPES),
    max_body="max_image_bytes",
    tag="vision",
    errors=(400, 401, 413, 415, 502, 503),
    summary="Tags or a description of one image (JSON with base64, or raw image bytes)",
)


def add_vision_routes(app: web.Application, backends: VisionBackends) -> None:
    """Mount `POST /vision/describe` on `app`, serving from `backends`."""
    app[VISION_KEY] = backends
    routes.mount(app)
