"""The RTMP listener: one `Session` per TCP connection, from handshake to unpublish.

A session accepts exactly what a publisher needs (connect → releaseStream/FCPublish →
createStream → publish → media → FCUnpublish/deleteStream) and asks the application, through
`PublishHandler`, whether the stream key may publish, before it answers `NetStream.Publish.Start`.
Everything a client controls is bounded: the handshake and publish deadline, the idle time, the
chunk and message sizes (chunks.ChunkLimits), AMF0 (amf0.AmfLimits), the command and key lengths,
the connections held. Anything hostile or broken ends that one connection and is counted.
Stream keys are credentials: log lines show `live/[redacted]`, never the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from rtmp import amf0, handshake
from rtmp.chunks import (
    ACK,
    AUDIO,
    COMMAND_AMF0,
    COMMAND_AMF3,
    DATA_AMF0,
    SET_CHUNK_SIZE,
    SET_PEER_BANDWIDTH,
    USER_CONTROL,
    VIDEO,
    WINDOW_ACK_SIZE,
    ChunkLimits,
    ChunkReader,
    ChunkWriter,
    Message,
    ProtocolError,
    control,
    user_control,
)
from rtmp.flv import FlvError, FlvPacket, parse_audio, parse_video

log = logging.getLogger(__name__)

WINDOW = 2_500_000  # window ack size and peer bandwidth we announce (mediamtx's value)
OUT_CHUNK_SIZE = 4096
STREAM_ID = 1  # the one message stream createStream hands out
READ_SIZE = 64 << 10
MAX_COMMAND_NAME = 64
MAX_NAME = 256  # app and publish name (key + query)


class PublishRefused(Exception):
    """Raised by a PublishHandler: the publish is answered with `code` (an onStatus error)."""

    def __init__(self, description: str, code: str = "NetStream.Publish.BadName", reason: str = "refused") -> None:
        super().__init__(description)
        self.description = description
        self.code = code
        self.reason = reason  # the counter label: unknown_key, busy, capacity, ...


class PublishTarget(Protocol):
    """Where an accepted publisher's media goes (the application's side of one publish)."""

    def on_tracks(self, has_video: bool, has_audio: bool) -> None: ...

    def on_packet(self, packet: FlvPacket, timestamp: int) -> None: ...

    def on_unpublish(self, reason: str) -> None: ...


@dataclass
class PublishRequest:
    app: str
    key: str
    query: str
    peer: str
    session: Session


PublishHandler = Callable[[PublishRequest], Awaitable[PublishTarget]]


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int = 16
    handshake_timeout: float = 10.0  # from accept to NetStream.Publish.Start
    idle_timeout: float = 10.0  # no bytes from a publisher this long → closed
    chunks: ChunkLimits = field(default_factory=ChunkLimits)
    amf: amf0.AmfLimits = field(default_factory=lambda: amf0.AmfLimits(max_string=4096, max_items=256))
    app_name: str = "live"


@dataclass
class Counters:
    connections: int = 0
    refused_connection_limit: int = 0
    handshake_failed: int = 0
    protocol_errors: int = 0
    timeouts: int = 0
    publish_refused: int = 0
    publishes: int = 0
    flv_errors: int = 0
    bytes_in: int = 0


class Session:
    def __init__(
        self,
        server: RtmpServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.limits = server.limits
        self.chunks = ChunkReader(server.limits.chunks)
        self.out = ChunkWriter()
        self.app = ""
        self.target: PublishTarget | None = None
        self.publishing = False
        self.published = False  # a publish was accepted on this connection
        self._peer_window = 0
        self._acked = 0
        self._end_reason: str | None = None
        self.has_video = False
        self.has_audio = False
        self._tracks_told = False

    # -- lifecycle ------------------------------------------------------------------------------
    async def run(self) -> None:
        reason = "publisher disconnected"
        try:
            await asyncio.wait_for(handshake.accept(self.reader, self.writer), self.limits.handshake_timeout)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.limits.handshake_timeout
            while True:
                # the publish deadline holds until the first publish; after it, idle time only
                timeout = self.limits.idle_timeout if self.published else deadline - loop.time()
                if timeout <= 0:
                    raise TimeoutError
                data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
                if not data:
                    break
                self.server.counters.bytes_in += len(data)
                for message in self.chunks.feed(data):
                    await self._handle(message)
                await self._maybe_ack()
                if self._end_reason is not None:
                    reason = self._end_reason
                    break
        except handshake.HandshakeError as exc:
            self.server.counters.handshake_failed += 1
            reason = f"handshake refused: {exc}"
        except (ProtocolError, amf0.AmfError) as exc:
            self.server.counters.protocol_errors += 1
            reason = f"protocol error: {exc}"
        except TimeoutError:
            self.server.counters.timeouts += 1
            reason = "idle timeout" if self.published else "no publish within the handshake timeout"
        except (asyncio.IncompleteReadError, ConnectionError):
            reason = "publisher disconnected"
        except _Refused as exc:
            reason = str(exc)
        finally:
            if self._end_reason is not None:
                reason = self._end_reason
            self._finish(reason)
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 2)
            log.info("rtmp %s: connection closed (%s)", self.peer, reason)

    def _finish(self, reason: str) -> None:
        target, self.target = self.target, None
        self.publishing = False
        if target is not None:
            target.on_unpublish(reason)

    def close(self, reason: str) -> None:
        """Disconnect this client (the application stopped its stream); safe to call twice."""
        if self._end_reason is None:
            self._end_reason = reason
        self._finish(reason)
        self.writer.close()

    # -- output ---------------------------------------------------------------------------------
    async def _send(self, *messages: Message) -> None:
        self.writer.write(b"".join(self.out.encode(m) for m in messages))
        await asyncio.wait_for(self.writer.drain(), self.limits.idle_timeout)

    def _command(self, *values: Any, msid: int = 0) -> Message:
        return Message(COMMAND_AMF0, amf0.encode_all(*values), 0, msid, 3)

    async def _maybe_ack(self) -> None:
        if self._peer_window and self.chunks.bytes_in - self._acked >= self._peer_window:
            self._acked = self.chunks.bytes_in
            await self._send(control(ACK, self._acked & 0xFFFFFFFF))

    # -- input ----------------------------------------------------------------------------------
    async def _handle(self, message: Message) -> None:
        kind = message.msg_type
        if kind in (AUDIO, VIDEO):
            self._media(message)
        elif kind == COMMAND_AMF0:
            await self._on_command(amf0.decode_all(message.payload, self.limits.amf))
        elif kind == COMMAND_AMF3:  # an AMF3 command message is AMF0 after one format byte
            await self._on_command(amf0.decode_all(message.payload[1:], self.limits.amf))
        elif kind == DATA_AMF0:
            self._on_data(amf0.decode_all(message.payload, self.limits.amf))
        elif kind == WINDOW_ACK_SIZE:
            if len(message.payload) < 4:
                raise ProtocolError("Window Ack Size without its 4 bytes")
            self._peer_window = int.from_bytes(message.payload[:4], "big")
        elif kind == USER_CONTROL:
            if len(message.payload) >= 6 and int.from_bytes(message.payload[:2], "big") == 6:  # PingRequest
                await self._send(user_control(7, message.payload[2:6]))
        # Set Chunk Size and Abort were applied by the reader; Ack, Set Peer Bandwidth, AMF3 data
        # and aggregate messages carry nothing a publisher needs from us

    def _media(self, message: Message) -> None:
        if not self.publishing or self.target is None:
            return  # media before publish: nothing to feed
        try:
            packet = parse_video(message.payload) if message.msg_type == VIDEO else parse_audio(message.payload)
        except FlvError as exc:
            self.server.counters.flv_errors += 1
            if self.server.counters.flv_errors % 100 == 1:
                log.warning("rtmp %s: media tag ignored: %s", self.peer, exc)
            return
        if not self._tracks_told:
            self._tell_tracks()
        self.target.on_packet(packet, message.timestamp)

    def _tell_tracks(self) -> None:
        if self._tracks_told or self.target is None:
            return
        self._tracks_told = True
        if not (self.has_video or self.has_audio):
            # no onMetaData before the media: taken to send both (OBS, FFmpeg and vMix do)
            self.has_video = self.has_audio = True
        self.target.on_tracks(self.has_video, self.has_audio)

    def _on_data(self, values: list[Any]) -> None:
        if values and values[0] == "@setDataFrame":
            values = values[1:]
        if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
            meta = values[1]
            self.has_video = meta.get("videocodecid") not in (None, 0, "")
            self.has_audio = meta.get("audiocodecid") not in (None, 0, "")
            if self.has_video or self.has_audio:
                self._tell_tracks()

    async def _on_command(self, values: list[Any]) -> None:
        if len(values) < 2 or not isinstance(values[0], str) or not isinstance(values[1], int | float):
            raise ProtocolError("a command without its name and transaction id")
        name, txn = values[0], values[1]
        if len(name) > MAX_COMMAND_NAME:
            raise ProtocolError("command name too long")
        args = values[2:]
        if name == "connect":
            await self._on_connect(txn, args[0] if args and isinstance(args[0], dict) else {})
        elif name in ("releaseStream", "FCPublish"):
            await self._send(self._command("_result", txn, None))
        elif name == "createStream":
            await self._send(self._command("_result", txn, None, STREAM_ID))
        elif name == "publish":
            await self._on_publish(args[1] if len(args) > 1 and isinstance(args[1], str) else "")
        elif name in ("FCUnpublish", "deleteStream", "closeStream"):
            if self.publishing:
                self._finish("publisher stopped")
        elif name in ("play", "play2"):
            await self._refuse("NetStream.Play.Failed", "this server takes publishers only", "play")
        elif txn:  # answer what we do not support so the client does not wait on it
            await self._send(self._command("_error", txn, None, _status("error", "NetConnection.Call.Failed", name)))

    async def _on_connect(self, txn: float, props: dict[str, Any]) -> None:
        app = props.get("app")
        app = app.split("?", 1)[0].strip("/") if isinstance(app, str) else ""
        if len(app) > MAX_NAME:
            raise ProtocolError("app name too long")
        if app != self.limits.app_name:
            result = self._command(
                "_error", txn, None, _status("error", "NetConnection.Connect.Rejected", f"unknown app '{app[:64]}'")
            )
            await self._send(result)
            self.server.counters.publish_refused += 1
            raise _Refused(f"unknown app '{app[:64]}'")
        self.app = app
        await self._send(
            control(WINDOW_ACK_SIZE, WINDOW),
            control(SET_PEER_BANDWIDTH, WINDOW, b"\x02"),
            control(SET_CHUNK_SIZE, OUT_CHUNK_SIZE),
        )
        self.out.chunk_size = OUT_CHUNK_SIZE
        info = _status("status", "NetConnection.Connect.Success", "Connection succeeded.")
        info["objectEncoding"] = 0
        await self._send(self._command("_result", txn, {"fmsVer": "FMS/3,0,1,123", "capabilities": 31}, info))

    async def _on_publish(self, name: str) -> None:
        if not self.app:
            raise ProtocolError("publish before connect")
        if self.publishing:
            raise ProtocolError("a second publish on one connection")
        if len(name) > MAX_NAME:
            raise ProtocolError("publish name too long")
        key, _, query = name.partition("?")
        key = key.strip("/")
        try:
            target = await self.server.on_publish(PublishRequest(self.app, key, query, self.peer, self))
        except PublishRefused as exc:
            self.server.counters.publish_refused += 1
            self.server.refused_by_reason[exc.reason] = self.server.refused_by_reason.get(exc.reason, 0) + 1
            await self._refuse(exc.code, exc.description, exc.reason)
            return
        if self._end_reason is not None:  # closed while the application decided
            target.on_unpublish(self._end_reason)
            return
        self.target = target
        self.publishing = self.published = True
        self.server.counters.publishes += 1
        begin = user_control(0, STREAM_ID.to_bytes(4, "big"))
        start = self._command(
            "onStatus", 0, None, _status("status", "NetStream.Publish.Start", "Publishing live/[redacted]."), msid=1
        )
        await self._send(begin, start)
        if self.has_video or self.has_audio:
            self._tell_tracks()
        log.info("rtmp %s: publishing live/[redacted]", self.peer)

    async def _refuse(self, code: str, description: str, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self._send(self._command("onStatus", 0, None, _status("error", code, description), msid=1))
        raise _Refused(f"publish refused ({reason}): {description}")


class _Refused(Exception):
    """Ends a session after its client was told why."""


def _status(level: str, code: str, description: str) -> dict[str, Any]:
    return {"level": level, "code": code, "description": description}


class RtmpServer:
    def __init__(self, on_publish: PublishHandler, limits: ServerLimits | None = None) -> None:
        self.on_publish = on_publish
        self.limits = limits or ServerLimits()
        self.counters = Counters()
        self.refused_by_reason: dict[str, int] = {}
        self.sessions: set[Session] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 = any free port); returns the bound port."""
        self._server = await asyncio.start_server(self._accept, host, port, limit=READ_SIZE)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        if len(self.sessions) >= self.limits.max_connections:
            self.counters.refused_connection_limit += 1
            log.warning("rtmp %s: refused, %d connections open (RTMP_MAX_CONNECTIONS)", peer, len(self.sessions))
            writer.close()
            return
        self.counters.connections += 1
        session = Session(self, reader, writer, peer)
        self.sessions.add(session)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await session.run()
        except Exception:
            log.exception("rtmp %s: session failed", peer)
        finally:
            self.sessions.discard(session)
            if task is not None:
                self._tasks.discard(task)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.close("server shutting down")
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters.__dict__,
            "connections_open": len(self.sessions),
            "publishing": sum(1 for s in self.sessions if s.publishing),
            "refused_by_reason": dict(self.refused_by_reason),
        }
