"""Final captions of a stream, kept for WebVTT, and the one WebVTT writer (live captions here and
recorded-video subtitles in analysis/subtitles.py both use `webvtt_document`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

from media.events import CaptionEvent, StreamEvent


def vtt_timestamp(seconds: float) -> str:
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def vtt_escape(text: str) -> str:
    """One line of WebVTT cue text: line breaks become spaces (a blank line would end the cue) and
    '&', '<', '>' are escaped as WebVTT requires (so "-->" cannot appear either)."""
    return " ".join(text.split()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def webvtt_document(
    cues: Iterable[tuple[str | int, float, float, str]],
    header: Iterable[str] = (),
    cue_languages: Mapping[str | int, str] | None = None,
) -> str:
    """A WebVTT document of (identifier, start s, end s, plain text) cues; the text is escaped here.
    `header`: lines of the header block after `WEBVTT` (an HLS segment's `X-TIMESTAMP-MAP=...`).
    `cue_languages`: per identifier, the language its text is in, written as a WebVTT language
    span (`<lang es>...</lang>`), which players that do not use it render as plain text."""
    lines = ["WEBVTT", *header, ""]
    for ident, start, end, text in cues:
        body = vtt_escape(text)
        lang = (cue_languages or {}).get(ident)
        if lang and body:
            body = f"<lang {vtt_escape(lang).replace(' ', '')}>{body}</lang>"
        lines += [str(ident), f"{vtt_timestamp(start)} --> {vtt_timestamp(end)}", body, ""]
    return "\n".join(lines)


class CaptionLog:
    """The newest final captions of a stream (bounded), one cue per caption id. An update of a
    final (a later `revision`, e.g. its translations) replaces that caption's cue; an older
    revision arriving late never replaces a newer one."""

    SEARCH_BACK = 32  # updates concern recent finals (translations take seconds, not minutes)

    def __init__(self, maxlen: int = 2000) -> None:
        self._finals: deque[CaptionEvent] = deque(maxlen=maxlen)

    def on_event(self, event: StreamEvent) -> None:
        if not isinstance(event, CaptionEvent) or not event.final or not event.text.strip():
            return
        for i in range(len(self._finals) - 1, max(-1, len(self._finals) - 1 - self.SEARCH_BACK), -1):
            if self._finals[i].id == event.id:
                if event.revision >= self._finals[i].revision:
                    self._finals[i] = event
                return
        self._finals.append(event)

    def finals(self) -> list[CaptionEvent]:
        return list(self._finals)

    def to_webvtt(self, lang: str | None = None) -> str:
        """A WebVTT document of the finals; `lang` picks a translation (falls back to the original).
        A caption whose language was detected (captions.language "auto") says it in a language span."""
        detected: dict[str | int, str] = {
            cue.id: cue.lang
            for cue in self._finals
            if cue.lang_prob is not None and not (lang and lang in cue.translations)
        }
        return webvtt_document(
            (
                (
                    cue.id,
                    cue.start,
                    cue.end if cue.end > cue.start else cue.start + 1.0,
                    cue.translations.get(lang, cue.text) if lang else cue.text,
                )
                for cue in self._finals
            ),
            cue_languages=detected,
        )
