"""RTMP protocol units: AMF0 round trips and limits, the chunk reader (every header type, extended
timestamps, Set Chunk Size, Abort, limits), FLV tag bodies and the handshake reply."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtmp import amf0
from rtmp.chunks import (
    ABORT,
    AUDIO,
    SET_CHUNK_SIZE,
    VIDEO,
    ChunkLimits,
    ChunkReader,
    ChunkWriter,
    Message,
    ProtocolError,
    control,
)
from rtmp.decode import FlvDecoder
from rtmp.flv import FlvError, FlvPacket, avc_config_valid, parse_audio, parse_video
from rtmp.handshake import SIZE, server_hello

# -- AMF0 ------------------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=40)
amf_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(min_size=1, max_size=10), inner, max_size=5),
    max_leaves=20,
)


@given(st.lists(amf_values, max_size=6))
@settings(max_examples=200, deadline=None)
def test_amf0_round_trip(values):
    assert amf0.decode_all(amf0.encode_all(*values)) == values


def test_amf0_ecma_array_and_long_string_decode():
    meta = amf0.EcmaArray(width=1280.0, height=720.0, encoder="obs")
    long_text = "x" * 70000
    decoded = amf0.decode_all(
        amf0.encode_all("@setDataFrame", "onMetaData", meta, long_text), amf0.AmfLimits(max_string=1 << 20)
    )
    assert decoded == ["@setDataFrame", "onMetaData", dict(meta), long_text]


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_amf0_garbage_raises_only_amf_error(data):
    try:
        amf0.decode_all(data)
    except amf0.AmfError:
        pass


@pytest.mark.parametrize(
    ("payload", "limits", "message"),
    [
        (b"\x02\xff\xffhello", amf0.DEFAULT_LIMITS, "truncated"),  # a string longer than the message
        (b"\x0c" + (1 << 30).to_bytes(4, "big"), amf0.DEFAULT_LIMITS, "over the"),  # a 1 GiB long string
        (b"\x03" * 40, amf0.DEFAULT_LIMITS, "truncated"),
        (amf0.encode({"a": {"b": {"c": {"d": 1.0}}}}), amf0.AmfLimits(max_depth=2), "nesting"),
        (amf0.encode(list(range(10))), amf0.AmfLimits(max_items=5), "over the 5 limit"),
        (amf0.encode({str(i): 1.0 for i in range(10)}), amf0.AmfLimits(max_items=5), "over 5 entries"),
        (amf0.encode("x" * 100), amf0.AmfLimits(max_string=50), "over the 50-byte limit"),
        (amf0.encode_all(*[1.0] * 10), amf0.AmfLimits(max_values=5), "more than 5 values"),
        (b"\x11", amf0.DEFAULT_LIMITS, "unsupported AMF0 marker"),
        (b"\x03\x00\x00\x05", amf0.DEFAULT_LIMITS, "end marker"),
    ],
)
def test_amf0_limits(payload, limits, message):
    with pytest.raises(amf0.AmfError, match=message):
        amf0.decode_all(payload, limits)


def test_amf0_deep_nesting_bomb():
    # 10 000 nested objects in 30 kB: refused at the depth limit, not by Python's recursion limit
    bomb = b"\x03\x00\x01a" * 10000
    with pytest.raises(amf0.AmfError, match="nesting"):
        amf0.decode_all(bomb)


# -- chunk stream ----------------------------------------------------------------------------------

messages = st.builds(
    Message,
    msg_type=st.sampled_from([AUDIO, VIDEO, 18, 20]),
    payload=st.binary(max_size=700),
    timestamp=st.integers(0, 0xFFFFFFFF),
    msid=st.integers(0, 5),
    csid=st.integers(3, 400),
)


def feed_in_pieces(reader: ChunkReader, data: bytes, rng: random.Random) -> list[Message]:
    out, pos = [], 0
    while pos < len(data):
        step = rng.randint(1, 300)
        out += reader.feed(data[pos : pos + step])
        pos += step
    return out


@given(st.lists(messages, max_size=8), st.integers(1, 1000), st.integers(0, 2**32))
@settings(max_examples=150, deadline=None)
def test_chunk_round_trip_any_split(batch, chunk_size, seed):
    """Whatever the chunk size (set in band), timestamps (extended ones included) and how the bytes
    are split by the network, the reader gives back the messages the writer wrote."""
    writer = ChunkWriter()
    data = writer.encode(control(SET_CHUNK_SIZE, chunk_size))
    writer.chunk_size = chunk_size
    data += b"".join(writer.encode(m) for m in batch)
    reader = ChunkReader()
    out = feed_in_pieces(reader, data, random.Random(seed))
    assert out[0].msg_type == SET_CHUNK_SIZE
    assert reader.chunk_size == chunk_size
    assert [(m.msg_type, m.payload, m.timestamp, m.msid, m.csid) for m in out[1:]] == [
        (m.msg_type, m.payload, m.timestamp, m.msid, m.csid) for m in batch
    ]


def header(fmt: int, csid: int, ts: int | None = None, length: int | None = None, kind: int | None = None) -> bytes:
    out = bytes([(fmt << 6) | csid])
    if ts is not None:
        out += ts.to_bytes(3, "big")
    if length is not None:
        out += length.to_bytes(3, "big") + bytes([kind or 0])
    return out


def test_chunk_header_types_and_timestamp_deltas():
    """fmt 0 sets the time; fmt 1 and 2 add a delta; a fmt 3 header starting a message repeats it."""
    data = (
        header(0, 4, 1000, 2, VIDEO)
        + (1).to_bytes(4, "little")
        + b"v0"
        + header(1, 4, 33, 3, AUDIO)
        + b"a01"
        + header(2, 4, 10)
        + b"a02"
        + header(3, 4)
        + b"a03"
    )
    out = ChunkReader().feed(data)
    assert [(m.msg_type, m.timestamp, m.msid, m.payload) for m in out] == [
        (VIDEO, 1000, 1, b"v0"),
        (AUDIO, 1033, 1, b"a01"),
        (AUDIO, 1043, 1, b"a02"),
        (AUDIO, 1053, 1, b"a03"),
    ]


def test_extended_timestamp_repeated_in_continuations():
    ts = 0x01020304
    writer = ChunkWriter()  # 128-byte chunks: 300 bytes take two continuations, each with the 4 bytes
    data = writer.encode(Message(VIDEO, b"\xaa" * 300, ts, 1, 6))
    assert data.count(ts.to_bytes(4, "big")) == 3
    [message] = ChunkReader().feed(data)
    assert message.timestamp == ts
    assert len(message.payload) == 300


def test_abort_discards_the_partial_message():
    writer = ChunkWriter()
    first = writer.encode(Message(VIDEO, b"x" * 200, 0, 1, 5))
    reader = ChunkReader()
    assert reader.feed(first[: 12 + 128]) == []  # the first chunk only
    out = reader.feed(writer.encode(control(ABORT, 5)) + writer.encode(Message(AUDIO, b"ok", 40, 1, 5)))
    assert [(m.msg_type, m.payload) for m in out] == [(ABORT, (5).to_bytes(4, "big")), (AUDIO, b"ok")]


@pytest.mark.parametrize("size", [0, 65537, 1 << 31])
def test_set_chunk_size_out_of_range(size):
    with pytest.raises(ProtocolError, match="Set Chunk Size"):
        ChunkReader().feed(ChunkWriter().encode(control(SET_CHUNK_SIZE, size)))


def test_chunk_limits():
    limits = ChunkLimits(max_message=1000, max_chunk_streams=4, max_partial=2)
    with pytest.raises(ProtocolError, match="over the 1000-byte limit"):
        ChunkReader(limits).feed(header(0, 3, 0, 1001, VIDEO) + bytes(4))
    with pytest.raises(ProtocolError, match="starts with a fmt 1 header"):
        ChunkReader(limits).feed(header(1, 3, 0, 10, VIDEO))
    writer = ChunkWriter()
    with pytest.raises(ProtocolError, match="more than 4 chunk streams"):
        ChunkReader(limits).feed(b"".join(writer.encode(Message(AUDIO, b"a", 0, 1, c)) for c in range(3, 8)))
    partial = b"".join(writer.encode(Message(VIDEO, b"x" * 200, 0, 1, c))[:140] for c in range(3, 6))
    with pytest.raises(ProtocolError, match="more than 2 messages half received"):
        ChunkReader(limits).feed(partial)


def test_three_byte_chunk_stream_ids():
    writer = ChunkWriter()
    out = ChunkReader().feed(writer.encode(Message(AUDIO, b"far", 7, 1, 64 + 256 + 5)))
    assert out[0].csid == 64 + 256 + 5
    assert out[0].payload == b"far"


# -- FLV tags --------------------------------------------------------------------------------------

SPS = bytes.fromhex("6742c01e95a0a0fd0100")
PPS = bytes.fromhex("68ce3c80")
AVCC = (
    bytes([1, 0x42, 0xC0, 0x1E, 0xFF, 0xE1])
    + len(SPS).to_bytes(2, "big")
    + SPS
    + b"\x01"
    + len(PPS).to_bytes(2, "big")
    + PPS
)


def test_flv_avc_and_aac():
    config = parse_video(bytes([0x17, 0, 0, 0, 0]) + AVCC)
    assert (config.codec, config.config, config.data) == ("h264", True, AVCC)
    assert avc_config_valid(config.data)
    assert not avc_config_valid(AVCC[:-2])
    frame = parse_video(bytes([0x27, 1, 0xFF, 0xFF, 0xDF]) + b"\x00\x00\x00\x02ab")
    assert (frame.keyframe, frame.cts, frame.data) == (False, -33, b"\x00\x00\x00\x02ab")
    assert parse_video(bytes([0x17, 1, 0, 0, 0x21]) + b"nal").keyframe
    asc = parse_audio(b"\xaf\x00\x11\x90")
    assert (asc.codec, asc.config, asc.data) == ("aac", True, b"\x11\x90")
    assert parse_audio(b"\xaf\x01raw").data == b"raw"


def test_flv_enhanced_hevc_header():
    start = parse_video(bytes([0x90]) + b"hvc1" + b"cfg")
    assert (start.codec, start.config, start.data) == ("hevc", True, b"cfg")
    coded = parse_video(bytes([0x91]) + b"hvc1" + b"\x00\x00\x10" + b"nal")
    assert (coded.keyframe, coded.cts, coded.data) == (True, 16, b"nal")
    assert parse_video(bytes([0x94]) + b"hvc1" + b"colorInfo").end  # metadata: nothing to decode


@pytest.mark.parametrize(
    "body",
    [b"", b"\x12\x00\x00\x00\x00", b"\x17\x00", b"\x17\x05\x00\x00\x00", b"\x90av01", b"\x2f\x01", b"\xaf"],
)
def test_flv_refuses_what_it_cannot_decode(body):
    with pytest.raises(FlvError):
        if body[:1] in (b"\x2f", b"\xaf"):
            parse_audio(body)
        else:
            parse_video(body)


# -- handshake -------------------------------------------------------------------------------------


def test_handshake_reply():
    c1 = bytes(8) + bytes(range(256)) * 5 + bytes(248)
    reply = server_hello(c1)
    assert len(reply) == 1 + 2 * SIZE
    assert reply[0] == 3
    assert reply[5:9] == b"\x00\x00\x00\x00"  # S1 "version" zero: no Flash digest to check
    assert reply[1 + SIZE :] == c1  # S2 echoes C1


# -- decoder queue ---------------------------------------------------------------------------------


def test_decoder_queue_is_bounded_and_counts_drops():
    """Not started: only the queue the event loop fills is exercised. Video waits for a keyframe
    (a P-frame without its references decodes to garbage); a full queue drops and counts."""
    decoder = FlvDecoder("unit", ingest=None, max_packets=4, max_bytes=1000)  # type: ignore[arg-type]
    key = FlvPacket("video", "h264", False, b"k" * 10, keyframe=True)
    inter = FlvPacket("video", "h264", False, b"p" * 10)
    assert not decoder.put(inter, 0)
    assert decoder.put(key, 0)
    assert all(decoder.put(inter, t) for t in (33, 66, 99))
    assert not decoder.put(FlvPacket("audio", "aac", False, b"a"), 100)
    assert decoder.packets_dropped == 2
    assert decoder.pending() == 4
    big = FlvDecoder("unit", ingest=None, max_packets=100, max_bytes=25)  # type: ignore[arg-type]
    assert big.put(key, 0) and big.put(inter, 33)
    assert not big.put(inter, 66)  # 30 bytes would be over the 25-byte budget
    big.close()
    assert big.pending() == 1  # only the stop marker is left
