"""Built-in Livepeer trickle server: named channels of segments, streamed over plain HTTP.

Wire semantics follow go-livepeer's `trickle/trickle_server.go`:

- `POST {prefix}{ch}/{seq}` publishes one segment; its chunked body reaches subscribers while it uploads.
- `GET {prefix}{ch}/{seq}` subscribes (`-1` = next write, `-2` = current one replayed from byte 0).
- `GET {prefix}{ch}/next`, `DELETE {prefix}{ch}/{seq}`, `DELETE {prefix}{ch}`, `POST {prefix}{ch}`.
- Headers `Lp-Trickle-Seq`, `Lp-Trickle-Latest`, `Lp-Trickle-Closed`, request header `Lp-Trickle-Reset`.
- 470 = channel open but segment missing; 200 + `Lp-Trickle-Closed` when the channel is closed.

Where this server deliberately differs from go-livepeer (all for bounded memory or robustness):
- A segment body is capped at `max_segment_bytes` (413); a segment evicted from the ring frees its
  bytes at once, so a reader still on it sees the segment end early. Memory per channel is therefore
  at most `window * max_segment_bytes`.
- All channels together hold at most `max_total_bytes` of segment bytes (counted from the first
  byte until the segment is evicted, including ended segments a reader still reads after their
  channel closed). When a write would pass it, the channel holding the most bytes (at least as
  much as the writer's) gives up its oldest segment, ended ones first; when nothing can give way
  the write is refused with 503 (`rejected_budget`). Small live streams keep flowing while a few
  large publishers are cut back.
- A POST body that sends nothing for `body_timeout` seconds after its first byte is closed with
  408 (`post_body_timeouts`); a preconnected POST waiting for its first byte is bounded by the
  channel's idle sweep instead.
- Readers are capped per channel and in total (`max_subscribers_per_channel`, `max_subscribers`):
  one more GET gets 503.
- A POST whose body fails mid-upload closes its segment (Go leaves it open), so readers are not stuck.
- A POST to a segment that already ended starts that segment afresh instead of appending to it.
- The number of channels is capped (`max_channels`); autocreate beyond it answers 503.
- Error bodies are JSON `{"error": {"code", "message"}}`; clients only read the status and headers.
- A segment is served as `application/octet-stream` unless its channel's type is one of the media
  types trickle carries (`SERVED_TYPES`: MPEG-TS, JSON, JSON lines), always with
  `X-Content-Type-Options: nosniff`: a publisher cannot make a browser render its bytes as a page
  of this origin (Go echoes the publisher's type).
- Every channel idle for `idle_timeout` is swept, whatever its name.
- No `100 Continue` keepalive while a preconnected POST waits for its first byte: the connection
  simply stays open until data, a close, or the idle sweep.

Everything runs on the event loop; no locks are needed because no handler awaits mid-update.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import re
import time
from typing import Any

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError

from httpapi.errors import json_error
from httpapi.routes import Role, RouteTable
from trickle.protocol import HEADER_CLOSED, HEADER_LATEST, HEADER_RESET, HEADER_SEQ, STATUS_SEGMENT_MISSING

log = logging.getLogger(__name__)

CLOSED_VALUE = "terminated"
SEQ_NEXT = -1
SEQ_CURRENT = -2

# How often a GET waiting for data checks whether its client went away.
DISCONNECT_POLL_S = 1.0
# Largest piece handed to one response write; readers copy at most this much at a time.
READ_CHUNK_BYTES = 64 * 1024
# Smallest piece a segment keeps its bytes in (small writes are gathered up to this).
PIECE_BYTES = 64 * 1024

_INT_RE = re.compile(r"[+-]?[0-9]+")
# The types a segment is served as when its publisher said so (lower case, parameters dropped):
# video segments, and the JSON of Livepeer's events and data channels. Anything else (text/html, an
# SVG...) goes out as application/octet-stream, so a browser never renders it.
SERVED_TYPES = frozenset({"video/mp2t", "application/json", "application/jsonl"})
OCTET_STREAM = "application/octet-stream"


def served_type(mime: str) -> str:
    """The Content-Type a segment of a channel of type `mime` is served with."""
    essence = mime.split(";", 1)[0].strip().lower()
    return essence if essence in SERVED_TYPES else OCTET_STREAM


# What reading a request body raises when the client goes away or sends a broken body.
_BODY_ERRORS = (OSError, asyncio.IncompleteReadError, ClientPayloadError, HttpProcessingError)


class TrickleChannelLimitError(RuntimeError):
    """Raised by `create_channel` when `max_channels` channels already exist."""


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    # returned, not raised: the trickle server also runs on a bare app (no error middleware), and
    # some answers must force-close the connection; the body is still the one error shape
    return json_error(status, message, code=code, headers=headers)


def _parse_idx(text: str) -> int | None:
    # Go's strconv.Atoi: ASCII digits with an optional sign, nothing else.
    if not _INT_RE.fullmatch(text):
        return None
    return int(text)


class _Budget:
    """Segment bytes held across every channel, against `max_total_bytes`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        # ended segments that left their ring while a reader was still on them (bounded by the
        # subscriber caps); evicted when their last reader leaves, or first under pressure
        self.orphans: set[_Segment] = set()

    def retire(self, segment: _Segment) -> None:
        """`segment` leaves its ring: its readers finish it, then its bytes are freed."""
        segment.close()
        if segment.readers:
            self.orphans.add(segment)
        else:
            segment.evict()


class _Segment:
    """One segment's bytes plus the wake-ups its readers wait on.

    The bytes are kept as a list of immutable pieces of at least `PIECE_BYTES` (small writes
    gather in a short tail first) rather than one growing buffer: a growing multi-MiB buffer is
    copied on every resize and leaves the allocator fragmented, so the process would hold far
    more than the budget counts. Readers get zero-copy views of the pieces."""

    __slots__ = (
        "idx",
        "pieces",
        "ends",
        "tail",
        "size",
        "closed",
        "evicted",
        "closed_event",
        "readers",
        "_wake",
        "_budget",
    )

    def __init__(self, idx: int, budget: _Budget) -> None:
        self.idx = idx
        self.pieces: list[bytes] = []
        self.ends: list[int] = []  # end offset of each piece, for bisecting a reader's position
        self.tail = bytearray()  # bytes not yet gathered into a piece
        self.size = 0
        self.closed = False
        self.evicted = False
        self.readers = 0
        self.closed_event = asyncio.Event()
        self._wake = asyncio.Event()
        self._budget = budget

    def _notify(self) -> None:
        # Wake every current waiter; later waiters get a fresh event.
        self._wake.set()
        self._wake = asyncio.Event()

    def append(self, data: bytes) -> None:
        if self.closed or not data:
            return
        if not self.tail and len(data) >= PIECE_BYTES:
            self.pieces.append(bytes(data))
        else:
            self.tail += data
            if len(self.tail) >= PIECE_BYTES:
                self.pieces.append(bytes(self.tail))
                self.tail = bytearray()
        self.size += len(data)
        if self.pieces and (not self.ends or self.ends[-1] != self.size - len(self.tail)):
            self.ends.append(self.size - len(self.tail))
        self._budget.held += len(data)
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
            self._budget.held -= self.size
            self._budget.orphans.discard(self)
            self.pieces, self.ends, self.tail, self.size = [], [], bytearray(), 0
            self._notify()

    def read_at(self, pos: int) -> tuple[bytes | memoryview | None, bool]:
        """(chunk, eof) from byte `pos`; chunk None means "nothing yet, wait"."""
        if self.evicted:
            return b"", True
        gathered = self.ends[-1] if self.ends else 0
        if pos < gathered:
            index = bisect.bisect_right(self.ends, pos)
            offset = pos - (self.ends[index] - len(self.pieces[index]))
            chunk: bytes | memoryview = memoryview(self.pieces[index])[offset : offset + READ_CHUNK_BYTES]
        elif pos < self.size:
            offset = pos - gathered
            chunk = bytes(self.tail[offset : offset + READ_CHUNK_BYTES])
        elif self.closed:
            return b"", True
        else:
            return None, False
        return chunk, self.closed and pos + len(chunk) == self.size

    def wake_event(self) -> asyncio.Event:
        return self._wake


class TrickleChannel:
    """A named sequence of segments; the last `window` are kept in a ring (slot = idx % window)."""

    def __init__(self, name: str, mime: str, window: int, budget: _Budget | None = None) -> None:
        self.name = name
        self.budget = budget or _Budget(1 << 62)
        self.mime = mime
        self.window = window
        self.next_write = 0
        self.write_time = time.monotonic()
        self.closed = False
        self.segments_published = 0
        self.bytes_published = 0
        self.subscribers = 0  # GETs being served on this channel
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
            # is started afresh (its readers finish the old bytes).
            if current.idx != idx:
                current.evict()
            else:
                self.budget.retire(current)
        segment = _Segment(idx, self.budget)
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
            segment = _Segment(idx, self.budget)
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
                # Readers mid-segment finish it (its bytes stay counted until then); the ring lets go.
                self.budget.retire(segment)
        self._ring = [None] * self.window

    def oldest_evictable(self, keep: _Segment | None) -> _Segment | None:
        """The segment to give up under memory pressure: the oldest ended one holding bytes, else
        the oldest still being written; never `keep` (the segment its own writer is filling)."""
        held = [s for s in self._ring if s is not None and s is not keep and s.size]
        if not held:
            return None
        return min(held, key=lambda s: (not s.closed, s.idx))

    # -- figures --------------------------------------------------------------------------------
    def bytes_held(self) -> int:
        return sum(s.size for s in self._ring if s is not None)

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
        max_total_bytes: int = 256 * 1024 * 1024,
        body_timeout: float = 30.0,
        max_subscribers_per_channel: int = 16,
        max_subscribers: int = 512,
    ) -> None:
        if (
            min(window, max_channels, max_segment_bytes, max_total_bytes, max_subscribers_per_channel, max_subscribers)
            < 1
            or body_timeout <= 0
        ):
            raise ValueError("window, max_channels, byte limits, subscriber caps and body_timeout must be positive")
        self.autocreate = autocreate
        self.idle_timeout = idle_timeout
        self.sweep_interval = sweep_interval
        self.max_segment_bytes = max_segment_bytes
        self.max_channels = max_channels
        self.window = window
        self.body_timeout = body_timeout
        self.max_subscribers_per_channel = max_subscribers_per_channel
        self.max_subscribers = max_subscribers
        self._budget = _Budget(max_total_bytes)
        self._subscribers = 0  # GETs being served, all channels
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
            "rejected_budget": 0,  # writes refused: memory budget full (503)
            "segments_evicted_budget": 0,  # segments given up early to stay under the budget
            "post_body_timeouts": 0,  # POST bodies that stalled for body_timeout (408)
            "rejected_subscribers_channel": 0,  # GETs refused: channel's reader cap (503)
            "rejected_subscribers_total": 0,  # GETs refused: server's reader cap (503)
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
        channel = TrickleChannel(name, mime, self.window, self._budget)
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
            "bytes_held": self._budget.held,  # includes ended segments still being read after a close
            "max_total_bytes": self._budget.limit,
            "subscribers": self._subscribers,
            "max_subscribers": self.max_subscribers,
            "max_subscribers_per_channel": self.max_subscribers_per_channel,
            **self._counters,
            "per_channel": channels,
        }

    # -- lifecycle ------------------------------------------------------------------------------
    def add_routes(self, app: web.Application, prefix: str = "/ai/trickle/") -> None:
        base = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
        # `/next` must be registered before `/{seq}` so it wins. Every route is role `trickle`;
        # segment bodies are streamed by the handlers (no pre-read, any Content-Type).
        table = RouteTable()
        # response bodies: the channel's own MIME type (GET), nothing (the rest)
        opts: dict[str, Any] = dict(
            role=Role.TRICKLE,
            content_types=None,
            stream_body=True,
            tag="trickle",
            response_type="",
            errors=(400, 404, 408, 413, 470, 503),
        )
        table.add("GET", base + "{channel}/next", self._handle_next, summary="Index of the next segment", **opts)
        table.add(
            "GET",
            base + "{channel}/{seq}",
            self._handle_get,
            **{**opts, "response_type": "*/*"},
            summary="Read a segment as it is written (-1 next, -2 current)",
        )
        table.add(
            "POST",
            base + "{channel}/{seq}",
            self._handle_post,
            summary="Publish a segment (chunked body, streamed to readers)",
            **opts,
        )
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
        """Close channels without a new segment for `idle_timeout`, whatever their name (no name
        may park a channel here forever)."""
        now = time.monotonic()
        idle = [name for name, ch in self._channels.items() if now - ch.write_time > self.idle_timeout]
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
                    chunk = chunk[: self.max_segment_bytes - total]  # readers get exactly the cap
                    if self._make_room(channel, segment, len(chunk)):
                        segment.append(chunk)
                    return self._post_oversize(channel, segment, self.max_segment_bytes)
                if not segment.closed and not self._make_room(channel, segment, len(chunk)):
                    return self._post_over_budget(channel, segment, total)
                segment.append(chunk)  # no-op once the segment was deleted/evicted/closed
                total += len(chunk)
                async with asyncio.timeout(self.body_timeout):
                    chunk = await request.content.readany()
        except TimeoutError:
            return self._post_stalled(channel, segment, total)
        except _BODY_ERRORS as exc:
            return self._post_failed(channel, segment, total, exc)
        segment.close()
        channel.segments_published += 1
        channel.bytes_published += total
        self._counters["segments_published"] += 1
        self._counters["bytes_published"] += total
        log.debug(
            "trickle channel=%s POST completed seq=%d bytes=%d took=%.3fs",
            name,
            segment.idx,
            total,
            time.monotonic() - started,
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

    # -- memory budget ---------------------------------------------------------------------------
    def _make_room(self, channel: TrickleChannel, writing: _Segment, need: int) -> bool:
        """Evict until `need` more bytes fit in the budget; False when nothing may give way."""
        budget = self._budget
        while budget.held + need > budget.limit:
            victim = self._eviction_victim(channel, writing)
            if victim is None:
                return False
            victim.evict()
            self._counters["segments_evicted_budget"] += 1
        return True

    def _eviction_victim(self, channel: TrickleChannel, writing: _Segment) -> _Segment | None:
        if self._budget.orphans:
            return next(iter(self._budget.orphans))  # their channel is gone already
        # Only a channel holding at least as much as the writer's gives way, largest first: a
        # big publisher cannot push out a small live stream.
        own = channel.bytes_held()
        for candidate in sorted(self._channels.values(), key=lambda ch: ch.bytes_held(), reverse=True):
            if candidate.bytes_held() < own:
                break
            victim = candidate.oldest_evictable(keep=writing)
            if victim is not None:
                return victim
        return None

    def _post_over_budget(self, channel: TrickleChannel, segment: _Segment, total: int) -> web.Response:
        segment.close()
        self._counters["rejected_budget"] += 1
        log.warning(
            "trickle channel=%s POST seq=%d refused after %d bytes: memory budget of %d bytes is full",
            channel.name,
            segment.idx,
            total,
            self._budget.limit,
        )
        response = _error(
            503,
            "trickle_budget_full",
            f"trickle server memory budget full ({self._budget.held} of {self._budget.limit} bytes held); retry later",
            headers={HEADER_SEQ: str(segment.idx), "Retry-After": "1"},
        )
        response.force_close()  # the rest of the body is not read
        return response

    def _post_stalled(self, channel: TrickleChannel, segment: _Segment, total: int) -> web.Response:
        segment.close()  # readers see the segment end rather than wait on a stalled publisher
        self._counters["post_body_timeouts"] += 1
        log.info(
            "trickle channel=%s POST seq=%d body stalled for %.1fs after %d bytes, segment closed",
            channel.name,
            segment.idx,
            self.body_timeout,
            total,
        )
        response = _error(
            408, "body_timeout", f"no segment data for {self.body_timeout:g} s", headers={HEADER_SEQ: str(segment.idx)}
        )
        response.force_close()
        return response

    def _post_oversize(self, channel: TrickleChannel, segment: _Segment, total: int) -> web.Response:
        segment.close()
        self._counters["rejected_oversize"] += 1
        log.warning(
            "trickle channel=%s POST seq=%d over %d bytes, segment closed at %d bytes",
            channel.name,
            segment.idx,
            self.max_segment_bytes,
            total,
        )
        response = _error(
            413,
            "segment_too_large",
            f"segment body exceeds {self.max_segment_bytes} bytes",
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
        refused = self._subscriber_refusal(channel)
        if refused is not None:
            return refused
        channel.subscribers += 1
        self._subscribers += 1
        try:
            return await self._serve_get(request, channel, idx)
        finally:
            channel.subscribers -= 1
            self._subscribers -= 1

    def _subscriber_refusal(self, channel: TrickleChannel) -> web.Response | None:
        if self._subscribers >= self.max_subscribers:
            self._counters["rejected_subscribers_total"] += 1
            log.info("trickle channel=%s GET refused: %d readers on the server", channel.name, self._subscribers)
            return _error(
                503,
                "too_many_subscribers",
                f"trickle server reader limit reached ({self.max_subscribers})",
                headers={"Retry-After": "1"},
            )
        if channel.subscribers >= self.max_subscribers_per_channel:
            self._counters["rejected_subscribers_channel"] += 1
            log.info("trickle channel=%s GET refused: %d readers on the channel", channel.name, channel.subscribers)
            return _error(
                503,
                "too_many_subscribers",
                f"trickle channel reader limit reached ({self.max_subscribers_per_channel})",
                headers={"Retry-After": "1"},
            )
        return None

    async def _serve_get(self, request: web.Request, channel: TrickleChannel, idx: int) -> web.StreamResponse:
        name = channel.name
        idx, segment, latest, closed = channel.segment_for_read(idx)
        if segment is None:
            headers = {HEADER_LATEST: str(latest), HEADER_SEQ: str(idx)}
            if closed:
                headers[HEADER_CLOSED] = CLOSED_VALUE
                return web.Response(status=200, headers=headers)
            return _error(STATUS_SEGMENT_MISSING, "segment_not_found", "Entry not found", headers=headers)

        response: web.StreamResponse | None = None
        pos = 0
        segment.readers += 1
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
                        response.headers["Content-Type"] = served_type(channel.mime)
                        response.headers["X-Content-Type-Options"] = "nosniff"
                        await response.prepare(request)
                    await response.write(chunk)  # one flush per chunk; drains at the reader's pace
                    pos += len(chunk)
                if eof:
                    break
        except _ClientGone:
            log.debug("trickle channel=%s GET seq=%d client went away while waiting", name, segment.idx)
            return response or web.Response(status=499)
        except (ConnectionError, OSError) as exc:
            log.debug(
                "trickle channel=%s GET seq=%d client write failed after %d bytes: %r", name, segment.idx, pos, exc
            )
            return response or web.Response(status=499)
        finally:
            segment.readers -= 1
            if segment.readers == 0 and segment in self._budget.orphans:
                segment.evict()  # the last reader of a segment whose channel is gone

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
