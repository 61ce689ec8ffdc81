"""FLV tag bodies as RTMP carries them (message types 8 and 9): AVC, Enhanced RTMP HEVC, AAC.

A sequence header carries the decoder configuration (AVCDecoderConfigurationRecord, HEVC's hvcC,
AAC's AudioSpecificConfig), which becomes the PyAV decoder's extradata; coded frames carry AVCC
(length-prefixed) NAL units or raw AAC, which PyAV decodes as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

AVC_CODEC_ID = 7
AAC_SOUND_FORMAT = 10
KEYFRAME = 1
# Enhanced RTMP v2 packet types
EX_SEQUENCE_START, EX_CODED_FRAMES, EX_SEQUENCE_END, EX_CODED_FRAMES_X, EX_METADATA = 0, 1, 2, 3, 4
EX_FOURCC = {b"hvc1": "hevc"}


class FlvError(ValueError):
    """A tag body this server cannot use (other codecs, truncated)."""


@dataclass(frozen=True)
class FlvPacket:
    kind: str  # "video" | "audio"
    codec: str  # "h264" | "hevc" | "aac"
    config: bool  # a sequence header: `data` is the decoder's extradata
    data: bytes
    cts: int = 0  # composition time offset, ms (pts = dts + cts)
    keyframe: bool = False
    end: bool = False  # nothing to decode (end of sequence, Enhanced RTMP metadata such as colorInfo)


def _si24(raw: bytes) -> int:
    value = int.from_bytes(raw, "big")
    return value - (1 << 24) if value & 0x800000 else value


def parse_video(body: bytes) -> FlvPacket:
    if len(body) < 1:
        raise FlvError("empty video tag")
    first = body[0]
    frame_type = (first >> 4) & 0x07
    if first & 0x80:  # Enhanced RTMP: IsExHeader | frame type | packet type, then a FourCC
        packet_type = first & 0x0F
        if len(body) < 5:
            raise FlvError("truncated Enhanced RTMP video header")
        codec = EX_FOURCC.get(bytes(body[1:5]))
        if codec is None:
            raise FlvError(f"unsupported Enhanced RTMP video codec {bytes(body[1:5])!r}")
        if packet_type == EX_SEQUENCE_START:
            return FlvPacket("video", codec, True, bytes(body[5:]))
        if packet_type in (EX_SEQUENCE_END, EX_METADATA):
            return FlvPacket("video", codec, False, b"", end=True)
        if packet_type == EX_CODED_FRAMES:
            if len(body) < 8:
                raise FlvError("truncated Enhanced RTMP coded frames")
            return FlvPacket("video", codec, False, bytes(body[8:]), _si24(body[5:8]), frame_type == KEYFRAME)
        if packet_type == EX_CODED_FRAMES_X:
            return FlvPacket("video", codec, False, bytes(body[5:]), 0, frame_type == KEYFRAME)
        raise FlvError(f"unsupported Enhanced RTMP packet type {packet_type}")
    if first & 0x0F != AVC_CODEC_ID:
        raise FlvError(f"unsupported FLV video codec id {first & 0x0F} (H.264 is 7)")
    if len(body) < 5:
        raise FlvError("truncated AVC video tag")
    packet_type = body[1]
    if packet_type == 0:
        return FlvPacket("video", "h264", True, bytes(body[5:]))
    if packet_type == 2:
        return FlvPacket("video", "h264", False, b"", end=True)
    if packet_type != 1:
        raise FlvError(f"unknown AVC packet type {packet_type}")
    return FlvPacket("video", "h264", False, bytes(body[5:]), _si24(body[2:5]), frame_type == KEYFRAME)


def parse_audio(body: bytes) -> FlvPacket:
    if len(body) < 2:
        raise FlvError("truncated audio tag")
    if body[0] >> 4 != AAC_SOUND_FORMAT:
        raise FlvError(f"unsupported FLV sound format {body[0] >> 4} (AAC is 10)")
    return FlvPacket("audio", "aac", body[1] == 0, bytes(body[2:]))


def avc_config_valid(record: bytes) -> bool:
    """An AVCDecoderConfigurationRecord with at least one SPS and one PPS that fit in it."""
    if len(record) < 7 or record[0] != 1:
        return False
    pos, count = 6, record[5] & 0x1F
    for group in range(2):
        for _ in range(count):
            if pos + 2 > len(record):
                return False
            pos += 2 + int.from_bytes(record[pos : pos + 2], "big")
            if pos > len(record):
                return False
        if group == 0:
            if pos >= len(record):
                return False
            count = record[pos]
            pos += 1
    return (record[5] & 0x1F) > 0 and count > 0
