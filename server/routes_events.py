"""A stream's events over Server-Sent Events, and its captions as WebVTT.

- `GET /stream/{id}/events`: every event (captions, tags, descriptions, status, errors);
  `?kinds=tags,caption` narrows it.
- `GET /stream/{id}/captions`: caption events only, `event: partial` / `event: final` / `event: update`
  (a final's translation, same id); `?lang=es` gives one language's captions (`LanguageView`).
- `GET /stream/{id}/captions.vtt`: the final captions as a WebVTT document (`?lang=es` for a translation).

Each SSE message carries `id: <event id>`; a client reconnecting with `Last-Event-ID` (or `?replay=1`)
first gets the recent events it missed, from the stream's bounded history.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Callable
from typing import Any

from aiohttp import web

from httpapi.errors import ApiError
from httpapi.routes import Role, RouteTable, match_stream_id
from httpapi.sse import DISCONNECT_CHECK_SECONDS, SseWriter
from media.events import CaptionEvent, StreamEvent
from media.lru import LRU
from media.manager import STREAMS_KEY
from server.access import cors_headers
from server.settings import SETTINGS_KEY

log = logging.getLogger(__name__)

routes = RouteTable()
# Viewer routes: WHEP_TOKEN (every stream) or the stream's own viewer token; `?token=` too, since
# EventSource and <track src> cannot send headers.
VIEWER: dict[str, Any] = {
    "role": Role.VIEWER,
    "query_token": True,
    "stream_of": match_stream_id(),
    "tag": "viewer",
    "errors": (401, 404),
}

# An event id as the server writes it: ASCII decimal, at most 19 digits (str.isdigit() also takes "²")
EVENT_ID = re.compile(r"[0-9]{1,19}")
# `?lang=`: a language code as captions.language / translate_to take it (BCP 47 shape)
LANG = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")


class SseSlots:
    """Open SSE connections per stream (SSE_MAX_PER_STREAM each). Keyed by the stream object, not
    its manifest id: a stream started again under the same id counts from zero, and an entry goes
    with its stream."""

    def __init__(self) -> None:
        self._open: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    def take(self, stream: Any, limit: int) -> bool:
        """One place for `stream`, or False when it has `limit` open already."""
        held = self._open.get(stream, 0)
        if held >= limit:
            return False
        self._open[stream] = held + 1
        return True

    def give_back(self, stream: Any) -> None:
        left = self._open.get(stream, 1) - 1
        if left > 0:
            self._open[stream] = left
        else:
            self._open.pop(stream, None)  # no entry for a stream nobody watches

    def get(self, manifest_id: str) -> int:
        """Open connections to the stream(s) of `manifest_id`."""
        return sum(n for stream, n in list(self._open.items()) if stream.manifest_id == manifest_id)

    def total(self) -> int:
        return sum(self._open.values())


SSE_OPEN_KEY = web.AppKey("sse_open", SseSlots)


def mount_event_routes(app: web.Application) -> None:
    app[SSE_OPEN_KEY] = SseSlots()
    routes.mount(app)


def _stream(request: web.Request):
    manifest_id = request.match_info["manifest_id"]
    stream = request.app[STREAMS_KEY].get(manifest_id)
    if stream is None:
        raise ApiError(404, f"no stream with manifest id '{manifest_id}'")
    return stream


def event_payload(event: StreamEvent) -> dict:
    body = event.to_dict()
    body["type"] = event.kind
    return body


def last_event_id(request: web.Request) -> int | None:
    """`Last-Event-ID` (header, else `?last_event_id=`): None when absent, else an event id or 400."""
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if not raw:
        return None
    if not EVENT_ID.fullmatch(raw):
        raise ApiError(400, "Last-Event-ID must be an event id: ASCII digits, at most 19")
    return int(raw)


def caption_lang(request: web.Request) -> str | None:
    """`?lang=`: None when absent, else a language code or 400."""
    lang = request.query.get("lang")
    if lang is None:
        return None
    if not LANG.fullmatch(lang):
        raise ApiError(400, "lang must be a language code such as 'en', 'es' or 'pt-BR'")
    return lang


class LanguageView:
    """The caption events of one language (`?lang=`), for one SSE connection: the spoken language's
    events as they are; in a translation's language only finals, once their translation arrives
    (`final` the first time, `update` if it changes), with `text` translated and `original_text`."""

    def __init__(self, lang: str, remember: int = 256) -> None:
        self.lang = lang
        self._sent: LRU[int, str] = LRU(remember)  # caption id → translated text already sent

    def __call__(self, event: StreamEvent) -> tuple[str, dict] | None:
        if not isinstance(event, CaptionEvent):
            return None
        if event.lang == self.lang:
            return event.sse_event, event_payload(event)
        text = event.translations.get(self.lang)
        if not event.final or not text:
            return None
        before = self._sent.get(event.id)
        if before == text:
            return None
        self._sent.put(event.id, text)
        payload = event_payload(event)
        payload.update(original_text=event.text, text=text, lang=self.lang)
        return ("final" if before is None else "update"), payload


async def _serve_sse(
    request: web.Request,
    kinds: set[str] | None,
    name_of,
    view: Callable[[StreamEvent], tuple[str, dict] | None] | None = None,
) -> web.StreamResponse:
    stream = _stream(request)
    skip_until = last_event_id(request)  # a bad one is refused before anything is held
    replay = request.query.get("replay") in ("1", "true") or skip_until is not None
    slots = request.app[SSE_OPEN_KEY]
    limit = request.app[SETTINGS_KEY].sse_max_per_stream
    if not slots.take(stream, limit):
        raise ApiError(
            503,
            f"stream '{stream.manifest_id}' has its maximum of {limit} event connections",
            headers={"Retry-After": "5"},
        )
    subscription = None
    sse = SseWriter(request, cors_headers(request))
    try:  # from here on, every way out gives the place back
        try:
            subscription = stream.events.subscribe(maxsize=512, kinds=kinds, replay=replay)
        except RuntimeError as exc:  # too many subscribers on this stream
            raise ApiError(503, str(exc)) from None
        await sse.prepare(b": streamlens events\nretry: 2000\n\n")  # raises when the client already left
        while True:
            # wake every second so a client that went away frees its place promptly
            event = await subscription.get(timeout=DISCONNECT_CHECK_SECONDS)
            if event is None:
                if subscription.closed:
                    await sse.send("end", {"type": "stream_ended", "reason": stream.end_reason})
                    break
                if not await sse.idle():
                    break
                continue
            if skip_until is not None and event.id <= skip_until:
                continue  # the client saw it before reconnecting
            if view is None:
                await sse.send(name_of(event), event_payload(event), event.id)
            elif (picked := view(event)) is not None:
                await sse.send(picked[0], picked[1], event.id)
    except (ConnectionResetError, RuntimeError):
        pass  # the client went away (aiohttp answers nothing more on a closed connection)
    finally:
        if subscription is not None:
            subscription.close()
        slots.give_back(stream)
    return sse.response


@routes.get(
    "/stream/{manifest_id}/events",
    summary="Every event of a stream (SSE); ?kinds=caption,tags",
    response_type="text/event-stream",
    **VIEWER,
)
async def stream_events(request: web.Request) -> web.StreamResponse:
    kinds_param = request.query.get("kinds")
    kinds = {k.strip() for k in kinds_param.split(",") if k.strip()} if kinds_param else None
    return await _serve_sse(request, kinds, lambda event: event.kind)


@routes.get(
    "/stream/{manifest_id}/captions",
    summary="Caption events (SSE: partial / final / update); ?lang= one caption language",
    response_type="text/event-stream",
    **VIEWER,
)
async def stream_captions(request: web.Request) -> web.StreamResponse:
    lang = caption_lang(request)
    view = LanguageView(lang) if lang else None
    return await _serve_sse(request, {"caption"}, lambda event: event.sse_event, view)


@routes.get(
    "/stream/{manifest_id}/captions.vtt",
    summary="Final captions as WebVTT (?lang= a translation)",
    response_type="text/vtt",
    **VIEWER,
)
async def stream_captions_vtt(request: web.Request) -> web.Response:
    stream = _stream(request)
    text = stream.captions.to_webvtt(caption_lang(request))
    return web.Response(text=text, content_type="text/vtt", charset="utf-8")
