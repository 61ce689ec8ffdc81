"""The one error path for every route group (server, byoc, trickle, WebSocket messages).

Handlers raise; they do not build error responses. `error_middleware` (installed once on the
server app, so it wraps the server, byoc and trickle routes alike) turns what they raise into the
one body, `error_body`:

- `ApiError(status, message, code=, headers=)`: an edge decision made in a handler (a 404 for an
  unknown id, a 412 on a stale ETag);
- a domain exception listed in `DOMAIN_ERRORS`: plain exceptions from `inference/`, `analysis/`,
  `media/` mapped to (status, code) here, at the edge, instead of carrying a status themselves;
- `web.HTTPException` from aiohttp or the access middleware: same body, its headers kept;
- pydantic `ValidationError`: 400 naming every bad field;
- anything else: 500 with the one body and a log line with the (redacted) traceback.

The body carries the project's `{"error": {"code", "message"}}` and ai-runner's `{"detail": {"msg"}}`
side by side: the Livepeer orchestrator only relays the status code, and Livepeer components read
the `detail` shape. This module imports no `server`, `byoc`, `inference` or `analysis` module:
`DOMAIN_ERRORS` names classes by their import path (tests/test_error_shape.py checks each resolves).
"""

from __future__ import annotations

import logging
import traceback
from typing import Any, NamedTuple

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import ValidationError

from httpapi.redact import redact_text

log = logging.getLogger(__name__)


class StatusInfo(NamedTuple):
    code: str  # the default `error.code` for this status
    text: str  # the OpenAPI description (server/openapi.py)


# The one status table: error codes for bodies, descriptions for the OpenAPI document.
STATUS: dict[int, StatusInfo] = {
    200: StatusInfo("ok", "OK"),
    201: StatusInfo("created", "Created"),
    202: StatusInfo("accepted", "Accepted"),
    204: StatusInfo("no_content", "No Content"),
    400: StatusInfo("bad_request", "Bad request"),
    401: StatusInfo("unauthorized", "Missing or wrong token"),
    403: StatusInfo("forbidden", "Forbidden"),
    404: StatusInfo("not_found", "Not found"),
    405: StatusInfo("method_not_allowed", "Method not allowed"),
    408: StatusInfo("request_timeout", "Body too slow"),
    409: StatusInfo("conflict", "Conflict"),
    412: StatusInfo("precondition_failed", "Precondition failed"),
    413: StatusInfo("payload_too_large", "Body too large"),
    415: StatusInfo("unsupported_media_type", "Wrong Content-Type"),
    422: StatusInfo("unprocessable", "Unprocessable"),
    428: StatusInfo("precondition_required", "Precondition required"),
    429: StatusInfo("too_many_requests", "Too many requests"),
    500: StatusInfo("internal_error", "Internal error"),
    502: StatusInfo("bad_gateway", "Bad upstream answer"),
    503: StatusInfo("unavailable", "Unavailable or at capacity"),
    504: StatusInfo("timeout", "Timed out"),
    507: StatusInfo("insufficient_storage", "No room to store the input"),
}
STATUS_BY_CODE = {info.code: status for status, info in STATUS.items()}
STATUS_CODES = {status: info.code for status, info in STATUS.items() if status >= 400}


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    default = STATUS[status].code if status in STATUS else "error"
    return {
        "success": False,
        "status": "error",
        "error": {"code": code or default, "message": message},
        "detail": {"msg": message},
    }


def json_error(
    status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """The one error response. For code outside a handler (middlewares, a bare trickle app);
    handlers raise `ApiError` instead."""
    return web.json_response(error_body(status, message, code), status=status, headers=headers)


class ApiError(Exception):
    """An error answer decided at the edge: raised in a handler, answered by `error_middleware`."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers

    def response(self) -> web.Response:
        return json_error(self.status, self.message, code=self.code, headers=self.headers)


# Domain exception → (status, code): looked up along the exception's MRO, most specific first.
# A domain error with a stable `.code` listed in DOMAIN_CODES (or one of STATUS's codes, as the
# analysis errors use) answers that code's status instead;
# `code` None: the exception's own `.code`, else the status's default code.
DOMAIN_ERRORS: dict[str, tuple[int, str | None]] = {
    "httpapi.json_body.JSONBodyError": (400, None),
    "media.webrtc_sdp.OfferError": (400, None),
    "media.webrtc_sdp.UnsupportedOffer": (422, None),
    "media.webrtc_sdp.OfferFailed": (500, None),
    "analysis.inputs.InputError": (400, None),
    "analysis.engine.JobFailed": (422, None),
    "inference.translate.base.TranslationError": (503, None),
    "inference.openai_client.OpenAIError": (502, None),
    "inference.openai_client.TransientOpenAIError": (503, None),
    # stream start (server/stream_service.py) and WebRTC peers
    "media.manager.AdmissionError": (503, "at_capacity"),
    "media.manager.DuplicateStreamError": (409, None),
    "httpapi.outbound.OutboundDenied": (400, None),
    "server.stream_service.InvalidStart": (400, None),
    "server.stream_service.InvalidParams": (400, None),
    "server.stream_service.StreamNotFound": (404, None),
    "server.stream_service.StreamStartFailed": (500, None),
    "server.webrtc_service.SessionLimitError": (503, "at_capacity"),
}
# Headers a domain error's answer carries (capacity: when to try again), by the same class paths.
DOMAIN_HEADERS: dict[str, dict[str, str]] = {
    "media.manager.AdmissionError": {"Retry-After": "5"},
    "server.webrtc_service.SessionLimitError": {"Retry-After": "5"},
}
DOMAIN_CODES: dict[str, int] = {
    "invalid_request": 400,
    "invalid_language": 400,
    "invalid_session_id": 400,
    "language_not_detected": 400,
    "unsupported_language_pair": 400,
    "text_too_long": 413,
    "too_many_texts": 413,
    "internal_error": 500,
    "bad_backend_response": 502,
    "backend_rejected": 502,
    "backend_busy": 503,
    "backend_overloaded": 503,
    "backend_unavailable": 503,
    "overloaded": 503,
    "translation_disabled": 503,
    "backend_timeout": 504,
}


def domain_status(exc: BaseException) -> tuple[int, str | None] | None:
    """(status, code) for a domain exception listed in `DOMAIN_ERRORS`, else None."""
    for cls in type(exc).__mro__:
        found = DOMAIN_ERRORS.get(f"{cls.__module__}.{cls.__qualname__}")
        if found is not None:
            status, code = found
            own = getattr(exc, "code", None)
            if isinstance(own, str) and own:
                return DOMAIN_CODES.get(own) or STATUS_BY_CODE.get(own) or status, code or own
            return status, code
    return None


def domain_headers(exc: BaseException) -> dict[str, str] | None:
    for cls in type(exc).__mro__:
        found = DOMAIN_HEADERS.get(f"{cls.__module__}.{cls.__qualname__}")
        if found is not None:
            return dict(found)
    return None


def status_of(exc: BaseException) -> int:
    """The HTTP status an error answers with (500 when nothing maps it)."""
    if isinstance(exc, (ApiError, web.HTTPException)):
        return exc.status
    if isinstance(exc, ValidationError):
        return 400
    mapped = domain_status(exc)
    return mapped[0] if mapped is not None else 500


def validation_message(exc: ValidationError) -> str:
    """'subscribe_url: Field required; width: Input should be ...' — names every bad field."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def http_exception_message(exc: web.HTTPException, max_body_bytes: int | None = None) -> str:
    message = exc.reason if exc.text in (None, "", f"{exc.status}: {exc.reason}") else (exc.text or "")
    if exc.status == 413:  # aiohttp's own text names no limit; ours (server/access.py) does, in the reason
        if "limit" in (exc.reason or ""):
            return exc.reason
        if max_body_bytes is not None:
            return f"request body too large (limit {max_body_bytes} bytes)"
    return message


def error_response(request: web.Request, exc: BaseException) -> web.StreamResponse | None:
    """The one error answer for `exc`; None for an HTTPException that is not an error (a redirect)
    or already JSON: re-raise those."""
    where = f"{request.method} {request.path}"
    if isinstance(exc, ApiError):
        log.log(logging.WARNING if exc.status >= 500 else logging.INFO, "%s → %d: %s", where, exc.status, exc.message)
        return exc.response()
    if isinstance(exc, web.HTTPException):
        if exc.status < 400 or exc.content_type == "application/json":
            return None
        message = http_exception_message(exc, request.app.get(MAX_BODY_BYTES_KEY))  # absent: no limit named
        log.info("%s → %d: %s", where, exc.status, message)
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return json_error(exc.status, message, headers=headers)
    if isinstance(exc, ValidationError):
        message = validation_message(exc)
        log.info("%s → 400: %s", where, message)
        return json_error(400, message)
    mapped = domain_status(exc)
    if mapped is not None:
        status, code = mapped
        log.log(logging.WARNING if status >= 500 else logging.INFO, "%s → %d: %s", where, status, exc)
        return json_error(status, str(exc), code=code, headers=domain_headers(exc))
    # a traceback can quote URLs and headers: redact it like every other log line
    trace = redact_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    log.error("%s failed\n%s", where, trace)
    return json_error(500, "internal server error")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:
        response = error_response(request, exc)
        if response is None:
            raise
        return response


# the server's JSON body limit, named in 413 answers (set by the access policy, server/access.py)
MAX_BODY_BYTES_KEY = web.AppKey("max_body_bytes", int)
