"""Built-in Livepeer trickle server: named channels of segments, streamed over plain HTTP.

Wire semantics follow go-livepeer's `trickle/trickle_server.go` (see shared/reference/livepeer.md §2):

- `POST {prefix}{ch}/{seq}` publishes one segment; its chunked body reaches subscribers while it uploads.
- `GET {prefix}{ch}/{seq}` subscribes (`-1` = next write, `-2` = current one replayed from byte 0).
- `GET {prefix}{ch}/next`, `DELETE {prefix}{ch}/{seq}`, `DELETE {prefix}{ch}`, `POST {prefix}{ch}`.
- Headers `Lp-Trickle-Seq`, `Lp-Trickle-Latest`, `Lp-Trickle-Closed`, request header `Lp-Trickle-Reset`.
- 470 = channel open but segment missing; 200 + `Lp-Trickle-Closed` when the channel is closed.

Where this server deliberately differs from go-livepeer (all for bounded memory or robustness):
- A segment body is capped at `max_segment_bytes` (413); a segment evicted from the ring frees its
  bytes at once, so a reader still on it sees the segment end early. Memory per channel is therefore
  at most `window * max_segment_bytes`.
- A POST whose body fails mid-upload closes its segment (Go leaves it open), so readers are not stuck.
- A POST to a segment that already ended starts that segment afresh instead of appending to it.
- The number of channels is capped (`max_channels`); autocreate beyond it answers 503.
- Error bodies are JSON `{"error": {"code", "message"}}`; clients only read the status and headers.
- No `100 Continue` keepalive while a preconnected POST waits for its first byte: aiohttp applies no
  body read timeout, so the connection simply stays open.

Everything runs on the event loop; no locks are needed because no handler awaits mid-update.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError

from media.http_routes import Role, RouteTable

log = logging.getLogger(__name__)

HEADER_SEQ = "Lp-Trickle-Seq"
HEADER_LATEST = "Lp-Trickle-Latest"
HEADER_CLOSED = "Lp-Trickle-Closed"
HEADER_RESET = "Lp-Trickle-Reset"
STATUS_SEGMENT_MISSING = 470
CLOSED_VALUE = "terminated"
SEQ_NEXT = -1
SEQ_CURRENT = -2

# How often a GET waiting for data checks whether its client went away.
DISCONNECT_POLL_S = 1.0
# Largest piece handed to one response write; readers copy at most this much at a time.
READ_CHUNK_BYTES = 64 * 1024

_INT_RE = re.compile(r"[+-]?[0-9]+")
# What reading a request body raises when the client goes away or sends a broken body.
_BODY_ERRORS = (OSError, asyncio.IncompleteReadError, ClientPayloadError, HttpProcessingError)


class TrickleChannelLimitError(RuntimeError):
    """Raised by `create_channel` when `max_channels` channels already exist."""


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def _parse_idx(text: str) -> int | None:
    # Go's strconv.Atoi: ASCII digits with an optional sign, nothing else.
    if not _INT_RE.fullmatch(text):
        return None
    return int(text)


class _Segment:
    """One segment's bytes plus the wake-ups its readers wait on."""

    __slots__ = ("idx", "data", "closed", "evicted", "closed_event", "_wake")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.data = bytearray()
        self.closed = False
        self.evicted = False
        self.closed_event = asyncio.Event()
        self._wake = asyncio.Event()

    def _notify(self) -> None:
        # Wake every current waiter; later waiters get a fresh event.
        self._wake.set()
        self._wake = asyncio.Event()

    def append(self, data: bytes) -> None:
        if self.closed:
            return
        self.data += data
        self._notify()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.closed_event.set()
            self._notify()

    def evict(self) -> None:
        """Close and free the bytes: a reader still on this segment sees it end."""
        self.close()
        if not self.evicted:
            self.evicted = True
            self.data = bytearray()
            self._notify()

    def read_at(self, pos: int) -> tuple[bytes | None, bool]:
        """(chunk, eof) from byte `pos`; chunk None means "nothing yet, wait"."""
        if self.evicted:
            return b"", True
        size = len(self.data)
        if pos < size:
            chunk = bytes(self.data[pos : pos + READ_CHUNK_BYTES])
            return chunk, self.closed and pos + len(chunk) == size
        if self.closed:
            return b"", True
        return None, False

    def wake_event(self) -> asyncio.Event:
        return self._wake


class TrickleChannel:
    """A named sequence of segments; the last `window` are kept in a ring (slot = idx % window)."""

    def __init__(self, name: str, mime: str, window: int) -> None:
        self.name = name
        self.mime = mime
        self.window = window
        self.next_write = 0
        self.write_time = time.monotonic()
        self.closed = False
        self.segments_published = 0
        self.bytes_published = 0
        self._ring: list[_Segment | None] = [None] * window

    # -- ring -----------------------------------------------------------------------------------
    def segment_for_write(self, idx: int) -> _Segment:
        if idx == SEQ_NEXT:
            idx = self.next_write
        slot = idx % self.window
        current = self._ring[slot]
        if current is not None:
            if current.idx == idx and not current.closed:
                return current
            # An older segment gives way (its bytes are freed); an ended one being re-posted
            # is started afresh (its readers already saw it end).
            if current.idx != idx:
                current.evict()
        segment = _Segment(idx)
        self._ring[slot] = segment
        return segment

    def segment_for_read(self, idx: int) -> tuple[int, _Segment | None, int, bool]:
        """(resolved idx, segment or None, next_write, closed); may pre-create the next segment."""
        if idx == SEQ_NEXT:
            idx = self.next_write
        elif idx == SEQ_CURRENT:
            idx = self.next_write - 1 if self.next_write > 0 else 0
        slot = idx % self.window
        segment = self._ring[slot]
        exists = segment is not None and segment.idx == idx
        just_ahead = idx == self.next_write or (self.next_write == 0 and idx == 1)
        if not exists and just_ahead and not self.closed:
            if segment is not None:
                segment.evict()
            segment = _Segment(idx)
            self._ring[slot] = segment
            exists = True
            log.debug("trickle channel=%s precreated seq=%d next=%d", self.name, idx, self.next_write)
        return idx, (segment if exists else None), self.next_write, self.closed

    def segment_at(self, idx: int) -> _Segment | None:
        segment = self._ring[idx % self.window]
        return segment if segment is not None and segment.idx == idx else None

    def close_below(self, idx: int) -> None:
        for segment in self._ring:
            if segment is not None and segment.idx < idx:
                segment.close()

    def mark_write(self, idx: int) -> None:
        self.next_write = idx + 1
        self.write_time = time.monotonic()

    def close(self) -> None:
        self.closed = True
        for segment in self._ring:
            if segment is not None:
                segment.close()
        # Readers mid-segment keep their reference and finish; the ring lets go.
        self._ring = [None] * self.window

    # -- figures --------------------------------------------------------------------------------
    def bytes_held(self) -> int:
        return sum(len(s.data) for s in self._ring if s is not None)

    def segments_held(self) -> int:
        return sum(1 for s in self._ring if s is not None)

    def stats(self) -> dict[str, Any]:
        return {
            "mime": self.mime,
            "next_write": self.next_write,
            "closed": self.closed,
            "segments_held": self.segments_held(),
            "bytes_held": self.bytes_held(),
            "segments_published": self.segments_published,
            "bytes_published": self.bytes_published,
            "idle_s": round(time.monotonic() - self.write_time, 3),
        }


class _ClientGone(Exception):
    pass


class TrickleServer:
    """Holds the channels and serves the trickle routes on an aiohttp application."""

    def __init__(
        self,
        *,
        autocreate: bool = True,
        idle_timeout: float = 300.0,
        sweep_interval: float = 60.0,
        max_segment_bytes: int = 32 * 1024 * 1024,
        max_channels: int = 256,
        window: int = 5,
    ) -> None:
        if window < 1 or max_channels < 1 or max_segment_bytes < 1:
            raise ValueError("window, max_channels and max_segment_bytes must be positive")
        self.autocreate = autocreate
        self.idle_timeout = idle_timeout
        self.sweep_interval = sweep_interval
        self.max_segment_bytes = max_segment_bytes
        self.max_channels = max_channels
        self.window = window
        self._channels: dict[str, TrickleChannel] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._counters = {
            "channels_created": 0,
            "channels_closed": 0,
            "channels_swept": 0,
            "segments_published": 0,
            "bytes_published": 0,
            "rejected_oversize": 0,
            "rejected_channel_limit": 0,
            "post_errors": 0,
        }

    # -- channel API ----------------------------------------------------------------------------
    def create_channel(self, name: str, mime: str = "video/MP2T") -> TrickleChannel:
        """Create `name` (idempotent: an existing channel is returned as it is)."""
        if not name or "/" in name:
            raise ValueError(f"invalid trickle channel name {name!r}")
        channel = self._channels.get(name)
        if channel is not None:
            if not channel.mime and mime:
                channel.mime = mime
            return channel
        if len(self._channels) >= self.max_channels:
            self._counters["rejected_channel_limit"] += 1
            raise TrickleChannelLimitError(f"trickle channel limit reached ({self.max_channels})")
        channel = TrickleChannel(name, mime, self.window)
        self._channels[name] = channel
        self._counters["channels_created"] += 1
        log.info("trickle channel=%s created mime=%s", name, mime or "-")
        return channel

    async def close_channel(self, name: str) -> bool:
        """Mark `name` closed, wake every reader and waiting publisher, and remove it."""
        channel = self._channels.pop(name, None)
        if channel is None:
            return False
        channel.close()
        self._counters["channels_closed"] += 1
        log.info("trickle channel=%s closed", name)
        return True

    def has_channel(self, name: str) -> bool:
        return name in self._channels

    def channel_names(self) -> list[str]:
        return list(self._channels)

    def stats(self) -> dict[str, Any]:
        channels = {name: ch.stats() for name, ch in self._channels.items()}
        return {
            "channels": len(channels),
            "max_channels": self.max_channels,
            "window": self.window,
            "max_segment_bytes": self.max_segment_bytes,
            "segments_held": sum(c["segments_held"] for c in channels.values()),
            "bytes_held": sum(c["bytes_held"] for c in channels.values()),
            **self._counters,
            "per_channel": channels,
        }

    # -- lifecycle ------------------------------------------------------------------------------
    def add_routes(self, app: web.Application, prefix: str = "/ai/trickle/") -> None:
        base = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
        table = RouteTable()
        opts = dict(role=Role.TRICKLE, content_types=None, stream_body=True, tag="trickle", response_type="",
                    errors=(400, 404, 413, 470, 503))
        table.add("GET", base + "{channel}/next", self._handle_next, summary="Index of the next segment", **opts)
        table.add("GET", base + "{channel}/{seq}", self._handle_get, **{**opts, "response_type": "*/*"},
                  summary="Read a segment as it is written (-1 next, -2 current)")
        table.add("POST", base + "{channel}/{seq}", self._handle_post,
                  summary="Publish a segment (chunked body, streamed to readers)", **opts)
        table.add("DELETE", base + "{channel}/{seq}", self._handle_delete_segment, summary="Close a segment", **opts)
        table.add("POST", base + "{channel}", self._handle_create, summary="Create a channel", **opts)
        table.add("DELETE", base + "{channel}", self._handle_delete_channel, summary="Close a channel", **opts)
        table.mount(app)
        app.on_startup.append(self._on_startup)
        # Closing channels at shutdown wakes blocked GETs/POSTs before aiohttp waits for handlers.
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)

    async def start(self) -> None:
        """Start the idle sweeper (done by the app's on_startup hook)."""
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep_loop(), name="trickle-sweeper")

    async def close(self) -> None:
        """Close every channel and stop the sweeper."""
        for name in list(self._channels):
            await self.close_channel(name)
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            try:
                await sweeper
            except asyncio.CancelledError:
                pass

    async def _on_startup(self, app: web.Application) -> None:
        await self.start()

    async def _on_shutdown(self, app: web.Application) -> None:
        for name in list(self._channels):
            await self.close_channel(name)

    async def _on_cleanup(self, app: web.Application) -> None:
        await self.close()

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            await self.sweep_idle()

    async def sweep_idle(self) -> list[str]:
        """Close channels without a new segment for `idle_timeout`; names starting `_` are exempt."""
        now = time.monotonic()
        idle = [
            name
            for name, ch in self._channels.items()
            if not name.startswith("_") and now - ch.write_time > self.idle_timeout
        ]
        for name in idle:
            if await self.close_channel(name):
                self._counters["channels_swept"] += 1
                log.info("trickle channel=%s swept after %.1fs idle", name, self.idle_timeout)
        return idle

    # -- handlers -------------------------------------------------------------------------------
    def _autocreate(self, name: str, mime: str) -> TrickleChannel | None:
        channel = self._channels.get(name)
        if channel is not None or not self.autocreate:
            return channel
        return self.create_channel(name, mime)

    async def _handle_create(self, request: web.Request) -> web.Response:
        name = request.match_info["channel"]
        try:
            channel = self._autocreate(name, request.headers.get("Expect-Content", ""))
        except TrickleChannelLimitError as exc:
            return _error(503, "too_many_channels", str(exc))
        if channel is None:
            return _error(404, "channel_not_found", "Stream not found")
        return web.Response(status=200)

    async def _handle_delete_channel(self, request: web.Request) -> web.Response:
        name = request.match_info["channel"]
        if not await self.close_channel(name):
            return _error(400, "invalid_stream", "Invalid stream")
        return web.Response(status=200)

    async def _handle_delete_segment(self, request: web.Request) -> web.Response:
        name = request.match_info["channel"]
        channel = self._channels.get(name)
        if channel is None:
            return _error(404, "channel_not_found", "Stream not found")
        idx = _parse_idx(request.match_info["seq"])
        if idx is None or idx < 0:
            return _error(400, "invalid_idx", "Invalid idx")
        segment = channel.segment_at(idx)
        if segment is None:
            return _error(400, "nonexistent_segment", "Nonexistent segment")
        log.info("trickle channel=%s DELETE closing seq=%d", name, idx)
        segment.close()
        return web.Response(status=200)

    async def _handle_next(self, request: web.Request) -> web.Response:
        channel = self._channels.get(request.match_info["channel"])
        if channel is None:
            return _error(404, "channel_not_found", "Stream not found")
        headers = {HEADER_LATEST: str(channel.next_write)}
        if channel.closed:
            headers[HEADER_CLOSED] = CLOSED_VALUE
        return web.Response(status=200, text=str(channel.next_write), headers=headers)

    async def _handle_post(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["channel"]
        content_type = request.headers.get("Content-Type", "")
        try:
            channel = self._autocreate(name, content_type)
        except TrickleChannelLimitError as exc:
            response = _error(503, "too_many_channels", str(exc))
            response.force_close()
            return response
        if channel is None:
            response = _error(404, "channel_not_found", "Stream not found")
            response.force_close()  # wakes idle preconnects
            return response
        idx = _parse_idx(request.match_info["seq"])
        if idx is None or idx < SEQ_NEXT:
            return _error(400, "invalid_idx", "Invalid idx")
        segment = channel.segment_for_write(idx)
        if request.headers.get(HEADER_RESET):
            # Publisher restarted: unblock readers of older segments, keep preconnected later ones.
            channel.close_below(segment.idx)
        if not channel.mime and content_type:
            channel.mime = content_type
        log.debug("trickle channel=%s POST seq=%d next=%d", name, segment.idx, channel.next_write)

        try:
            first = await self._first_chunk(request, segment)
        except _BODY_ERRORS as exc:
            return self._post_failed(channel, segment, 0, exc)
        if not first:
            # Empty body or a preconnect whose segment/channel closed: still advance the write head.
            channel.mark_write(segment.idx)
            headers = {HEADER_SEQ: str(segment.idx)}
            if channel.closed:
                headers[HEADER_CLOSED] = CLOSED_VALUE
            segment.close()
            response = web.Response(status=200, headers=headers)
            response.force_close()
            return response

        started = time.monotonic()
        channel.mark_write(segment.idx)
        total = 0
        chunk = first
        try:
            while chunk:
                if total + len(chunk) > self.max_segment_bytes:
                    segment.append(chunk[: self.max_segment_bytes - total])  # readers get exactly the cap
                    return self._post_oversize(channel, segment, self.max_segment_bytes)
                segment.append(chunk)  # no-op once the segment was deleted/evicted/closed
                total += len(chunk)
                chunk = await request.content.readany()
        except _BODY_ERRORS as exc:
            return self._post_failed(channel, segment, total, exc)
        segment.close()
        channel.segments_published += 1
        channel.bytes_published += total
        self._counters["segments_published"] += 1
        self._counters["bytes_published"] += total
        log.debug(
            "trickle channel=%s POST completed seq=%d bytes=%d took=%.3fs",
            name, segment.idx, total, time.monotonic() - started,
        )
        return web.Response(status=200, headers={HEADER_SEQ: str(segment.idx)})

    async def _first_chunk(self, request: web.Request, segment: _Segment) -> bytes:
        """Wait for the body's first bytes, or b"" at EOF or when the segment is closed meanwhile."""
        if segment.closed:
            return b""
        read = asyncio.ensure_future(request.content.readany())
        closed = asyncio.ensure_future(segment.closed_event.wait())
        try:
            await asyncio.wait({read, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (read, closed):
                if not task.done():
                    task.cancel()
            await asyncio.gather(read, closed, return_exceptions=True)
        if read.done() and not read.cancelled():
            return read.result()  # re-raises a body read error
        return b""

    def _post_oversize(self, channel: TrickleChannel, segment: _Segment, total: int) -> web.Response:
        segment.close()
        self._counters["rejected_oversize"] += 1
        log.warning(
            "trickle channel=%s POST seq=%d over %d bytes, segment closed at %d bytes",
            channel.name, segment.idx, self.max_segment_bytes, total,
        )
        response = _error(
            413, "segment_too_large", f"segment body exceeds {self.max_segment_bytes} bytes",
            headers={HEADER_SEQ: str(segment.idx)},
        )
        response.force_close()  # the rest of the body is not read
        return response

    def _post_failed(self, channel: TrickleChannel, segment: _Segment, total: int, exc: BaseException) -> web.Response:
        segment.close()  # readers see the segment end rather than hang
        self._counters["post_errors"] += 1
        log.info(
            "trickle channel=%s error reading POST body seq=%d bytes=%d: %r", channel.name, segment.idx, total, exc
        )
        response = _error(500, "body_read_error", "Server error")
        response.force_close()
        return response

    async def _handle_get(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["channel"]
        channel = self._channels.get(name)
        if channel is None:
            return _error(404, "channel_not_found", "Stream not found")
        idx = _parse_idx(request.match_info["seq"])
        if idx is None or idx < SEQ_CURRENT:
            return _error(400, "invalid_idx", "Invalid idx")
        idx, segment, latest, closed = channel.segment_for_read(idx)
        if segment is None:
            headers = {HEADER_LATEST: str(latest), HEADER_SEQ: str(idx)}
            if closed:
                headers[HEADER_CLOSED] = CLOSED_VALUE
                return web.Response(status=200, headers=headers)
            return _error(STATUS_SEGMENT_MISSING, "segment_not_found", "Entry not found", headers=headers)

        response: web.StreamResponse | None = None
        pos = 0
        try:
            while True:
                wake = segment.wake_event()
                chunk, eof = segment.read_at(pos)
                if chunk is None:
                    await self._wait_for_data(request, wake)
                    continue
                if chunk:
                    if response is None:
                        # Headers go out with the first byte, as go-livepeer does.
                        response = web.StreamResponse(status=200)
                        if segment.idx != latest:
                            response.headers[HEADER_LATEST] = str(latest)
                        response.headers[HEADER_SEQ] = str(segment.idx)
                        response.headers["Content-Type"] = channel.mime or "application/octet-stream"
                        await response.prepare(request)
                    await response.write(chunk)  # one flush per chunk; drains at the reader's pace
                    pos += len(chunk)
                if eof:
                    break
        except _ClientGone:
            log.debug("trickle channel=%s GET seq=%d client went away while waiting", name, segment.idx)
            return response or web.Response(status=499)
        except (ConnectionError, OSError) as exc:
            log.debug("trickle channel=%s GET seq=%d client write failed after %d bytes: %r", name, segment.idx, pos, exc)
            return response or web.Response(status=499)

        if response is None:
            # The segment ended with no bytes (dropped, deleted, or the channel closed).
            headers = {HEADER_SEQ: str(segment.idx), HEADER_LATEST: str(channel.next_write)}
            if channel.closed:
                headers[HEADER_CLOSED] = CLOSED_VALUE
            return web.Response(status=200, headers=headers)
        try:
            await response.write_eof()
        except (ConnectionError, OSError):
            pass
        return response

    @staticmethod
    async def _wait_for_data(request: web.Request, wake: asyncio.Event) -> None:
        while not wake.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                raise _ClientGone()
            try:
                async with asyncio.timeout(DISCONNECT_POLL_S):
                    await wake.wait()
            except TimeoutError:
                pass

