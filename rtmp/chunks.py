"""The RTMP chunk stream: a sans-IO reader (bytes in, whole messages out) and a writer.

The reader follows FFmpeg's `rtmppkt.c` for timestamps (fmt 0 absolute; fmt 1/2 a delta; a fmt 3
header that starts a message repeats the last delta) and nginx-rtmp for the extended timestamp
that clients repeat in fmt 3 continuations. Set Chunk Size and Abort are applied by the reader
itself, because they change how the very next chunk is parsed. Every size is checked: a message
over `max_message`, a chunk size outside 1..`max_chunk_size`, too many chunk streams or partial
messages raise `ProtocolError`, and the caller drops that connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# message types (RTMP 1.0 §5.4, §7.1)
SET_CHUNK_SIZE = 1
ABORT = 2
ACK = 3
USER_CONTROL = 4
WINDOW_ACK_SIZE = 5
SET_PEER_BANDWIDTH = 6
AUDIO = 8
VIDEO = 9
DATA_AMF3 = 15
COMMAND_AMF3 = 17
DATA_AMF0 = 18
COMMAND_AMF0 = 20
AGGREGATE = 22

DEFAULT_CHUNK_SIZE = 128
EXTENDED = 0xFFFFFF


class ProtocolError(ValueError):
    """The peer broke the chunk protocol or a limit; its connection is dropped."""


@dataclass
class Message:
    msg_type: int
    payload: bytes
    timestamp: int = 0  # ms, 32 bits
    msid: int = 0
    csid: int = 3


@dataclass
class _ChunkStream:
    timestamp: int = 0
    ts_field: int = 0  # the last timestamp or delta read from a fmt 0/1/2 header
    length: int = 0
    msg_type: int = 0
    msid: int = 0
    extended: bool = False  # the last header carried an extended timestamp
    started: bool = False  # a fmt 0 header has been seen (fmt 1-3 need one)
    partial: bytearray = field(default_factory=bytearray)
    in_message: bool = False


@dataclass(frozen=True)
class ChunkLimits:
    max_message: int = 8 << 20  # bytes of one message (a big IDR passes nginx's 1 MiB)
    max_chunk_size: int = 65536  # the largest Set Chunk Size accepted
    max_chunk_streams: int = 32  # distinct chunk stream ids one connection may use (nginx max_streams)
    max_partial: int = 16  # messages half received at once


class ChunkReader:
    def __init__(self, limits: ChunkLimits | None = None) -> None:
        self.limits = limits or ChunkLimits()
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self._buf = bytearray()
        self._streams: dict[int, _ChunkStream] = {}
        self._pos = 0  # where parsing stands in _buf during feed()
        self.bytes_in = 0

    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        """Add bytes from the socket; return the messages they complete (in order)."""
        self.bytes_in += len(data)
        self._buf += data
        self._pos = 0
        out: list[Message] = []
        try:
            while True:
                message, done = self._one_chunk()
                if not done:
                    break
                if message is not None:
                    out.append(message)
        finally:
            del self._buf[: self._pos]  # once per feed: small chunks never shift the buffer each
        # a chunk header is at most 18 bytes and a chunk body at most chunk_size: more buffered
        # than one chunk that still does not parse cannot happen
        if len(self._buf) > self.chunk_size + 18:
            raise ProtocolError("chunk buffer over its bound")
        return out

    def _one_chunk(self) -> tuple[Message | None, bool]:
        """Parse one chunk from the buffer; (message or None, whether a chunk was consumed)."""
        buf = self._buf
        start = self._pos
        if len(buf) <= start:
            return None, False
        pos = start + 1
        fmt = buf[start] >> 6
        csid = buf[start] & 0x3F
        if csid == 0:
            if len(buf) < start + 2:
                return None, False
            csid = 64 + buf[start + 1]
            pos = start + 2
        elif csid == 1:
            if len(buf) < start + 3:
                return None, False
            csid = 64 + buf[start + 1] + 256 * buf[start + 2]
            pos = start + 3
        header_len = (11, 7, 3, 0)[fmt]
        if len(buf) < pos + header_len:
            return None, False
        stream = self._streams.get(csid)
        if stream is None:
            if len(self._streams) >= self.limits.max_chunk_streams:
                raise ProtocolError(f"more than {self.limits.max_chunk_streams} chunk streams")
            stream = _ChunkStream()
            if fmt != 0:
                raise ProtocolError(f"chunk stream {csid} starts with a fmt {fmt} header")
        head = buf[pos : pos + header_len]
        pos += header_len
        ts_field = stream.ts_field
        length, msg_type, msid = stream.length, stream.msg_type, stream.msid
        extended = stream.extended
        if fmt <= 2:
            ts_field = int.from_bytes(head[0:3], "big")
            extended = ts_field == EXTENDED
            if fmt <= 1:
                length = int.from_bytes(head[3:6], "big")
                msg_type = head[6]
            if fmt == 0:
                msid = int.from_bytes(head[7:11], "little")
        if extended:
            if len(buf) < pos + 4:
                return None, False
            ext = int.from_bytes(buf[pos : pos + 4], "big")
            pos += 4
            if fmt <= 2:
                ts_field = ext
        new_message = not stream.in_message
        if new_message:
            if length > self.limits.max_message:
                raise ProtocolError(f"message of {length} bytes is over the {self.limits.max_message}-byte limit")
            partials = sum(1 for s in self._streams.values() if s.in_message)
            if partials >= self.limits.max_partial:
                raise ProtocolError(f"more than {self.limits.max_partial} messages half received")
        elif fmt in (0, 1) and length != stream.length:
            raise ProtocolError("message length changed in the middle of a message")
        want = min(self.chunk_size, length - (len(stream.partial) if not new_message else 0))
        if len(buf) < pos + want:
            return None, False
        # the chunk is complete in the buffer: commit its header to the chunk stream
        self._streams[csid] = stream
        stream.ts_field, stream.length, stream.msg_type, stream.msid = ts_field, length, msg_type, msid
        stream.extended = extended
        if new_message:
            if fmt == 0:
                stream.timestamp = ts_field
            else:
                stream.timestamp = (stream.timestamp + ts_field) & 0xFFFFFFFF
            stream.partial = bytearray()
            stream.in_message = True
        stream.partial += buf[pos : pos + want]
        self._pos = pos + want
        if len(stream.partial) < stream.length:
            return None, True
        stream.in_message = False
        payload = bytes(stream.partial)
        stream.partial = bytearray()
        message = Message(stream.msg_type, payload, stream.timestamp, stream.msid, csid)
        if message.msg_type == SET_CHUNK_SIZE and message.msid == 0:
            self._set_chunk_size(payload)
        elif message.msg_type == ABORT and message.msid == 0:
            self._abort(payload)
        return message, True

    def _set_chunk_size(self, payload: bytes) -> None:
        if len(payload) < 4:
            raise ProtocolError("Set Chunk Size without its 4 bytes")
        size = int.from_bytes(payload[:4], "big")
        if not 1 <= size <= self.limits.max_chunk_size:
            raise ProtocolError(f"Set Chunk Size {size} outside 1..{self.limits.max_chunk_size}")
        self.chunk_size = size

    def _abort(self, payload: bytes) -> None:
        if len(payload) < 4:
            raise ProtocolError("Abort without its 4 bytes")
        stream = self._streams.get(int.from_bytes(payload[:4], "big"))
        if stream is not None:
            stream.partial = bytearray()
            stream.in_message = False


def _basic_header(fmt: int, csid: int) -> bytes:
    if 2 <= csid < 64:
        return bytes([(fmt << 6) | csid])
    if csid < 64 + 256:
        return bytes([fmt << 6, csid - 64])
    rest = csid - 64
    return bytes([(fmt << 6) | 1, rest & 0xFF, rest >> 8])


class ChunkWriter:
    """Encodes messages as a fmt 0 chunk followed by fmt 3 continuations."""

    def __init__(self) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE

    def encode(self, message: Message) -> bytes:
        ts = message.timestamp & 0xFFFFFFFF
        extended = ts >= EXTENDED
        ext = ts.to_bytes(4, "big") if extended else b""
        header = (
            _basic_header(0, message.csid)
            + (EXTENDED if extended else ts).to_bytes(3, "big")
            + len(message.payload).to_bytes(3, "big")
            + bytes([message.msg_type])
            + message.msid.to_bytes(4, "little")
            + ext
        )
        parts = [header]
        payload = message.payload
        parts.append(payload[: self.chunk_size])
        for start in range(self.chunk_size, len(payload), self.chunk_size):
            parts.append(_basic_header(3, message.csid) + ext)
            parts.append(payload[start : start + self.chunk_size])
        return b"".join(parts)


def control(msg_type: int, value: int, extra: bytes = b"") -> Message:
    """A protocol control message (chunk stream 2, message stream 0)."""
    return Message(msg_type, value.to_bytes(4, "big") + extra, 0, 0, 2)


def user_control(event: int, value: bytes) -> Message:
    return Message(USER_CONTROL, event.to_bytes(2, "big") + value, 0, 0, 2)
