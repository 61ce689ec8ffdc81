"""Livepeer trickle clients: a subscriber (GET segments) and a publisher (chunked POST per segment).

Behaviour follows the Python clients in ai-runner and pytrickle, which go-livepeer orchestrators
expect (go-livepeer's trickle package: https://github.com/livepeer/go-livepeer/tree/master/trickle):

- Every request sends `Connection: close` and goes through the outbound policy's connector
  (httpapi/outbound.py): denied addresses are refused at connect time, redirects are not followed,
  TLS is verified unless the host is listed in TLS_INSECURE_HOSTS (ai-runner turns verification
  off for every host; here a self-signed orchestrator must be listed).
- Subscriber: starts at `-2` (current segment, replayed from byte 0), keeps one GET preconnected for
  the next seq, jumps to `Lp-Trickle-Latest` on 470, ends on 404 or any `Lp-Trickle-Closed`, and
  retries other failures `max_retries` times `retry_delay` apart. A segment body that sends
  nothing for `read_timeout` seconds is ended (counted in `stalls`) and the next segment is read.
- Publisher: one chunked POST per segment whose body is an async generator fed from a bounded queue,
  one POST preconnected ahead, 404 (or `Lp-Trickle-Closed`) marks the publisher closed (no retry),
  and `close()` DELETEs the channel.

All work happens on the event loop; each instance owns at most a handful of tasks and cancels them
in `close()`.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import AsyncIterablePayload

from httpapi.outbound import OutboundPolicy, client_session, default_policy
from httpapi.redact import redact_text, redact_url
from trickle.protocol import HEADER_CLOSED, HEADER_LATEST, HEADER_RESET, HEADER_SEQ, STATUS_SEGMENT_MISSING

log = logging.getLogger(__name__)


# Segments a subscriber tracks so close() can release them; older ones are closed when exceeded.
MAX_TRACKED_SEGMENTS = 4
# POSTs a publisher keeps open at once (current + preconnected + a couple still finishing).
MAX_OPEN_WRITERS = 4
# The most each step of `TricklePublisher.close()` waits on the server (end the spare POST, DELETE the
# channel, the finished segments' responses together): a stop is prompt whatever the server does.
CLOSE_STEP_TIMEOUT = 2.0


# The bearer token (or None) a request to a URL presents, per outbound policy (one per server app):
# the server's own trickle routes only (server/self_trust.py). Without one, requests send no token.
BearerFor = Callable[[str], str | None]
_BEARERS: weakref.WeakKeyDictionary[OutboundPolicy, BearerFor] = weakref.WeakKeyDictionary()


def set_bearer_source(policy: OutboundPolicy, bearer_for: BearerFor | None) -> None:
    """Clients built with `policy` ask `bearer_for(url)` before each request (None: stop asking)."""
    if bearer_for is None:
        _BEARERS.pop(policy, None)
    else:
        _BEARERS[policy] = bearer_for


def _headers(policy: OutboundPolicy, url: str) -> dict[str, str]:
    headers = {"Connection": "close"}
    bearer_for = _BEARERS.get(policy)
    token = bearer_for(url) if bearer_for is not None else None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def channel_url(url: str) -> str:
    """`url` without a trailing slash on its path (a query, e.g. a signed URL's token, is kept)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # the outbound policy refuses such a URL before any request
        return url.rstrip("/")
    return urlunsplit(parts._replace(path=parts.path.rstrip("/")))


def segment_url(url: str, index: int | str) -> str:
    """The URL of segment `index` of channel `url`: the index ends the path, before any query
    (`http://h/ch?token=x` → `http://h/ch/-2?token=x`)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"{url}/{index}"
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{index}"))


class TrickleChannelClosedError(RuntimeError):
    """The publisher's channel is gone (404 or `Lp-Trickle-Closed`), or the publisher was closed."""


def _int_header(response: aiohttp.ClientResponse, name: str) -> int | None:
    value = response.headers.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _make_session(connect_timeout: float, policy: OutboundPolicy) -> aiohttp.ClientSession:
    # force_close: one connection per request, as `Connection: close` asks; no idle sockets left.
    return client_session(policy, timeout=_timeout(connect_timeout), force_close=True)


def _timeout(connect_timeout: float) -> aiohttp.ClientTimeout:
    # No total/read timeout: a preconnected request may legitimately wait a long time for data.
    return aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_connect=connect_timeout)


class HeadersFirstBody(AsyncIterablePayload):
    """A streamed (chunked) request body whose request headers go out before its first chunk.

    aiohttp holds a request's headers back until the first body chunk so it can coalesce them;
    for a preconnected trickle POST that would mean the server learns of the request only when
    data flows. Sending the headers at once makes the preconnect real (as Go's client does): the
    server has the POST open and waiting, and a 404 for a gone channel comes back immediately."""

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        send_headers = getattr(writer, "send_headers", None)
        if send_headers is not None:
            send_headers()
        await super().write_with_length(writer, content_length)


def _cancelled_from_outside() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


# ---------------------------------------------------------------------------------------------
# Subscriber
# ---------------------------------------------------------------------------------------------
class TrickleSegment:
    """One segment being received; `read()` returns bytes as the server trickles them."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        seq: int,
        read_timeout: float | None = None,
        on_stall: Callable[[], None] | None = None,
    ) -> None:
        self.seq = seq
        self.read_timeout = read_timeout
        self._on_stall = on_stall
        self.latest = _int_header(response, HEADER_LATEST)
        self.content_type = response.headers.get("Content-Type", "")
        self.bytes_read = 0
        self.error: str | None = None  # set when the connection broke mid-segment
        self._response: aiohttp.ClientResponse | None = response

    @property
    def closed(self) -> bool:
        return self._response is None

    async def read(self, n: int = 32 * 1024) -> bytes:
        """Up to `n` bytes as soon as any are available; b"" at segment end (or after an error)."""
        response = self._response
        if response is None:
            return b""
        try:
            async with asyncio.timeout(self.read_timeout):
                chunk = await response.content.read(n)
        except TimeoutError:
            # A publisher that stopped mid-segment: end this segment, the preconnected next one follows.
            self.error = f"no data for {self.read_timeout:g}s"
            log.warning("trickle segment seq=%d stalled after %d bytes: %s", self.seq, self.bytes_read, self.error)
            if self._on_stall is not None:
                self._on_stall()
            chunk = b""
        except (aiohttp.ClientError, OSError) as exc:
            self.error = redact_text(repr(exc))
            log.warning("trickle segment seq=%d broke after %d bytes: %s", self.seq, self.bytes_read, self.error)
            chunk = b""
        if not chunk:
            await self.close()
            return b""
        self.bytes_read += len(chunk)
        return chunk

    async def close(self) -> None:
        self.release()

    def release(self) -> None:
        """Close the connection now (synchronous form of `close()`)."""
        response, self._response = self._response, None
        if response is not None:
            response.close()


class TrickleSubscriber:
    """Reads a trickle channel segment by segment, one GET preconnected ahead.

    `seq` is the index the next request will ask for (`-2`/`-1` until the first segment arrives).
    `ended`/`end_reason` ("not_found", "closed", "retries_exhausted", "client_closed") say why
    `next_segment()` now returns None; `errors` counts failed requests, `stalls` segments whose
    body stopped for `read_timeout` seconds. `policy` decides which addresses may be contacted
    (default: the built-in deny list, verified TLS).
    """

    def __init__(
        self,
        url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        start_seq: int = -2,
        max_retries: int = 5,
        retry_delay: float = 0.5,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        policy: OutboundPolicy | None = None,
    ) -> None:
        self.url = channel_url(url)  # the real URL, for requests only
        self.shown_url = redact_url(self.url)  # for logs and errors: no credentials, no token
        self.seq = start_seq
        self.ended = False
        self.end_reason: str | None = None
        self.errors = 0
        self.stalls = 0
        self.read_timeout = read_timeout
        self.policy = policy or default_policy()
        self.max_retries = max(1, max_retries)
        self.retry_delay = retry_delay
        self.connect_timeout = connect_timeout
        self._session = session
        self._owns_session = session is None
        self._pending: asyncio.Task[aiohttp.ClientResponse | None] | None = None
        self._awaited: asyncio.Task[aiohttp.ClientResponse | None] | None = None
        # bounded by _track: beyond MAX_TRACKED_SEGMENTS the oldest is released (not dropped silently)
        self._segments: deque[TrickleSegment] = deque()  # bounded: MAX_TRACKED_SEGMENTS (_track)
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> TrickleSubscriber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = _make_session(self.connect_timeout, self.policy)
        return self._session

    def _count_stall(self) -> None:
        self.stalls += 1

    def _end(self, reason: str) -> None:
        if not self.ended:
            self.ended = True
            self.end_reason = reason
            log.info("trickle subscriber url=%s ended: %s", self.shown_url, reason)

    async def next_segment(self) -> TrickleSegment | None:
        """The next segment (headers received, body streaming), or None at end of stream."""
        async with self._lock:
            if self.ended:
                return None
            task = self._pending or self._start_preconnect(self.seq)
            self._pending = None
            self._awaited = task  # so close() can cancel it while we wait
            try:
                response = await task
            except asyncio.CancelledError:
                if _cancelled_from_outside():
                    raise
                return None  # close() cancelled the preconnect
            finally:
                self._awaited = None
            if self.ended and self.end_reason == "client_closed":
                if response is not None:
                    response.close()
                return None
            if response is None:
                return None
            if response.headers.get(HEADER_CLOSED):
                response.close()
                self._end("closed")
                return None
            seq = _int_header(response, HEADER_SEQ)
            if seq is None:
                seq = -1
            if seq >= 0:
                self.seq = seq + 1
            segment = TrickleSegment(response, seq, self.read_timeout, self._count_stall)
            self._track(segment)
            if not self.ended:
                self._pending = self._start_preconnect(self.seq)
            return segment

    def _track(self, segment: TrickleSegment) -> None:
        self._segments.append(segment)
        while len(self._segments) > MAX_TRACKED_SEGMENTS:
            # The caller moved on without reading it to the end; free its connection.
            self._segments.popleft().release()

    def _start_preconnect(self, idx: int) -> asyncio.Task[aiohttp.ClientResponse | None]:
        return asyncio.get_running_loop().create_task(self._preconnect(idx), name=f"trickle-sub-{idx}")

    async def _preconnect(self, idx: int) -> aiohttp.ClientResponse | None:
        """GET `{url}/{idx}` until a 200 arrives (returned) or the stream ends (None)."""
        session = self._get_session()
        url = segment_url(self.url, idx)
        for attempt in range(self.max_retries):
            if self.ended:
                return None
            try:
                response = await session.get(
                    url,
                    headers=_headers(self.policy, url),
                    ssl=self.policy.ssl_for(url),
                    allow_redirects=False,
                    timeout=_timeout(self.connect_timeout),
                )
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                self.errors += 1
                log.warning(
                    "trickle subscriber GET %s failed (try %d): %s",
                    redact_url(url),
                    attempt + 1,
                    redact_text(repr(exc)),
                )
            else:
                if response.status == 200:
                    return response
                if response.status == 404:
                    response.close()
                    self._end("not_found")
                    return None
                if response.status == STATUS_SEGMENT_MISSING:
                    # Channel exists, segment doesn't (evicted or too far ahead): go to the leading edge.
                    latest = response.headers.get(HEADER_LATEST) or "-1"
                    response.close()
                    log.info("trickle subscriber %s missing, jumping to latest=%s", redact_url(url), latest)
                    url = segment_url(self.url, latest)
                    continue
                self.errors += 1
                body = await self._short_body(response)
                log.warning(
                    "trickle subscriber GET %s status %d: %s", redact_url(url), response.status, redact_text(body)
                )
            if attempt < self.max_retries - 1:
                await asyncio.sleep(self.retry_delay)
        self._end("retries_exhausted")
        return None

    @staticmethod
    async def _short_body(response: aiohttp.ClientResponse) -> str:
        try:
            return (await response.content.read(512)).decode("utf-8", "replace")
        except (TimeoutError, aiohttp.ClientError, OSError):
            return ""
        finally:
            response.close()

    async def close(self) -> None:
        """Stop: cancel the preconnected GET, close open segments and the owned session."""
        self._end("client_closed")
        pending, self._pending = self._pending, None
        try:
            for task in (pending, self._awaited):
                if task is None:
                    continue
                if not task.done():
                    task.cancel()
                try:
                    response = await task
                except asyncio.CancelledError:
                    if _cancelled_from_outside():
                        raise
                    response = None
                except Exception:  # its failure is already logged; nothing to release
                    response = None
                if response is not None:
                    response.close()
        finally:
            # also when close() itself runs in a cancelled task: segments and session are released
            while self._segments:
                self._segments.popleft().release()
            if self._owns_session and self._session is not None:
                session, self._session = self._session, None
                await asyncio.shield(session.close())


# ---------------------------------------------------------------------------------------------
# Publisher
# ---------------------------------------------------------------------------------------------
class SegmentWriter:
    """One segment's chunked POST. `write()` feeds a bounded queue the request body drains."""

    def __init__(self, publisher: TricklePublisher, seq: int, queue_chunks: int, reset: bool) -> None:
        self.seq = seq
        self.status: int | None = None
        self.error: str | None = None
        self.bytes_written = 0
        self.bytes_dropped = 0
        self._publisher = publisher
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=max(1, queue_chunks))
        self._body_ended = False
        self._finished = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run_post(reset), name=f"trickle-pub-{seq}")

    @property
    def done(self) -> bool:
        """The POST has finished (response received, failed or aborted)."""
        return self._finished.is_set()

    async def _body(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self._queue.get()
            if chunk is None:
                return
            yield chunk

    async def _run_post(self, reset: bool) -> None:
        publisher = self._publisher
        url = segment_url(publisher.url, self.seq)
        headers = {**_headers(publisher.policy, url), "Content-Type": publisher.mime}
        if reset:
            headers[HEADER_RESET] = "1"
        try:
            response = await publisher._get_session().post(
                url,
                data=HeadersFirstBody(self._body(), content_type=publisher.mime),
                headers=headers,
                ssl=publisher.policy.ssl_for(url),
                allow_redirects=False,
                timeout=_timeout(publisher.connect_timeout),
            )
            try:
                self.status = response.status
                if response.status == 404:
                    publisher._mark_closed("not_found")
                elif response.headers.get(HEADER_CLOSED):
                    publisher._mark_closed("closed")
                elif response.status == 200:
                    if self._body_ended:
                        publisher._count_published(self.bytes_written)
                else:
                    text = (await response.content.read(512)).decode("utf-8", "replace")
                    self.error = f"status {response.status}: {text}"
                    log.warning("trickle publisher POST %s failed: %s", redact_url(url), redact_text(self.error))
            finally:
                # close() also cancels aiohttp's body writer if the server answered before the body ended.
                response.close()
        except asyncio.CancelledError:
            self.error = self.error or "aborted"
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.error = redact_text(repr(exc))
            log.warning("trickle publisher POST %s failed: %s", redact_url(url), self.error)
        finally:
            self._finished.set()
            publisher._writer_finished(self)

    async def _put(self, item: bytes | None) -> bool:
        """Queue `item` unless the POST finishes first; False when it could not be queued."""
        if self._finished.is_set():
            return False
        try:
            self._queue.put_nowait(item)
            return True
        except asyncio.QueueFull:
            pass
        put = asyncio.ensure_future(self._queue.put(item))
        finished = asyncio.ensure_future(self._finished.wait())
        try:
            await asyncio.wait({put, finished}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (put, finished):
                if not task.done():
                    task.cancel()
            await asyncio.gather(put, finished, return_exceptions=True)
        return put.done() and not put.cancelled()

    async def write(self, data: bytes) -> None:
        """Queue bytes for the POST body, waiting while the queue is full (backpressure).

        Raises TrickleChannelClosedError once the channel is gone. Bytes for a segment whose POST
        already ended (error, 413, aborted) are dropped and counted in `bytes_dropped`."""
        if self._publisher.closed and self._publisher.end_reason != "client_closed":
            raise TrickleChannelClosedError(f"trickle channel {self._publisher.shown_url} closed")
        if not data:
            return  # an empty chunk would end a chunked body early
        if self._body_ended or not await self._put(bytes(data)):
            self.bytes_dropped += len(data)
            return
        self.bytes_written += len(data)

    async def close(self, timeout: float | None = None) -> int | None:
        """End the body and wait for the response; returns its status (None if it failed)."""
        limit = self._publisher.response_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                if not self._body_ended:
                    self._body_ended = True
                    await self._put(None)  # may wait for queue room while the server reads
                await self._finished.wait()
        except TimeoutError:
            log.warning("trickle publisher seq=%d: no response in %.1fs, aborting", self.seq, limit)
            await self.abort()
        return self.status

    def cancel(self) -> None:
        """Start aborting without waiting (see `abort()`)."""
        self._body_ended = True
        if not self._task.done():
            self._task.cancel()

    async def abort(self) -> None:
        """Drop the POST at once (the connection is closed; the server ends the segment)."""
        self.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            if _cancelled_from_outside():
                raise


class TricklePublisher:
    """Publishes segments to `{url}/{seq}`, one POST preconnected ahead.

    `seq` is the index the next `next_segment()` hands out. `closed` turns true on 404 or
    `Lp-Trickle-Closed` (see `end_reason`) or after `close()`.
    """

    def __init__(
        self,
        url: str,
        *,
        mime: str = "video/mp2t",
        session: aiohttp.ClientSession | None = None,
        start_seq: int = 0,
        write_queue_chunks: int = 8,
        connect_timeout: float = 10.0,
        response_timeout: float = 30.0,
        reset_first_segment: bool = False,
        policy: OutboundPolicy | None = None,
    ) -> None:
        self.url = channel_url(url)  # the real URL, for requests only
        self.shown_url = redact_url(self.url)  # for logs and errors: no credentials, no token
        self.policy = policy or default_policy()
        self.mime = mime
        self.seq = start_seq
        self.closed = False
        self.end_reason: str | None = None
        self.segments_published = 0
        self.bytes_published = 0
        self.write_queue_chunks = write_queue_chunks
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self._reset_next = reset_first_segment
        self._session = session
        self._owns_session = session is None
        self._next: SegmentWriter | None = None
        self._open: dict[int, SegmentWriter] = {}  # id(writer) -> writer, insertion ordered
        self._lock = asyncio.Lock()
        self._closing = False

    async def __aenter__(self) -> TricklePublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = _make_session(self.connect_timeout, self.policy)
        return self._session

    def _mark_closed(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.end_reason = reason
            log.info("trickle publisher url=%s closed: %s", self.shown_url, reason)

    def _count_published(self, nbytes: int) -> None:
        self.segments_published += 1
        self.bytes_published += nbytes

    def _writer_finished(self, writer: SegmentWriter) -> None:
        self._open.pop(id(writer), None)

    def _preconnect(self, seq: int) -> SegmentWriter:
        while len(self._open) >= MAX_OPEN_WRITERS:
            oldest = self._open.pop(next(iter(self._open)))
            log.warning("trickle publisher url=%s too many open segments, aborting seq=%d", self.shown_url, oldest.seq)
            oldest.cancel()
        writer = SegmentWriter(self, seq, self.write_queue_chunks, self._reset_next)
        self._reset_next = False
        self._open[id(writer)] = writer
        return writer

    async def next_segment(self) -> SegmentWriter:
        """The (already open) POST for the current seq; the POST for seq+1 is opened right away."""
        async with self._lock:
            if self.closed:
                raise TrickleChannelClosedError(f"trickle publisher {self.shown_url} closed ({self.end_reason})")
            writer = self._next if self._next is not None and not self._next.done else None
            if writer is None:
                writer = self._preconnect(self.seq)
            self._next = None
            self.seq = writer.seq + 1
            self._next = self._preconnect(self.seq)
            return writer

    async def close(self, delete_channel: bool = True) -> None:
        """Stop publishing: end the preconnected POST (empty body), DELETE the channel, release all.

        Segments whose body already ended get a few seconds for their response; segments the
        caller left open are aborted."""
        if self._closing:
            return
        self._closing = True
        was_gone = self.closed
        self._mark_closed("client_closed")
        async with self._lock:
            spare, self._next = self._next, None
        step = min(self.response_timeout, CLOSE_STEP_TIMEOUT)
        if spare is not None:
            # End the spare POST (empty body) before the DELETE, so it cannot reach an
            # autocreating server after the DELETE and bring the channel back.
            await spare.close(timeout=step)  # logs when it gives up
        if delete_channel and not was_gone:
            await self._delete_channel(min(self.connect_timeout, CLOSE_STEP_TIMEOUT))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + step  # one budget for all the finished segments' responses
        for writer in list(self._open.values()):
            if writer._body_ended and not writer.done:
                # Already closing: let its response arrive (within the budget) before giving up on it.
                await writer.close(timeout=max(deadline - loop.time(), 0.0))
            await writer.abort()
        self._open.clear()
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def _delete_channel(self, timeout: float) -> None:
        try:
            async with self._get_session().delete(
                self.url,
                headers=_headers(self.policy, self.url),
                ssl=self.policy.ssl_for(self.url),
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                if response.status >= 400:
                    log.info("trickle publisher DELETE %s: status %d", self.shown_url, response.status)
        except TimeoutError:
            log.warning("trickle publisher DELETE %s: no answer in %.1fs, giving up", self.shown_url, timeout)
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("trickle publisher DELETE %s failed: %s", self.shown_url, redact_text(repr(exc)))
