"""`StreamService`: the one way a stream starts and stops, whoever asks.

`POST /stream/start` (server/routes_streams.py), the WebRTC publishers (`/offer`, WHIP:
server/webrtc_service.py), ai-runner's `/live-video-to-video` (byoc/routes.py) and any other
ingest call `start`; nothing in the process calls an HTTP handler to start a stream. The service
raises plain domain exceptions (`AdmissionError`, `DuplicateStreamError`, `OutboundDenied`,
`InvalidStart`, `InvalidParams`, `StreamNotFound`, `StreamStartFailed`); the one table in httpapi/errors.py
maps them to HTTP at the edge.

Params are validated in one place, `ParamsValidator`: each feature registers a check for its own
section (`captions`, `vision`, ...). A stream's params pass it at start and on every update (the
stream calls it before applying a merge patch, whatever the entry point: `/stream/params`, a
repeated `/stream/start`, the WebRTC data channel, the Livepeer control channel), so an invalid
block is refused, never half applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from httpapi.outbound import OutboundDenied, OutboundPolicy, check_spec_urls
from httpapi.redact import redact_payload, redact_text
from media.endpoints import MediaSink, MediaSource
from media.manager import AdmissionError, DuplicateStreamError, StreamManager
from media.spec import StreamSpec
from media.stream import Stream
from server.access import ViewerTokens
from server.metrics import Metrics
from server.pipeline import StreamFactory
from server.start_request import StartRequest, spec_from_request

log = logging.getLogger(__name__)

# called with (stream, spec) after a stream is built and before it starts (extra sinks, side channels)
StartHook = Callable[[Stream, StreamSpec], None]
# checks one params section (the value of `params[section]`); raises ValidationError or ValueError
SectionCheck = Callable[[Any], object]


class InvalidParams(ValueError):
    """A params block no stage can accept (→ 400); the message names the field."""


class InvalidStart(ValueError):
    """A start request that names no usable stream (no input URL, a bad manifest id...) (→ 400)."""


class StreamNotFound(LookupError):
    """No running stream with this manifest id (→ 404)."""


class StreamStartFailed(RuntimeError):
    """A stream failed to start for a reason other than the request (→ 500); the message is redacted."""


class ParamsValidator:
    """Every params section's check, registered by the feature that reads the section."""

    def __init__(self) -> None:
        self._checks: dict[str, SectionCheck] = {}

    def add(self, section: str, check: SectionCheck) -> None:
        if section in self._checks:
            raise ValueError(f"params section '{section}' already has a check")
        self._checks[section] = check

    @property
    def sections(self) -> tuple[str, ...]:
        return tuple(self._checks)

    def __call__(self, params: Mapping[str, Any]) -> None:
        """Raise InvalidParams naming the first bad field; absent or null sections are not checked
        (null in a merge patch removes a section: its feature goes back to its defaults)."""
        if not isinstance(params, Mapping):
            raise InvalidParams("params must be a JSON object")
        for section, check in self._checks.items():
            block = params.get(section)
            if block is None:
                continue
            try:
                check(block)
            except ValidationError as exc:
                raise InvalidParams(_field_message(section, exc)) from None
            except ValueError as exc:
                raise InvalidParams(f"params.{section}: {exc}") from None


def _field_message(section: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(["params", section, *(str(p) for p in err.get("loc", ()))])
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


@dataclass(frozen=True)
class StartedStream:
    """What a start gives back: the stream, whether this call created it (a repeated
    `/stream/start` of a running stream only patches its params) and, for the call that created
    it, the stream's own viewer token."""

    stream: Stream
    created: bool
    viewer_token: str | None

    @property
    def manifest_id(self) -> str:
        return self.stream.manifest_id

    def answer(self) -> dict[str, Any]:
        """The start answer (ai-runner's fields plus ours). Only the start that created the stream
        carries its viewer token: a stream's id and publish_url are no secret, so whoever repeats
        a start does not get the token again."""
        body: dict[str, Any] = {
            "success": True,
            "status": "success",
            "message": "Stream started successfully",
            "manifest_id": self.stream.manifest_id,
            "request_id": self.stream.manifest_id,
            "current_state": self.stream.state.value,
            "stream": redact_payload(self.stream.summary()),  # caller URLs without credentials or tokens
        }
        if self.viewer_token is not None:
            body["viewer_token"] = self.viewer_token
        return body


class StreamService:
    """Admits, builds, starts and stops streams; counts what it refuses."""

    def __init__(
        self,
        manager: StreamManager,
        factory: StreamFactory,
        metrics: Metrics,
        outbound: OutboundPolicy,
        viewer_tokens: ViewerTokens | None = None,
    ) -> None:
        self.manager = manager
        self.factory = factory
        self.metrics = metrics
        self.outbound = outbound
        self.viewer_tokens = viewer_tokens or ViewerTokens()
        self.params = ParamsValidator()
        self.start_hooks: list[StartHook] = []

    def add_start_hook(self, hook: StartHook) -> None:
        self.start_hooks.append(hook)

    # -- checks that callers may run before they build anything of their own (a peer connection) -----
    def check_params(self, params: Mapping[str, Any]) -> None:
        try:
            self.params(params)
        except InvalidParams:
            self.reject("bad_request")
            raise

    def check_admission(self, manifest_id: str) -> None:
        """DuplicateStreamError / AdmissionError now, before the caller negotiates anything."""
        if self.manager.get_active(manifest_id) is not None:
            raise DuplicateStreamError(f"stream '{manifest_id}' is already running")
        ok, reason = self.manager.can_accept()
        if not ok:
            self.reject("capacity")
            raise AdmissionError(reason)

    def reject(self, reason: str) -> None:
        """Count a refused start (`streamlens_streams_rejected_total{reason}`)."""
        self.metrics.streams_rejected.labels(reason).inc()

    # -- start / stop ----------------------------------------------------------------------------------
    async def start(
        self,
        spec: StreamSpec,
        *,
        source: MediaSource | None = None,
        sinks: list[MediaSink] | None = None,
        video_queue_size: int | None = None,
    ) -> StartedStream:
        """Admit, build and start a stream for `spec`. Without `source`/`sinks` it reads and writes
        the trickle URLs of the spec; an ingest that already has its media (a WebRTC peer, an RTMP
        publish) hands its source (and sinks) in. Raises InvalidParams, OutboundDenied,
        DuplicateStreamError, AdmissionError or StreamStartFailed; nothing is held after a raise."""
        self.check_params(spec.params)
        try:
            await check_spec_urls(self.outbound, spec)  # before anything is held
        except OutboundDenied as exc:
            self.reject("outbound_denied")
            log.warning("[%s] stream start refused: %s", spec.manifest_id, exc)
            raise
        try:
            self.manager.reserve(spec.manifest_id)
        except AdmissionError:
            self.reject("capacity")
            raise
        try:
            stream = self.factory.build(spec, source=source, sinks=sinks, video_queue_size=video_queue_size)
            stream.params_check = self.params  # every later update passes the same checks
            for hook in self.start_hooks:
                hook(stream, spec)
        except BaseException as exc:
            self.manager.release(spec.manifest_id)
            raise self._start_error(spec, exc) from None
        try:
            await self.manager.start(stream)  # releases the reservation whatever happens
        except BaseException as exc:
            raise self._start_error(spec, exc) from None
        self.metrics.streams_started.inc()
        return StartedStream(stream, created=True, viewer_token=self.viewer_tokens.issue(stream))

    def _start_error(self, spec: StreamSpec, exc: BaseException) -> BaseException:
        """What a failed build or start raises: a params problem a stage found (ValueError) is the
        caller's (400); anything else is ours (500, logged with its traceback)."""
        if not isinstance(exc, Exception) or isinstance(exc, InvalidParams):
            return exc  # cancellation, exit: passed on as they are
        if isinstance(exc, OutboundDenied):  # a URL in the params (an output) the policy refuses
            self.reject("outbound_denied")
            return exc
        if isinstance(exc, ValueError):
            self.reject("bad_request")
            return InvalidParams(str(exc))
        log.error("[%s] stream failed to start", spec.manifest_id, exc_info=exc)
        return StreamStartFailed(f"stream failed to start: {redact_text(str(exc))}")

    async def start_request(self, request: StartRequest, stream_id_header: str | None = None) -> StartedStream:
        """`POST /stream/start` (either shape): a new stream, or, for a running stream with the same
        publish_url (the gateway re-sends its start), its params patched as a merge patch."""
        try:
            spec = spec_from_request(request, stream_id_header)
        except ValueError as exc:
            self.reject("bad_request")
            raise InvalidStart(str(exc)) from None
        running = self.manager.get_active(spec.manifest_id)
        if running is not None and running.metadata.get("publish_url") == spec.publish_url:
            try:  # a params check or a refused mid-stream resolution change: nothing is applied
                running.update_params(spec.params)
            except ValueError as exc:
                raise InvalidParams(str(exc)) from None
            return StartedStream(running, created=False, viewer_token=None)
        return await self.start(spec)

    async def start_body(self, body: Mapping[str, Any], stream_id_header: str | None = None) -> StartedStream:
        """`start_request` for a caller holding a plain start body (byoc, which imports no `server`
        type); a ValidationError names every bad field (→ 400)."""
        try:
            request = StartRequest.model_validate(dict(body))
        except ValidationError:
            self.reject("bad_request")
            raise
        return await self.start_request(request, stream_id_header)

    async def stop(self, manifest_id: str, reason: str) -> Stream:
        """Stop a running stream (waits until it has released everything); StreamNotFound if none."""
        stream = self.manager.get_active(manifest_id)
        if stream is None:
            raise StreamNotFound(f"no running stream with manifest id '{manifest_id}'")
        await stream.stop(reason)
        return stream

    def viewer_token(self, stream: Stream) -> str:
        """The stream's own token for its WHEP, SSE and WebVTT routes (and nothing else)."""
        return self.viewer_tokens.issue(stream)


__all__ = [
    "InvalidParams",
    "InvalidStart",
    "ParamsValidator",
    "StartHook",
    "StartedStream",
    "StreamNotFound",
    "StreamService",
    "StreamStartFailed",
]
