"""RTMP ingest wired into the app: the listener, stream keys → streams, and the one place RTMP
starts (and, through its source, ends) a stream.

- `POST /stream/start` with `"source": {"type": "rtmp"}` declares a stream: a start hook gives it an
  `RtmpSource` and files its key here; the start answer carries `ingest_url` and the key, once.
- A publish is matched to a declared key in constant time; an unknown key is refused at `publish`
  (`NetStream.Publish.BadName`) unless the server is in open mode (no token set), where any key
  that is a valid stream id starts a stream of that id with captions on.
- The key table is bounded by the stream manager's capacity (one key per running stream); a key
  leaves it when its stream stops.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from media.manager import AdmissionError
from media.spec import StreamSpec
from media.stream import Stream
from rtmp.server import PublishRefused, PublishRequest, PublishTarget, RtmpServer
from rtmp.settings import ANY_PORT, RtmpSettings
from rtmp.source import RtmpSource
from server.access import POLICY_KEY
from server.keys import METRICS_KEY, STREAM_SERVICE_KEY
from server.settings import Settings
from server.start_request import MANIFEST_ID_RE
from server.stream_service import StartedStream, StreamService

log = logging.getLogger(__name__)

APP_NAME = "live"
STARTING_GRACE = 60.0  # seconds a filed key may wait for its stream to be running


class RtmpIngest:
    def __init__(self, settings: RtmpSettings, host: str, streams: StreamService, open_mode: bool) -> None:
        self.settings = settings
        self.host = host
        self.streams = streams
        self.open_mode = open_mode
        self.server = RtmpServer(self.on_publish, settings.limits())
        self._keys: dict[str, tuple[str, Stream, float]] = {}  # manifest id → (key, stream, filed at)
        self.streams_started = 0
        self.packets_dropped_stopped = 0  # decoder drops of streams no longer filed (the counter never falls)

    @property
    def port(self) -> int | None:
        """The bound port (None until the listener runs, or when RTMP_PORT is 0)."""
        return self.server.port

    async def start(self) -> None:
        port = 0 if self.settings.port == ANY_PORT else self.settings.port
        bound = await self.server.start(self.host, port)
        log.info("RTMP ingest listening on rtmp://%s:%d/%s/{stream_key}", self.host, bound, APP_NAME)

    async def stop(self) -> None:
        await self.server.stop()

    # -- declared streams -------------------------------------------------------------------------
    def start_hook(self, stream: Stream, spec: StreamSpec) -> None:
        """StreamService start hook: an RTMP-sourced spec gets its source and its key filed."""
        if spec.source_type != "rtmp" or spec.stream_key is None:
            return
        if self.port is None:
            raise ValueError("the RTMP listener is not running")
        if self._find(spec.stream_key, running_only=False) is not None:
            raise ValueError("source.stream_key is already used by another stream")
        stream.source = self._new_source(stream.manifest_id)
        self._file(stream, spec.stream_key)

    def _new_source(self, label: str) -> RtmpSource:
        return RtmpSource(label, self.settings.reconnect_seconds, self.settings.queue_packets)

    def _file(self, stream: Stream, key: str) -> None:
        now = time.monotonic()
        # a stream whose start failed after its key was filed (a later start hook refused it) never
        # stops, so never unfiles: such entries go once no start could still be under way
        for manifest_id, (_key, filed, filed_at) in list(self._keys.items()):
            if now - filed_at > STARTING_GRACE and self.streams.manager.get_active(manifest_id) is not filed:
                del self._keys[manifest_id]
        self._keys[stream.manifest_id] = (key, stream, now)
        stream.on_stop(lambda s: self._unfile(s))

    def _unfile(self, stream: Stream) -> None:
        entry = self._keys.get(stream.manifest_id)
        if entry is not None and entry[1] is stream:
            del self._keys[stream.manifest_id]
            if isinstance(stream.source, RtmpSource):
                self.packets_dropped_stopped += stream.source.stats()["packets_dropped"]

    def _find(self, key: str, running_only: bool = True) -> Stream | None:
        """The stream of `key` (running, or also one being started). Every filed key is compared,
        in constant time, so the time taken says nothing about how much of a key matched or which."""
        found = None
        raw = key.encode()
        manager = self.streams.manager
        for filed, stream, _at in list(self._keys.values()):
            if hmac.compare_digest(filed.encode(), raw) and stream.active:
                if not running_only or manager.get_active(stream.manifest_id) is stream:
                    found = stream
        return found

    def answer(self, request: web.Request, started: StartedStream) -> dict[str, Any]:
        """The start answer's RTMP fields: where to publish, and (to the call that created the
        stream only) the key."""
        entry = self._keys.get(started.manifest_id)
        if entry is None or entry[1] is not started.stream or self.port is None:
            return {}
        host = self.settings.public_host or request.url.host or self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 literal
        body: dict[str, Any] = {"ingest_url": f"rtmp://{host}:{self.port}/{APP_NAME}"}
        if started.created:
            body["stream_key"] = entry[0]
        return body

    # -- publishers -----------------------------------------------------------------------------
    async def on_publish(self, request: PublishRequest) -> PublishTarget:
        stream = self._find(request.key)
        if stream is None:
            if not self.open_mode:
                raise PublishRefused("unknown stream key", reason="unknown_key")
            stream = await self._open_mode_stream(request.key)
        source = stream.source
        if not isinstance(source, RtmpSource):
            raise PublishRefused("unknown stream key", reason="unknown_key")
        return source.attach(request.session)

    async def _open_mode_stream(self, key: str) -> Stream:
        """Open mode (no token set, loopback only): the key names the stream, captions on."""
        if not MANIFEST_ID_RE.fullmatch(key):
            raise PublishRefused("the stream key must be a valid stream id in open mode", reason="bad_key")
        running = self.streams.manager.get_active(key)
        if running is not None:  # a stream of that id that is not ours (WHIP, trickle)
            raise PublishRefused("a stream with this id is already running", reason="busy")
        spec = StreamSpec(
            manifest_id=key,
            mode="native",
            subscribe_url=None,
            publish_url=None,
            params={"captions": {}},
            source_type="rtmp",
            stream_key=key,
        )
        try:  # the start hook gives it its RtmpSource and files the key, as for a declared stream
            started = await self.streams.start(spec)
        except AdmissionError as exc:
            raise PublishRefused(f"no stream can start now: {exc}", reason="capacity") from None
        except Exception as exc:  # the service logged it; the publisher learns why, nothing else stops
            raise PublishRefused(f"the stream could not start: {exc}", reason="start_failed") from None
        self.streams_started += 1
        return started.stream

    # -- metrics --------------------------------------------------------------------------------
    def metric_families(self) -> Iterator[Any]:
        stats = self.server.stats()
        counters = {
            "connections": "RTMP connections accepted",
            "refused_connection_limit": "RTMP connections refused: RTMP_MAX_CONNECTIONS reached",
            "handshake_failed": "RTMP connections closed: not a plain RTMP handshake",
            "protocol_errors": "RTMP connections closed: chunk, size or AMF0 limits broken",
            "timeouts": "RTMP connections closed: handshake/publish deadline or idle timeout",
            "publish_refused": "RTMP publishes refused (unknown key, already publishing, bad app)",
            "publishes": "RTMP publishes accepted",
            "flv_errors": "RTMP media tags ignored (unsupported codec, truncated)",
            "bytes_in": "RTMP bytes received",
        }
        for key, doc in counters.items():
            family = CounterMetricFamily(f"streamlens_rtmp_{key}", doc)
            family.add_metric([], stats[key])
            yield family
        dropped = CounterMetricFamily(
            "streamlens_rtmp_packets_dropped", "RTMP media packets dropped: the decoder queue was full"
        )
        running = sum(s.stats()["packets_dropped"] for s in self._sources())
        dropped.add_metric([], self.packets_dropped_stopped + running)
        yield dropped
        gauge = GaugeMetricFamily("streamlens_rtmp_connections_open", "RTMP connections open")
        gauge.add_metric([], stats["connections_open"])
        yield gauge
        publishing = GaugeMetricFamily("streamlens_rtmp_publishing", "RTMP publishers feeding a stream")
        publishing.add_metric([], stats["publishing"])
        yield publishing

    def _sources(self) -> Iterator[RtmpSource]:
        for _key, stream, _at in list(self._keys.values()):
            if isinstance(stream.source, RtmpSource):
                yield stream.source


RTMP_KEY = web.AppKey("rtmp_ingest", RtmpIngest)


def install_rtmp(app: web.Application, settings: Settings) -> RtmpIngest | None:
    """The RTMP listener (RTMP_PORT; 0 = off), started and stopped with the app."""
    rtmp_settings = settings.rtmp
    streams = app[STREAM_SERVICE_KEY]
    if not rtmp_settings.enabled:
        streams.add_start_hook(refuse_rtmp_source)
        return None
    ingest = RtmpIngest(rtmp_settings, settings.host, streams, open_mode=app[POLICY_KEY].open)
    app[RTMP_KEY] = ingest
    streams.add_start_hook(ingest.start_hook)
    app[METRICS_KEY].add_source(ingest.metric_families)

    async def start(_app: web.Application) -> None:
        await ingest.start()

    async def stop(_app: web.Application) -> None:
        await ingest.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return ingest


def refuse_rtmp_source(_stream: Stream, spec: StreamSpec) -> None:
    """The start hook while RTMP is off: an RTMP-sourced start is a 400, not a stream without input."""
    if spec.source_type == "rtmp":
        raise ValueError("RTMP ingest is off on this server (RTMP_PORT=0)")


def rtmp_answer(request: web.Request, started: StartedStream) -> dict[str, Any]:
    """The RTMP fields of a `POST /stream/start` answer (empty for other streams)."""
    ingest = request.app.get(RTMP_KEY)
    return ingest.answer(request, started) if ingest is not None else {}
