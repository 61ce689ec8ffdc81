"""HTTP API for translation (role `api`):

    POST   /translate                 one text (optional session_id: translated in its session's context)
    POST   /translate/batch           several texts, in order
    GET    /translate/stream          WebSocket: one JSON message per text, replies in order
    GET    /translate/languages       the pairs each backend can do
    GET    /translate/sessions/{id}   a session's history
    DELETE /translate/sessions/{id}   end a session
    GET    /translate/health          backend health (200 when one backend is healthy, else 503)

Errors answer `{"error": {"code", "message"}}`: 400 invalid field / unsupported language pair
(the message names the pairs available) / undetectable language, 404 unknown session, 413 too
many or too long texts, 503 translation disabled or overloaded. When every backend fails the
answer is still 200: the source text with `"untranslated": true`. `translate_capability` serves
the same request shapes for the BYOC `translate` capability.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from aiohttp import WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from httpapi.errors import ApiError, validation_message
from httpapi.json_body import JSONBodyError, loads_limited
from httpapi.routes import Role, RouteTable
from inference.translate import TranslationError, TranslationResult, TranslationService
from inference.translate.base import LANGUAGE_CODE_PATTERN, sum_usage
from inference.translate.sessions import SESSION_ID_PATTERN
from server.errors import validated_body
from server.keys import TRANSLATION_KEY

log = logging.getLogger(__name__)

# ISO 639-1/3 code, optionally with a region: 'en', 'es', 'spa', 'en-US'
LanguageCode = Annotated[str, Field(pattern=LANGUAGE_CODE_PATTERN, max_length=24)]
SourceLanguage = LanguageCode | Literal["auto"]
SessionId = Annotated[str, Field(pattern=SESSION_ID_PATTERN)]


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str = Field(min_length=1)
    source_lang: SourceLanguage = Field(description='the text\'s language, or "auto" to detect it')
    target_lang: LanguageCode
    session_id: SessionId | None = Field(None, description="translate in this session's context (created on first use)")


class BatchTranslateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    texts: list[str] = Field(min_length=1)
    source_lang: SourceLanguage
    target_lang: LanguageCode
    session_id: SessionId | None = None


class StreamMessage(TranslateRequest):
    """One WebSocket message; `id` (echoed in the reply) defaults to the message's number."""

    id: str | int | None = Field(None, description="echoed in the reply")


class Translation(BaseModel):
    translated_text: str
    source_language: str
    target_language: str
    backend: str = Field(description='the backend that answered; "none" when untranslated')
    confidence: float | None = Field(description="0..1, from the backend's evidence and the quality checks")
    quality_flags: list[str]
    untranslated: bool = Field(description="every backend failed: translated_text is the source text")
    cached: bool


class TranslateResponse(Translation):
    model_info: str
    usage: dict[str, int] | None
    session_id: str | None = None
    detected_language: str | None = Field(None, description='set when source_lang was "auto"')


class BatchTranslateResponse(BaseModel):
    translations: list[Translation]
    model_info: str
    usage: dict[str, int] | None
    session_id: str | None = None
    detected_language: str | None = None


class SessionEntry(BaseModel):
    source: str
    translation: str
    source_lang: str
    target_lang: str
    backend: str
    confidence: float | None
    untranslated: bool
    at: float


class SessionResponse(BaseModel):
    session_id: str
    created_at: float
    expires_in_s: float
    translations: int
    history: list[SessionEntry]


class LanguagesResponse(BaseModel):
    backends: list[dict[str, Any]]
    auto_detect: bool


def _invalid(message: str) -> TranslationError:
    return TranslationError(message, code="invalid_request", retryable=False)


def _parse(model: type[BaseModel], body: Any) -> Any:
    if not isinstance(body, dict):
        raise _invalid("request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _invalid(validation_message(exc)) from None


def translation_fields(result: TranslationResult) -> dict[str, Any]:
    return {
        "translated_text": result.text,
        "source_language": result.source_language,
        "target_language": result.target_language,
        "backend": result.backend or "none",
        "confidence": result.confidence,
        "quality_flags": list(result.quality_flags),
        "untranslated": result.untranslated,
        "cached": result.cached,
    }


def single_response(
    result: TranslationResult, session_id: str | None = None, requested_source: str = ""
) -> dict[str, Any]:
    return {
        **translation_fields(result),
        "model_info": result.model_info,
        "usage": result.usage,
        "session_id": session_id,
        "detected_language": result.source_language if requested_source == "auto" else None,
    }


def batch_response(
    results: list[TranslationResult], model_info: str, session_id: str | None = None, requested_source: str = ""
) -> dict[str, Any]:
    return {
        "translations": [translation_fields(r) for r in results],
        "model_info": results[0].model_info if results else model_info,
        "usage": sum_usage([r.usage for r in results]),
        "session_id": session_id,
        "detected_language": results[0].source_language if results and requested_source == "auto" else None,
    }


async def translate_capability(body: dict[str, Any], service: TranslationService) -> dict[str, Any]:
    """The BYOC `translate` capability: `{"text", "source_lang", "target_lang", "session_id"?}` →
    the /translate answer, or `{"texts": [...], ...}` → the /translate/batch answer. Raises
    TranslationError (`.code`, message) for bad input and unsupported pairs."""
    if isinstance(body, dict) and "texts" in body and "text" not in body:
        batch = _parse(BatchTranslateRequest, body)
        results = await service.translate_batch(batch.texts, batch.source_lang, batch.target_lang, batch.session_id)
        return batch_response(results, service.model_info, batch.session_id, batch.source_lang)
    single = _parse(TranslateRequest, body)
    result = await service.translate(single.text, single.source_lang, single.target_lang, single.session_id)
    return single_response(result, single.session_id, single.source_lang)


routes = RouteTable()


@routes.post(
    "/translate",
    role=Role.API,
    tag="translate",
    summary="Translate one text",
    body=TranslateRequest,
    response=TranslateResponse,
    errors=(400, 413, 503),
)
async def handle_translate(request: web.Request) -> web.StreamResponse:
    service = request.app[TRANSLATION_KEY]
    single = validated_body(request, TranslateRequest)  # validated once, by the access middleware
    # a TranslationError is answered by the error table (httpapi/errors.py): status by its code
    result = await service.translate(single.text, single.source_lang, single.target_lang, single.session_id)
    return web.json_response(single_response(result, single.session_id, single.source_lang))


@routes.post(
    "/translate/batch",
    role=Role.API,
    tag="translate",
    summary="Translate several texts, in order",
    body=BatchTranslateRequest,
    response=BatchTranslateResponse,
    errors=(400, 413, 503),
)
async def handle_translate_batch(request: web.Request) -> web.StreamResponse:
    service = request.app[TRANSLATION_KEY]
    batch = validated_body(request, BatchTranslateRequest)
    results = await service.translate_batch(batch.texts, batch.source_lang, batch.target_lang, batch.session_id)
    return web.json_response(batch_response(results, service.model_info, batch.session_id, batch.source_lang))


@routes.get(
    "/translate/languages",
    role=Role.API,
    tag="translate",
    summary="The language pairs each translation backend can do",
    response=LanguagesResponse,
)
async def handle_translate_languages(request: web.Request) -> web.StreamResponse:
    return web.json_response(await request.app[TRANSLATION_KEY].languages())


@routes.get(
    "/translate/sessions/{session_id}",
    role=Role.API,
    tag="translate",
    summary="A translation session's history",
    response=SessionResponse,
    errors=(404,),
)
async def handle_get_session(request: web.Request) -> web.StreamResponse:
    session_id = request.match_info["session_id"]
    snapshot = request.app[TRANSLATION_KEY].session_snapshot(session_id)
    if snapshot is None:
        raise ApiError(404, f"no translation session {session_id[:80]!r} (ended, expired or never started)")
    return web.json_response(snapshot)


@routes.delete(
    "/translate/sessions/{session_id}",
    role=Role.API,
    tag="translate",
    summary="End a translation session",
    errors=(404,),
)
async def handle_delete_session(request: web.Request) -> web.StreamResponse:
    session_id = request.match_info["session_id"]
    if not request.app[TRANSLATION_KEY].end_session(session_id):
        raise ApiError(404, f"no translation session {session_id[:80]!r} (ended, expired or never started)")
    return web.json_response({"session_id": session_id, "ended": True})


@routes.get("/translate/health", role=Role.API, tag="translate", summary="Translation backend health", errors=(503,))
async def handle_translate_health(request: web.Request) -> web.StreamResponse:
    report = await request.app[TRANSLATION_KEY].health()
    report["stream"] = request.app[STREAM_STATS_KEY].snapshot()
    return web.json_response(report, status=200 if report["status"] == "healthy" else 503)


# --- WebSocket /translate/stream --------------------------------------------------------------


@dataclass
class StreamStats:
    """Open /translate/stream connections (bounded) and why they were closed."""

    max_connections: int
    open: int = 0
    accepted: int = 0
    refused: int = 0
    messages: int = 0
    closed_slow_reader: int = 0
    closed_bad_messages: int = 0
    closed_protocol_error: int = 0

    def snapshot(self) -> dict[str, int]:
        return dict(self.__dict__)


STREAM_STATS_KEY: web.AppKey[StreamStats] = web.AppKey("translate_stream_stats", StreamStats)

WS_POLICY_VIOLATION = 1008  # repeated invalid messages
WS_UNSUPPORTED_DATA = 1003  # binary frames
WS_CLOSE_TIMEOUT_S = 1.0


class _StreamConnection:
    """One client: a reader that starts at most `max_in_flight` translations (then stops reading,
    so TCP pushes back on the client), and a writer that sends their replies in message order
    and closes the socket when the client stops reading."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        service: TranslationService,
        stats: StreamStats,
        transport: asyncio.Transport | None,
    ) -> None:
        self.ws = ws
        self.service = service
        self.stats = stats
        self.transport = transport
        settings = service.settings
        self.slots = asyncio.Semaphore(settings.ws_max_in_flight)
        # at most ws_max_in_flight replies (the semaphore) plus the end marker
        self.replies: asyncio.Queue[asyncio.Future[dict[str, Any]] | None] = asyncio.Queue(
            settings.ws_max_in_flight + 1
        )
        self.send_timeout = settings.ws_send_timeout_s
        self.max_bad = settings.ws_max_bad_messages
        self.bad_messages = 0
        self.count = 0
        self.closing = False
        self.close_code: int | None = None
        self.close_reason = ""

    async def run(self) -> None:
        reader = asyncio.create_task(self._read_messages(), name="translate-stream-reader")
        writer = asyncio.create_task(self._write_replies(), name="translate-stream-writer")
        try:
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if not reader.done():
                # the writer gave up (client not reading, or gone): the reader may wait on a slot
                reader.cancel()
            else:
                self.replies.put_nowait(None)  # always fits: the writer sends what is queued, then stops
                await asyncio.wait({writer}, timeout=self.send_timeout + WS_CLOSE_TIMEOUT_S)
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
            await self._drain_pending()

    async def _enqueue(self, item: asyncio.Future[dict[str, Any]]) -> None:
        await self.replies.put(item)

    async def _read_messages(self) -> None:
        async for message in self.ws:
            if self.closing:
                break
            if message.type == WSMsgType.TEXT:
                self.count += 1
                self.stats.messages += 1
                await self._on_text(message.data)
                if self.bad_messages >= self.max_bad:
                    self.stats.closed_bad_messages += 1
                    self._close_after_replies(WS_POLICY_VIOLATION, "too many invalid messages")
                    break
            elif message.type == WSMsgType.BINARY:
                self.stats.closed_protocol_error += 1
                await self._reply_now(None, "invalid_message", "binary frames are not accepted; send JSON text")
                self._close_after_replies(WS_UNSUPPORTED_DATA, "binary frames are not accepted")
                break
            elif message.type == WSMsgType.ERROR:
                self.stats.closed_protocol_error += 1
                log.info("translate stream: protocol error: %s", self.ws.exception())
                break

    async def _on_text(self, data: str) -> None:
        try:
            raw = loads_limited(data)
        except JSONBodyError:
            self.bad_messages += 1
            await self._reply_now(None, "invalid_message", "message is not valid JSON")
            return
        message_id = raw.get("id") if isinstance(raw, dict) else None
        if not isinstance(message_id, (str, int)) or isinstance(message_id, bool):
            message_id = None
        try:
            message = StreamMessage.model_validate(raw)
        except ValidationError as exc:
            self.bad_messages += 1
            await self._reply_now(message_id, "invalid_message", validation_message(exc))
            return
        await self.slots.acquire()  # full: stop reading until a reply has gone out
        reply_id = message.id if message.id is not None else self.count
        task = asyncio.create_task(self._translate(reply_id, message))
        await self._enqueue(task)

    async def _translate(self, reply_id: str | int, message: StreamMessage) -> dict[str, Any]:
        try:
            result = await self.service.translate(
                message.text, message.source_lang, message.target_lang, message.session_id
            )
        except TranslationError as exc:
            return {"id": reply_id, "error": {"code": exc.code, "message": str(exc)}}
        reply = {"id": reply_id, **translation_fields(result), "session_id": message.session_id}
        if message.source_lang == "auto":
            reply["detected_language"] = result.source_language
        return reply

    async def _reply_now(self, reply_id: str | int | None, code: str, text: str) -> None:
        await self.slots.acquire()
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        done.set_result({"id": reply_id, "error": {"code": code, "message": text}})
        await self._enqueue(done)

    def _close_after_replies(self, code: int, reason: str) -> None:
        self.closing = True
        self.close_code, self.close_reason = code, reason

    async def _write_replies(self) -> None:
        while True:
            item = await self.replies.get()
            if item is None:
                break
            try:
                payload = await item
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the service never raises; a bug must not hang the socket
                log.exception("translate stream: reply failed")
                payload = {"id": None, "error": {"code": "internal_error", "message": str(exc)}}
            finally:
                self.slots.release()
            if self.ws.closed:
                continue
            try:
                await asyncio.wait_for(self.ws.send_json(payload), self.send_timeout)
            except TimeoutError:
                self.stats.closed_slow_reader += 1
                log.info("translate stream: client stopped reading for %.1f s; closing it", self.send_timeout)
                self._abort()
                return
            except (ConnectionError, RuntimeError):
                return  # the client went away
        if self.close_code is not None and not self.ws.closed:
            try:
                await asyncio.wait_for(
                    self.ws.close(code=self.close_code, message=self.close_reason.encode()), WS_CLOSE_TIMEOUT_S
                )
            except TimeoutError:
                self._abort()

    def _abort(self) -> None:
        """Drop the connection without flushing (its send buffer is what is stuck)."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    async def _drain_pending(self) -> None:
        pending = []
        while not self.replies.empty():
            item = self.replies.get_nowait()
            if item is not None and not item.done():
                item.cancel()
                pending.append(item)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


@routes.get(
    "/translate/stream",
    role=Role.API,
    tag="translate",
    content_types=None,
    stream_body=True,
    summary="WebSocket: send {text, source_lang, target_lang, session_id?, id?} "
    "messages, receive {id, translated_text, confidence, quality_flags, backend, ...} in order",
    errors=(400, 503),
)
async def handle_translate_stream(request: web.Request) -> web.StreamResponse:
    service = request.app[TRANSLATION_KEY]
    stats = request.app[STREAM_STATS_KEY]
    if stats.open >= stats.max_connections:
        stats.refused += 1
        raise ApiError(503, f"too many translation streams open (limit {stats.max_connections})")
    ws = web.WebSocketResponse(max_msg_size=service.settings.ws_max_message_bytes, heartbeat=30.0, autoping=True)
    if not ws.can_prepare(request).ok:
        raise ApiError(400, "GET /translate/stream is a WebSocket: send Connection: Upgrade and Upgrade: websocket")
    await ws.prepare(request)
    stats.open += 1
    stats.accepted += 1
    try:
        await _StreamConnection(ws, service, stats, request.transport).run()
    finally:
        stats.open -= 1
        if not ws.closed:
            try:
                await asyncio.wait_for(ws.close(), WS_CLOSE_TIMEOUT_S)
            except (TimeoutError, ConnectionError, RuntimeError):
                if request.transport is not None:
                    request.transport.abort()
    return ws


def add_translate_routes(app: web.Application, service: TranslationService) -> None:
    """Mount the translation API on `app` and keep `service` under TRANSLATION_KEY.
    The caller owns the service's lifetime (`await service.close()` on shutdown)."""
    app[TRANSLATION_KEY] = service
    app[STREAM_STATS_KEY] = StreamStats(max_connections=service.settings.ws_max_connections)
    routes.mount(app)
