"""WebVTT and SRT text from a job's transcript segments (optionally one translation of them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _clock(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _text(segment: dict[str, Any], lang: str | None) -> str:
    if lang:
        text = (segment.get("translations") or {}).get(lang)
        if text is None:
            raise KeyError(lang)
    else:
        text = segment.get("text", "")
    # a blank line would end the cue; "-->" would start a new one
    return " ".join(str(text).split()).replace("-->", "->")


def to_vtt(segments: Sequence[dict[str, Any]], lang: str | None = None) -> str:
    lines = ["WEBVTT", ""]
    for index, segment in enumerate(segments, 1):
        lines += [
            str(index),
            f"{_clock(segment['start'], '.')} --> {_clock(segment['end'], '.')}",
            _text(segment, lang),
            "",
        ]
    return "\n".join(lines)


def to_srt(segments: Sequence[dict[str, Any]], lang: str | None = None) -> str:
    lines: list[str] = []
    for index, segment in enumerate(segments, 1):
        lines += [
            str(index),
            f"{_clock(segment['start'], ',')} --> {_clock(segment['end'], ',')}",
            _text(segment, lang),
            "",
        ]
    return "\n".join(lines)
