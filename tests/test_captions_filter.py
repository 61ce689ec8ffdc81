"""`captions.filter`: words masked or dropped once, where caption events are made, so every output
(SSE, WebVTT, the trickle data channel, the burned-in overlay, translations) sees only the filtered
text. Live: espeak-ng speech through a trickle stream recognised by the embedded tiny.en model."""

from __future__ import annotations

import asyncio
import re
import time

import numpy as np
import pytest

from inference.asr.stage import CaptionParams
from media.caption_filter import MAX_PATTERN_CHARS, MAX_RULES, CaptionFilter, glob_match, parse_rules
from media.manager import STREAMS_KEY
from server.keys import TRICKLE_KEY
from tests.conftest import wait_until
from tests.interop.gateway import JsonSegmentCollector
from tests.media_gen import make_segments
from tests.speech import build_track, to_48k_int16
from tests.sse import SseReader
from tests.trickle_helpers import OutputCollector, publish_realtime


def test_mask_drop_wildcards_and_phrases():
    rules = parse_rules(["library", {"pattern": "gui*", "action": "drop"}, "north station", {"pattern": "c?t"}])
    text, matched = CaptionFilter(rules).apply(
        "At the Library, my guitars play; beguile the cat from the north station."
    )
    # masked letter for letter, case-insensitive; "gui*" drops whole words only (not "beguile")
    assert text == "At the *******, my play; beguile the *** from the ***** *******."
    assert matched == 5
    assert CaptionFilter(parse_rules([{"pattern": "hello", "action": "drop"}])).apply("Hello, world") == ("world", 1)
    assert CaptionFilter([]).apply("untouched") == ("untouched", 0)


def test_glob_match_is_linear_on_hostile_input():
    assert glob_match("a*b*c", "axxbyyc") and not glob_match("a*b*c", "axxbyy")
    began = time.perf_counter()
    # the shape that makes a backtracking regex explode: wildcards before a letter that never comes
    assert not glob_match("*a*a*a*b", "a" * 5000)
    assert time.perf_counter() - began < 5.0  # a backtracking matcher would not finish at all


@pytest.mark.parametrize(
    "bad",
    [
        [{"pattern": "(a+)+$"}],  # a regex: refused, only words and wildcards
        [{"pattern": "**"}],  # matches every word
        ["x" * (MAX_PATTERN_CHARS + 1)],
        ["word"] * (MAX_RULES + 1),
        [{"pattern": "word", "action": "bleep"}],
        [{"pattern": "a* b* c* d* e*"}],  # more than four words
    ],
)
def test_bad_filters_are_refused(bad):
    with pytest.raises(ValueError):
        CaptionParams.model_validate({"filter": bad})


async def test_bad_filter_is_a_400_at_start(server):
    resp = await server.session.post(
        server.url("/stream/start"),
        json={
            "subscribe_url": server.trickle_url("nofilter"),
            "params": {"captions": {"filter": [{"pattern": "(a+)+$"}]}},
        },
    )
    body = await resp.json()
    assert resp.status == 400, body
    assert "filter" in str(body)


PHRASES = ["We will meet at the library after lunch.", "My brother likes to play the guitar in the evening."]


def _stream_of(server, manifest_id: str):
    """The running stream object (in-process), to read what its overlay draws."""
    return server.app[STREAMS_KEY].get(manifest_id)


async def test_filter_applies_to_every_output(server):
    track = build_track(PHRASES, pause_seconds=1.5, lead_seconds=1.0, tail_seconds=2.5)
    segments = make_segments(int(np.ceil(track.duration)), 320, 240, audio_samples=to_48k_int16(track.audio))
    trickle = server.app[TRICKLE_KEY]
    for name in ("filt", "filt-out"):
        trickle.create_channel(name)
    trickle.create_channel("filt-data", "application/jsonl")
    resp = await server.session.post(
        server.url("/stream/start"),
        json={
            "subscribe_url": server.trickle_url("filt"),
            "publish_url": server.trickle_url("filt-out"),
            "data_url": server.trickle_url("filt-data"),
            "params": {
                "captions": {
                    "language": "en",
                    "translate_to": ["es"],
                    "burn_in": True,
                    "filter": ["library", {"pattern": "gui*", "action": "drop"}],
                }
            },
        },
    )
    body = await resp.json()
    assert resp.status == 200, body
    manifest_id = body["manifest_id"]
    stream = _stream_of(server, manifest_id)
    burned: list[str] = []  # every caption line the overlay held (what it draws into the video)
    stream.events.add_listener(lambda _event: burned.extend(stream.overlay_state.caption_lines()[1]))
    captions = SseReader(server.session, server.url(f"/stream/{manifest_id}/captions")).start()
    await asyncio.wait_for(captions.connected.wait(), 5)
    data = JsonSegmentCollector(server.trickle_url("filt-data"), lines=True, token=server.token("trickle")).start()
    output = OutputCollector(server.trickle_url("filt-out"), token=server.token("trickle")).start()
    await publish_realtime(server.trickle_url("filt"), segments, token=server.token("trickle"))

    def finals() -> list[dict]:
        return [m.data for m in captions.messages if m.data["final"] and m.data["revision"] == 0 and m.data["text"]]

    def updates() -> list[dict]:
        return [m.data for m in captions.messages if m.data["final"] and m.data["revision"] > 0]

    assert await wait_until(lambda: len(finals()) >= 2 and len(updates()) >= len(finals()), timeout=20)
    texts = " ".join(f["text"] for f in finals())
    assert "*******" in texts, texts  # "library", masked letter for letter
    assert re.search(r"play the in the evening", texts, re.I), texts  # "guitar" dropped

    def clean(text: str) -> bool:
        return not re.search(r"librar|guitar", text, re.I)

    # SSE: partials, finals and translation updates alike
    assert captions.messages and all(clean(m.data["text"]) for m in captions.messages)
    # translations are made from the filtered text (and filtered again)
    translated = [t for u in updates() for t in u["translations"].values()]
    assert translated and all(not re.search(r"bibliotec|guitarr", t, re.I) for t in translated), translated
    # WebVTT
    vtt = await (await server.session.get(server.url(f"/stream/{manifest_id}/captions.vtt"))).text()
    assert vtt.startswith("WEBVTT") and "*******" in vtt and clean(vtt), vtt
    # the trickle data channel (JSON lines of every event)
    assert await wait_until(lambda: sum(d.get("kind") == "caption" for d in data.values()) >= 2, timeout=10)
    data_texts = [d["text"] for d in data.values() if d.get("kind") == "caption"]
    assert any("*******" in t for t in data_texts) and all(clean(t) for t in data_texts), data_texts
    # burn-in: the overlay drew the masked text, never the word
    assert any("*******" in line for line in burned) and all(clean(line) for line in burned), burned

    status = await (await server.session.get(server.url(f"/stream/{manifest_id}/status"))).json()
    assert status["stages"]["captions"]["filter_rules"] == 2
    assert status["stages"]["captions"]["filtered_words"] >= 2
    await server.session.delete(server.url(f"/stream/{manifest_id}"))
    await captions.stop()
    await data.stop()
    await output.stop()
