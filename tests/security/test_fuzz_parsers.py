"""Property-based fuzz (Hypothesis) of every parser a caller's bytes reach: JSON bodies and params
strings, merge-patch params, the stream start body, SDP offers and ICE fragments, and trickle
segments through the real demuxer. Each parser either returns or raises its own declared error,
which the routes turn into a 4xx; anything else would be a 500.

The counts are bounded (derandomized, a fixed number of examples) so the run takes seconds.
`STREAMLENS_FUZZ_EXAMPLES` raises them for a longer local run."""

from __future__ import annotations

import asyncio
import json
import os
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from httpapi.errors import status_of
from httpapi.json_body import JSONBodyError, loads_limited
from media.decode import BytePipe, DecoderOptions, DecodeSink, MediaDecoder
from media.params import compose_patches, merge_patch
from media.webrtc_sdp import OfferError, parse_offer, parse_sdpfrag
from server.start_request import parse_start
from tests.media_gen import make_segments

EXAMPLES = int(os.environ.get("STREAMLENS_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=24,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=6)


# -- JSON -----------------------------------------------------------------------------------------
@FUZZ
@given(raw=st.binary(max_size=1024) | st.text(max_size=1024).map(str.encode))
def test_any_bytes_parse_or_name_the_problem(raw: bytes) -> None:
    try:
        loads_limited(raw, 32)
    except JSONBodyError as exc:
        assert str(exc)


@FUZZ
@given(depth=st.integers(1, 6000), bracket=st.sampled_from(["[]", "{}"]))
def test_nesting_beyond_the_limit_is_refused_at_any_depth(depth: int, bracket: str) -> None:
    raw = ("[" * depth + '"x"' + "]" * depth) if bracket == "[]" else ('{"a":' * depth + "1" + "}" * depth)
    if depth > 32:
        with pytest.raises(JSONBodyError):
            loads_limited(raw.encode(), 32)
    else:
        loads_limited(raw.encode(), 32)


# -- params (RFC 7396 merge patch) ----------------------------------------------------------------
@FUZZ
@given(target=json_values, patch=json_values, later=json_objects)
def test_merge_patch_is_total_and_idempotent(target, patch, later) -> None:
    merged = merge_patch(target, patch)
    json.dumps(merged)  # still plain JSON
    assert merge_patch(merged, patch) == merged  # RFC 7396: applying a patch twice changes nothing more
    if isinstance(patch, dict):
        compose_patches(patch, later)


# -- the stream start body ------------------------------------------------------------------------
@FUZZ
@given(
    body=json_objects
    | st.fixed_dictionaries(
        {"subscribe_url": st.text(max_size=40), "publish_url": st.text(max_size=40)},
        optional={
            "params": json_values | st.text(max_size=60),
            "gateway_request_id": json_values,
            "manifest_id": st.text(max_size=20),
        },
    ),
    stream_id=st.none() | st.text(max_size=20),
)
def test_start_bodies_parse_or_are_refused_with_a_reason(body, stream_id) -> None:
    try:
        parse_start(body, stream_id)
    except (ValueError, ValidationError) as exc:  # ValidationError is a ValueError; both → 400
        assert str(exc)


# -- SDP ------------------------------------------------------------------------------------------
VALID_OFFER = """v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
m=audio 9 UDP/TLS/RTP/SAVPF 111
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:abcd
a=ice-pwd:abcdefghijklmnopqrstuvwx
a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08
a=setup:actpass
a=mid:0
a=sendonly
a=rtcp-mux
a=rtpmap:111 opus/48000/2
m=video 9 UDP/TLS/RTP/SAVPF 96
c=IN IP4 0.0.0.0
a=ice-ufrag:abcd
a=ice-pwd:abcdefghijklmnopqrstuvwx
a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08
a=setup:actpass
a=mid:1
a=sendonly
a=rtcp-mux
a=rtpmap:96 H264/90000
a=fmtp:96 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f
a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host
""".replace("\n", "\r\n")
OFFER_LINES = VALID_OFFER.split("\r\n")
SDP_JUNK = st.sampled_from(
    [
        "a=rtpmap:",
        "m=video",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "a=candidate:x",
        "a=candidate:1 1 udp abc 1.2.3.4 x typ host",
        "a=fmtp:96 \x00",
        "a=ssrc:-1 cname:x",
        "c=IN IP6 ::",
        "a=rid:h send",
        "a=simulcast:send h;l",
        "m=audio 0 RTP/AVP",
        "a=extmap:99999 urn:x",
        "o=",
        "a=fingerprint:",
        "a=setup:",
        "a=mid:" + "m" * 300,
    ]
) | st.text(max_size=40)


@st.composite
def mutated_offers(draw) -> str:
    lines = list(OFFER_LINES)
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["drop", "insert", "replace", "truncate"]))
        at = draw(st.integers(0, len(lines) - 1))
        if action == "drop" and len(lines) > 1:
            lines.pop(at)
        elif action == "insert":
            lines.insert(at, draw(SDP_JUNK))
        elif action == "replace":
            lines[at] = draw(SDP_JUNK)
        else:
            lines[at] = lines[at][: draw(st.integers(0, len(lines[at])))]
    return "\r\n".join(lines)


def test_the_reference_offer_is_valid() -> None:
    assert parse_offer(VALID_OFFER).kinds == ["audio", "video"]


@FUZZ
@given(text=mutated_offers() | st.text(max_size=400))
def test_offers_parse_or_are_refused_with_a_status(text: str) -> None:
    try:
        parse_offer(text)
    except OfferError as exc:
        assert status_of(exc) in (400, 422) and str(exc)


@FUZZ
@given(
    text=st.lists(
        SDP_JUNK
        | st.sampled_from(
            [
                "a=ice-ufrag:x",
                "a=ice-pwd:y",
                "a=mid:0",
                "a=end-of-candidates",
                "a=candidate:1 1 udp 2130706431 ::1 50000 typ host",
            ]
        ),
        max_size=8,
    ).map("\r\n".join)
)
def test_ice_fragments_parse_or_are_refused(text: str) -> None:
    try:
        parse_sdpfrag(text, "0")
    except OfferError as exc:
        assert status_of(exc) in (400, 422)


# -- trickle segments through the real demuxer ----------------------------------------------------
SEGMENT_EXAMPLES = max(8, EXAMPLES // 10)  # each example runs the demuxer on a real segment


class CountingSink(DecodeSink):
    def __init__(self) -> None:
        self.video = self.errors = 0

    def on_video_frame(self, frame) -> None:
        self.video += 1

    def on_decode_error(self, message: str) -> None:
        self.errors += 1


@pytest.fixture(scope="module")
def segment() -> bytes:
    return make_segments(1.0, width=64, height=64, fps=10, audio=False)[0]


@settings(
    max_examples=SEGMENT_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(data=st.data())
def test_damaged_segments_never_escape_the_decoder(segment: bytes, data) -> None:
    """Flipped, cut and inserted bytes: the decoder thread ends on its own with a reason, and no
    exception escapes it (a real trickle stream would carry on or stop with that reason)."""
    damaged = bytearray(segment)
    for _ in range(data.draw(st.integers(1, 20))):
        at = data.draw(st.integers(0, len(damaged) - 1))
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if kind == "flip":
            damaged[at] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del damaged[at : at + data.draw(st.integers(1, 400))]
        else:
            damaged[at:at] = data.draw(st.binary(min_size=1, max_size=400))
        if not damaged:
            damaged = bytearray(b"\x47")
    pipe = BytePipe()
    ended = threading.Event()
    escaped: list[BaseException] = []
    decoder = MediaDecoder(
        pipe, CountingSink(), "fuzz-decoder", DecoderOptions(max_restarts=2), on_exit=lambda reason: ended.set()
    )

    def run() -> None:
        try:
            MediaDecoder.run(decoder)
        except BaseException as exc:  # noqa: BLE001 - the property under test
            escaped.append(exc)
            ended.set()

    asyncio.run(pipe.write(bytes(damaged)))  # one chunk, then end of input
    pipe.write_eof()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    assert ended.wait(30), "the decoder did not end on a damaged segment"
    worker.join(5)
    assert not escaped, escaped
    assert decoder.end_reason
