"""CEA-608 roll-up captions carried in H.264 as ATSC A/53 `cc_data` SEI (what YouTube, Twitch and
FFmpeg's `subcc` read).

- `Cea608Encoder` turns caption text into 608 byte pairs (roll-up, 2 or 3 rows, 32 columns, CC1 on
  field 1 and optionally CC3 on field 2) and paces them, one field-1 and one field-2 pair per frame
  at 30 fps, as the `cc_data` triples of one video frame.
- `a53_sei_payload`, `sei_nal` and `insert_sei` wrap those triples in an SEI NAL and splice it into
  an encoded access unit, Annex B (encoder output, MPEG-TS) or AVCC (length-prefixed, FLV/MP4).

PyAV cannot attach `AV_FRAME_DATA_A53_CC` side data to a frame (its frame side data is read-only),
so libx264's `a53cc` cannot write the SEI for us: the SEI goes into the encoded packets instead:

    cc = encoder.next_frame_cc_data()            # once per output frame, in presentation order
    data = insert_sei(bytes(packet), caption_sei(cc_of[packet.pts]))   # Annex B from libx264

Match the cc_data to packets by pts (encode with `bf=0` so decode and presentation order agree),
and set libx264's `a53cc=0` when the frames it encodes were decoded from a source that had 608
(else the source's captions come out too). FLV muxing converts Annex B packets to AVCC; packets
demuxed from FLV/MP4 are AVCC already (`length_size=4`).
"""

from __future__ import annotations

import math
import unicodedata
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

COLUMNS = 32  # a 608 caption row
ROLL_UP_ROWS = (2, 3)
CHANNELS = (1, 3)  # CC1 (field 1) and CC3 (field 2): data channel 1 of each field

# miscellaneous control codes (second byte); the first byte is 0x14 for CC1, 0x15 for CC3
RU2, RU3, CR = 0x25, 0x26, 0x2D
MISC_FIRST_BYTE = {1: 0x14, 3: 0x15}
PAC_ROW15 = (0x14, 0x70)  # preamble address code: row 15, indent 0 (white); same in both fields
NULL_PAIR = (0x00, 0x00)
# a reserved control code (once "alarm off"), ignored by decoders: it separates two equal codes so
# that the second is not dropped as the repeat of the first (a null pair does not, in FFmpeg)
SEPARATOR = 0x22

# cc_data triple markers: 0xF8 | cc_valid << 2 | cc_type
FIELD1_VALID, FIELD2_VALID, DTVCC_PADDING = 0xFC, 0xFD, 0xFA

# --- the 608 character sets ------------------------------------------------------------------------------------------
# basic set (one byte): printable ASCII, except these codes that 608 redefines
BASIC_OVERRIDES = {
    0x27: "’",
    0x2A: "á",
    0x5C: "é",
    0x5E: "í",
    0x5F: "ó",
    0x60: "ú",
    0x7B: "ç",
    0x7C: "÷",
    0x7D: "Ñ",
    0x7E: "ñ",
    0x7F: "█",
}
# special characters: 0x11 + code (0x39, the transparent space, is left out)
SPECIAL = {
    0x30: "®",
    0x31: "°",
    0x32: "½",
    0x33: "¿",
    0x34: "™",
    0x35: "¢",
    0x36: "£",
    0x37: "♪",
    0x38: "à",
    0x3A: "è",
    0x3B: "â",
    0x3C: "ê",
    0x3D: "î",
    0x3E: "ô",
    0x3F: "û",
}
# extended characters: 0x12 (Spanish/French/misc) or 0x13 (Portuguese/German/Danish) + code. A
# decoder writes each one over the column before it, so a basic fallback letter is sent first.
EXTENDED = {
    (0x12, 0x20): "Á",
    (0x12, 0x21): "É",
    (0x12, 0x22): "Ó",
    (0x12, 0x23): "Ú",
    (0x12, 0x24): "Ü",
    (0x12, 0x25): "ü",
    (0x12, 0x26): "´",
    (0x12, 0x27): "¡",
    (0x12, 0x28): "*",
    (0x12, 0x29): "‘",
    (0x12, 0x2B): "©",
    (0x12, 0x2C): "℠",
    (0x12, 0x2D): "·",
    (0x12, 0x2E): "“",
    (0x12, 0x2F): "”",
    (0x12, 0x30): "À",
    (0x12, 0x31): "Â",
    (0x12, 0x32): "Ç",
    (0x12, 0x33): "È",
    (0x12, 0x34): "Ê",
    (0x12, 0x35): "Ë",
    (0x12, 0x36): "ë",
    (0x12, 0x37): "Î",
    (0x12, 0x38): "Ï",
    (0x12, 0x39): "ï",
    (0x12, 0x3A): "Ô",
    (0x12, 0x3B): "Ù",
    (0x12, 0x3C): "ù",
    (0x12, 0x3D): "Û",
    (0x12, 0x3E): "«",
    (0x12, 0x3F): "»",
    (0x13, 0x20): "Ã",
    (0x13, 0x21): "ã",
    (0x13, 0x22): "Í",
    (0x13, 0x23): "Ì",
    (0x13, 0x24): "ì",
    (0x13, 0x25): "Ò",
    (0x13, 0x26): "ò",
    (0x13, 0x27): "Õ",
    (0x13, 0x28): "õ",
    (0x13, 0x29): "{",
    (0x13, 0x2A): "}",
    (0x13, 0x2B): "\\",
    (0x13, 0x2C): "^",
    (0x13, 0x2D): "_",
    (0x13, 0x2E): "|",
    (0x13, 0x2F): "~",
    (0x13, 0x30): "Ä",
    (0x13, 0x31): "ä",
    (0x13, 0x32): "Ö",
    (0x13, 0x33): "ö",
    (0x13, 0x34): "ß",
    (0x13, 0x35): "¥",
    (0x13, 0x36): "¤",
    (0x13, 0x37): "¦",
    (0x13, 0x38): "Å",
    (0x13, 0x39): "å",
    (0x13, 0x3A): "Ø",
    (0x13, 0x3B): "ø",
    (0x13, 0x3C): "┌",
    (0x13, 0x3D): "┐",
    (0x13, 0x3E): "└",
    (0x13, 0x3F): "┘",
}
# characters outside the three sets that have a close 608 spelling (before the accent stripping)
SUBSTITUTES = {
    "'": "’",
    "`": "‘",
    "–": "-",
    "—": "-",
    "−": "-",
    "…": "...",
    "„": "“",
    "‚": "‘",
    "‹": "«",
    "›": "»",
    "\u00a0": " ",
    "Œ": "OE",
    "œ": "oe",
    "Æ": "AE",
    "æ": "ae",
    "Ð": "D",
    "ð": "d",
    "Þ": "Th",
    "þ": "th",
    "ł": "l",
    "Ł": "L",
    "đ": "d",
    "Đ": "D",
    "ı": "i",
    "€": "EUR",
}
UNKNOWN = "?"  # a run of letters or digits 608 cannot show (another script) becomes one "?"


@dataclass(frozen=True)
class _Glyph:
    """How one displayed character is sent: a basic byte, or a two-byte code sent twice, with the
    basic byte that an extended character overwrites."""

    basic: int | None = None
    code: tuple[int, int] | None = None


def _build_glyphs() -> dict[str, _Glyph]:
    glyphs = {chr(b): _Glyph(basic=b) for b in range(0x20, 0x7F) if b not in BASIC_OVERRIDES}
    glyphs.update({char: _Glyph(basic=b) for b, char in BASIC_OVERRIDES.items()})
    glyphs.update({char: _Glyph(code=(0x11, lo)) for lo, char in SPECIAL.items()})
    for code, char in EXTENDED.items():
        glyphs[char] = _Glyph(basic=_fallback_byte(char, glyphs), code=code)
    return glyphs


def _fallback_byte(char: str, basic: dict[str, _Glyph]) -> int:
    """The basic character shown by a decoder without the extended set: the base letter, else '-'."""
    base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
    fallback = {"ß": "s", "Ø": "O", "ø": "o", "«": '"', "»": '"', "“": '"', "”": '"', "‘": "’", "¡": "!", "©": "c"}
    base = fallback.get(char, base)
    glyph = basic.get(base[:1]) if base else None
    return glyph.basic if glyph is not None and glyph.basic is not None else ord("-")


GLYPHS: dict[str, _Glyph] = _build_glyphs()


def transliterate(text: str) -> str:
    """`text` as a 608 decoder will show it: characters of 608's basic, special and extended sets
    kept; others spelled with the nearest ones (accents stripped to the base letter, `'` as `’`, …
    as ...); a run of letters or digits of other scripts becomes one "?"; other symbols (emoji) are
    dropped. White space is collapsed to single spaces."""
    out: list[str] = []
    for char in unicodedata.normalize("NFC", text):
        if char in GLYPHS:
            out.append(char)
            continue
        if char.isspace():
            out.append(" ")
            continue
        spelled = SUBSTITUTES.get(char)
        if spelled is None:
            base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
            spelled = base if base and all(c in GLYPHS for c in base) else None
        if spelled is not None:
            out.append(spelled)
        elif unicodedata.category(char)[0] in "LN":
            if not out or out[-1] != UNKNOWN:
                out.append(UNKNOWN)
        # anything else (emoji, other symbols, combining marks on their own) is dropped
    return " ".join("".join(out).split())


def wrap(text: str, columns: int = COLUMNS) -> list[str]:
    """Displayable `text` broken into rows of at most `columns` characters at spaces (a longer
    word is cut)."""
    rows: list[str] = []
    row = ""
    for word in text.split():
        while len(word) > columns:
            if row:
                rows.append(row)
                row = ""
            rows.append(word[:columns])
            word = word[columns:]
        if not word:
            continue
        if row and len(row) + 1 + len(word) <= columns:
            row += " " + word
        else:
            if row:
                rows.append(row)
            row = word
    if row:
        rows.append(row)
    return rows


def odd_parity(byte: int) -> int:
    """The 7-bit `byte` with bit 7 set so that the byte has an odd number of one bits."""
    byte &= 0x7F
    return byte | (0x80 if bin(byte).count("1") % 2 == 0 else 0)


def _text_pairs(row: str, misc: int = MISC_FIRST_BYTE[1]) -> list[tuple[int, int]]:
    """The byte pairs (without parity) that write `row`: basic characters two a pair, an odd one
    padded with a null; special and extended codes on their own pair, twice; two equal codes in a
    row get the channel's (`misc`) separator code between them."""
    pairs: list[tuple[int, int]] = []
    pending: list[int] = []

    def flush() -> None:
        for i in range(0, len(pending), 2):
            chunk = pending[i : i + 2]
            pairs.append((chunk[0], chunk[1] if len(chunk) > 1 else 0x00))
        pending.clear()

    for char in row:
        glyph = GLYPHS[char]
        if glyph.basic is not None:
            pending.append(glyph.basic)
        if glyph.code is not None:
            flush()
            if pairs and pairs[-1] == glyph.code:
                pairs.append((misc, SEPARATOR))
            pairs += [glyph.code, glyph.code]
    flush()
    return pairs


@dataclass
class _Channel:
    misc: int  # first byte of the miscellaneous control codes on this channel
    lines: deque[tuple[bool, list[tuple[int, int]]]] = field(default_factory=deque)
    sending: deque[tuple[int, int]] = field(default_factory=deque)
    resend_mode: bool = True  # the roll-up code goes out before the next row


class Cea608Encoder:
    """Roll-up 608 captions for one video stream.

    `add_caption(text)` queues a caption (transliterated, wrapped at 32 columns); each call of
    `next_frame_cc_data()` gives the `cc_data` triples of the next video frame: the 608 slots of
    that frame (one pair per field at 30 fps; null pairs when there is nothing to send) followed by
    CEA-708 padding up to the `cc_count` the frame rate calls for (20 at 29.97/30 fps). Each caption
    starts with the roll-up code, each row with a carriage return (the rows above roll up) and the
    row-15 preamble code; control codes go out twice as 608 requires. A 32-column row takes about
    22 frames (0.7 s at 30 fps). At most `max_pending_rows` rows wait per channel (about 6 s): past
    that the oldest unsent row is dropped and counted in `dropped_rows`, so captions never lag
    further behind. Meant for finals: 608 cannot revise a row once sent. Not thread safe: one
    owner calls both methods."""

    def __init__(self, rows: int = 2, fps: float = 30.0, *, max_pending_rows: int = 8) -> None:
        if rows not in ROLL_UP_ROWS:
            raise ValueError(f"roll-up rows must be one of {ROLL_UP_ROWS}, not {rows}")
        if not 1.0 <= fps <= 120.0:
            raise ValueError(f"fps must be within 1..120, not {fps}")
        if max_pending_rows < 1:
            raise ValueError("max_pending_rows must be at least 1")
        self.rows = rows
        self.fps = fps
        self.max_pending_rows = max_pending_rows
        # 608 runs at 60 fields a second (59.94 with 29.97 video): a 29.97 stream paces like a 30 one
        nominal = round(fps) if abs(fps * 1.001 - round(fps * 1.001)) < 0.01 else fps
        self._fields_per_frame = 60.0 / nominal
        self.cc_count = min(31, max(math.ceil(self._fields_per_frame), round(600 / nominal)))
        self._field_clock = 0.0
        self._next_field = 0  # 0 = field 1 (CC1), 1 = field 2 (CC3)
        self._channels = {ch: _Channel(misc=MISC_FIRST_BYTE[ch]) for ch in CHANNELS}
        self.dropped_rows = 0
        self.captions = 0

    def add_caption(self, text: str, channel: int = 1) -> list[str]:
        """Queue `text` on CC1 (`channel=1`) or CC3 (`channel=3`); returns the rows as decoders
        will show them (empty when nothing of `text` is displayable)."""
        if channel not in CHANNELS:
            raise ValueError(f"channel must be one of {CHANNELS} (CC1 or CC3), not {channel}")
        rows = wrap(transliterate(text))
        ch = self._channels[channel]
        for i, row in enumerate(rows):
            ch.lines.append((i == 0, _text_pairs(row, ch.misc)))
            if len(ch.lines) > self.max_pending_rows:
                ch.lines.popleft()
                ch.resend_mode = True  # the dropped row may have carried the roll-up code
                self.dropped_rows += 1
        self.captions += 1 if rows else 0
        return rows

    def pending_rows(self, channel: int = 1) -> int:
        """Rows queued on `channel`, not counting the one being sent."""
        return len(self._channels[channel].lines)

    def idle(self) -> bool:
        """True when every channel has sent everything it was given."""
        return not any(ch.lines or ch.sending for ch in self._channels.values())

    def _next_pair(self, channel: int) -> tuple[int, int]:
        ch = self._channels[channel]
        if not ch.sending and ch.lines:
            first, pairs = ch.lines.popleft()
            head: list[tuple[int, int]] = []
            if first or ch.resend_mode:
                mode = (ch.misc, RU2 if self.rows == 2 else RU3)
                head += [mode, mode]
                ch.resend_mode = False
            cr = (ch.misc, CR)
            head += [cr, cr, PAC_ROW15, PAC_ROW15]
            ch.sending.extend(head + pairs)
        return ch.sending.popleft() if ch.sending else NULL_PAIR

    def next_frame_cc_data(self) -> bytes:
        """The `cc_data` triples (3 bytes each, `cc_count` of them) for the next video frame."""
        self._field_clock += self._fields_per_frame
        slots = int(self._field_clock + 1e-9)
        self._field_clock -= slots
        out = bytearray()
        for _ in range(slots):
            field_two = self._next_field == 1
            first, second = self._next_pair(3 if field_two else 1)
            out += bytes((FIELD2_VALID if field_two else FIELD1_VALID, odd_parity(first), odd_parity(second)))
            self._next_field ^= 1
        out += bytes((DTVCC_PADDING, 0x00, 0x00)) * (self.cc_count - slots)
        return bytes(out)


# --- A/53 carriage in H.264 ------------------------------------------------------------------------------------------
A53_PREFIX = bytes((0xB5, 0x00, 0x31)) + b"GA94" + bytes((0x03,))  # ITU-T T.35 USA, ATSC provider, cc_data
SEI_USER_DATA_REGISTERED = 4
NAL_SEI = 6
VCL_TYPES = frozenset(range(1, 6))  # coded slices (IDR included)


def a53_sei_payload(cc_data: bytes) -> bytes:
    """The `user_data_registered_itu_t_t35` SEI payload carrying `cc_data` (whole triples, at most 31)."""
    count, rest = divmod(len(cc_data), 3)
    if rest or not 0 < count <= 31:
        raise ValueError(f"cc_data must be 1..31 triples of 3 bytes, got {len(cc_data)} bytes")
    # process_cc_data_flag set (0x40), as FFmpeg and libcaption write it; em_data 0xFF; marker 0xFF
    return A53_PREFIX + bytes((0x40 | count, 0xFF)) + cc_data + b"\xff"


def escape_rbsp(rbsp: bytes) -> bytes:
    """Emulation prevention: a 0x03 after any two zero bytes that precede a byte ≤ 0x03."""
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 0x03:
            out.append(0x03)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def unescape_rbsp(ebsp: bytes) -> bytes:
    """The inverse of `escape_rbsp`: drops each 0x03 that follows two zero bytes."""
    out = bytearray()
    zeros = 0
    for byte in ebsp:
        if zeros >= 2 and byte == 0x03:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _sei_number(value: int) -> bytes:
    """payloadType / payloadSize coding: 0xFF per whole 255, then the remainder."""
    return b"\xff" * (value // 255) + bytes((value % 255,))


def sei_nal(payload: bytes, payload_type: int = SEI_USER_DATA_REGISTERED) -> bytes:
    """An SEI NAL unit (header byte 0x06, no start code or length prefix) holding one message."""
    rbsp = _sei_number(payload_type) + _sei_number(len(payload)) + payload + b"\x80"  # rbsp stop bit
    return bytes((NAL_SEI,)) + escape_rbsp(rbsp)


def caption_sei(cc_data: bytes) -> bytes:
    """The SEI NAL unit that carries one frame's `cc_data`."""
    return sei_nal(a53_sei_payload(cc_data))


def annexb_nal_spans(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(start code offset, NAL offset, NAL end) of each NAL in Annex B `data`; a NAL's trailing
    zero bytes (the next 4-byte start code's `zero_byte`) are not part of it."""
    starts: list[tuple[int, int]] = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        code_at = i - 1 if i > 0 and data[i - 1] == 0 else i
        starts.append((code_at, i + 3))
        i = data.find(b"\x00\x00\x01", i + 3)
    for n, (code_at, nal_at) in enumerate(starts):
        end = starts[n + 1][0] if n + 1 < len(starts) else len(data)
        while end > nal_at and data[end - 1] == 0:
            end -= 1
        yield code_at, nal_at, end


def avcc_nal_spans(data: bytes, length_size: int) -> Iterator[tuple[int, int, int]]:
    """(length field offset, NAL offset, NAL end) of each NAL in length-prefixed `data`."""
    pos = 0
    while pos < len(data):
        if pos + length_size > len(data):
            raise ValueError("truncated NAL length field")
        size = int.from_bytes(data[pos : pos + length_size], "big")
        nal_at = pos + length_size
        if size == 0 or nal_at + size > len(data):
            raise ValueError(f"NAL length {size} at offset {pos} does not fit the access unit")
        yield pos, nal_at, nal_at + size
        pos = nal_at + size


def insert_sei(access_unit: bytes, sei: bytes, *, length_size: int | None = None) -> bytes:
    """`access_unit` with the NAL unit `sei` placed before its first coded slice (so after any
    AUD, SPS, PPS or other SEI): Annex B (start codes) when `length_size` is None, else AVCC with
    NAL lengths of `length_size` bytes (1, 2 or 4; FLV and MP4 use the avcC's, normally 4). Every
    original byte is kept. FFmpeg ignores an SEI that comes after the slices. An access unit with
    no slice gets the SEI at its end."""
    if not sei or sei[0] & 0x1F != NAL_SEI:
        raise ValueError("sei must be an SEI NAL unit without start code or length prefix")
    if length_size is None:
        spans = list(annexb_nal_spans(access_unit))
        framed = b"\x00\x00\x00\x01" + sei
    else:
        if length_size not in (1, 2, 4):
            raise ValueError(f"length_size must be 1, 2 or 4, not {length_size}")
        if len(sei) >= 1 << (8 * length_size):
            raise ValueError("the SEI does not fit the NAL length field")
        spans = list(avcc_nal_spans(access_unit, length_size))
        framed = len(sei).to_bytes(length_size, "big") + sei
    for frame_at, nal_at, end in spans:
        if end > nal_at and access_unit[nal_at] & 0x1F in VCL_TYPES:
            return access_unit[:frame_at] + framed + access_unit[frame_at:]
    return access_unit + framed
