"""WebVTT keeps one cue per final: a translation update replaces its caption's cue in place."""

from __future__ import annotations

from media.captions import CaptionLog
from media.events import CaptionEvent


def test_one_cue_per_final_and_updates_replace_it() -> None:
    log = CaptionLog()
    first = CaptionEvent(id=7, text="We will meet at the library.", final=True, start=1.0, end=3.0)
    second = CaptionEvent(id=8, text="The train leaves at noon.", final=True, start=4.0, end=6.0)
    log.on_event(CaptionEvent(id=7, text="We will", final=False, start=1.0, end=2.0))  # partials: no cue
    log.on_event(first)
    log.on_event(second)
    update = CaptionEvent(
        id=7,
        text=first.text,
        final=True,
        start=1.0,
        end=3.0,
        revision=1,
        translations={"es": "Nos vemos en la biblioteca."},
    )
    log.on_event(update)
    log.on_event(first)  # a late copy of the older revision does not undo the update
    assert [c.id for c in log.finals()] == [7, 8]
    vtt = log.to_webvtt()
    assert vtt.count(" --> ") == 2 and vtt.count("library") == 1
    spanish = log.to_webvtt("es")
    assert "biblioteca" in spanish and spanish.count(" --> ") == 2
    assert update.sse_event == "update" and first.sse_event == "final"
    assert CaptionEvent(id=9, text="x").sse_event == "partial"
