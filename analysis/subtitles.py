"""WebVTT and SRT text from a job's transcript segments (optionally one translation of them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from media.captions import vtt_timestamp, webvtt_document


def _raw_text(segment: dict[str, Any], lang: str | None) -> str:
    if lang:
        text = (segment.get("translations") or {}).get(lang)
        if text is None:
            raise KeyError(lang)
    else:
        text = segment.get("text", "")
    return str(text)


def _srt_text(segment: dict[str, Any], lang: str | None) -> str:
    # a blank line would end the cue; "-->" would start a new one (SRT has no escaping)
    return " ".join(_raw_text(segment, lang).split()).replace("-->", "->")


def _srt_clock(seconds: float) -> str:
    return vtt_timestamp(seconds).replace(".", ",")


def to_vtt(segments: Sequence[dict[str, Any]], lang: str | None = None) -> str:
    """WebVTT through the one writer (media/captions.py), which escapes '&', '<' and '>'."""
    cues = [
        (index, segment["start"], segment["end"], _raw_text(segment, lang)) for index, segment in enumerate(segments, 1)
    ]
    return webvtt_document(cues)


def to_srt(segments: Sequence[dict[str, Any]], lang: str | None = None) -> str:
    lines: list[str] = []
    for index, segment in enumerate(segments, 1):
        lines += [
            str(index),
            f"{_srt_clock(segment['start'])} --> {_srt_clock(segment['end'])}",
            _srt_text(segment, lang),
            "",
        ]
    return "\n".join(lines)
