"""AMF0 encode/decode (the RTMP command format), bounded against hostile input.

Decoding checks every length against the bytes left, caps strings, object sizes and nesting
depth, and raises `AmfError` on anything it does not understand; it never allocates more than the
message it reads. Objects decode to `dict`, ECMA arrays to `dict`, strict arrays to `list`,
null/undefined to `None`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

NUMBER, BOOLEAN, STRING, OBJECT, NULL, UNDEFINED, ECMA_ARRAY, OBJECT_END, STRICT_ARRAY, DATE, LONG_STRING = (
    0x00,
    0x01,
    0x02,
    0x03,
    0x05,
    0x06,
    0x08,
    0x09,
    0x0A,
    0x0B,
    0x0C,
)


class AmfError(ValueError):
    """Malformed or over-limit AMF0 data."""


@dataclass(frozen=True)
class AmfLimits:
    max_depth: int = 8
    max_string: int = 64 << 10  # bytes of one string (keys included)
    max_items: int = 1024  # entries of one object or array
    max_values: int = 64  # top-level values of one message


DEFAULT_LIMITS = AmfLimits()


class _Reader:
    def __init__(self, data: bytes, limits: AmfLimits) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.limits = limits

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise AmfError(f"truncated AMF0 data: {n} bytes wanted at {self.pos}, {len(self.data) - self.pos} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def text(self, length: int) -> str:
        if length > self.limits.max_string:
            raise AmfError(f"AMF0 string of {length} bytes is over the {self.limits.max_string}-byte limit")
        try:
            return bytes(self.take(length)).decode("utf-8")
        except UnicodeDecodeError:
            raise AmfError("AMF0 string is not UTF-8") from None

    def value(self, depth: int) -> Any:
        if depth > self.limits.max_depth:
            raise AmfError(f"AMF0 nesting deeper than {self.limits.max_depth}")
        marker = self.u8()
        if marker == NUMBER:
            return struct.unpack(">d", self.take(8))[0]
        if marker == BOOLEAN:
            return self.u8() != 0
        if marker == STRING:
            return self.text(self.u16())
        if marker == LONG_STRING:
            return self.text(self.u32())
        if marker in (NULL, UNDEFINED):
            return None
        if marker == OBJECT:
            return self.properties(depth)
        if marker == ECMA_ARRAY:
            self.u32()  # an advisory count: the end marker is what ends it
            return self.properties(depth)
        if marker == STRICT_ARRAY:
            count = self.u32()
            if count > self.limits.max_items:
                raise AmfError(f"AMF0 array of {count} items is over the {self.limits.max_items} limit")
            return [self.value(depth + 1) for _ in range(count)]
        if marker == DATE:
            millis = struct.unpack(">d", self.take(8))[0]
            self.take(2)  # time zone, unused by AMF0 writers
            return millis
        raise AmfError(f"unsupported AMF0 marker 0x{marker:02x}")

    def properties(self, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while True:
            key = self.text(self.u16())
            if key == "":
                if self.u8() != OBJECT_END:
                    raise AmfError("AMF0 object without its end marker")
                return out
            if len(out) >= self.limits.max_items:
                raise AmfError(f"AMF0 object over {self.limits.max_items} entries")
            out[key] = self.value(depth + 1)


def decode_all(data: bytes, limits: AmfLimits = DEFAULT_LIMITS) -> list[Any]:
    """Every value of one AMF0 message body."""
    reader = _Reader(data, limits)
    values: list[Any] = []
    while reader.pos < len(reader.data):
        if len(values) >= limits.max_values:
            raise AmfError(f"AMF0 message of more than {limits.max_values} values")
        values.append(reader.value(0))
    return values


class EcmaArray(dict[str, Any]):
    """A dict encoded as an AMF0 ECMA array (onMetaData) instead of an object."""


def _encode_key(key: str) -> bytes:
    raw = key.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise AmfError("AMF0 key longer than 65535 bytes")
    return len(raw).to_bytes(2, "big") + raw


def encode(value: Any) -> bytes:
    if value is None:
        return bytes([NULL])
    if isinstance(value, bool):
        return bytes([BOOLEAN, 1 if value else 0])
    if isinstance(value, int | float):
        return bytes([NUMBER]) + struct.pack(">d", float(value))
    if isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) <= 0xFFFF:
            return bytes([STRING]) + len(raw).to_bytes(2, "big") + raw
        return bytes([LONG_STRING]) + len(raw).to_bytes(4, "big") + raw
    if isinstance(value, dict):
        head = bytes([ECMA_ARRAY]) + len(value).to_bytes(4, "big") if isinstance(value, EcmaArray) else bytes([OBJECT])
        body = b"".join(_encode_key(str(k)) + encode(v) for k, v in value.items())
        return head + body + b"\x00\x00" + bytes([OBJECT_END])
    if isinstance(value, list | tuple):
        return bytes([STRICT_ARRAY]) + len(value).to_bytes(4, "big") + b"".join(encode(v) for v in value)
    raise AmfError(f"cannot encode {type(value).__name__} as AMF0")


def encode_all(*values: Any) -> bytes:
    return b"".join(encode(v) for v in values)
