"""Captions on the demo page in a real headless Chromium: one list entry per caption (a
translation updates its entry in place), at most one cue of at most two lines over the video,
replaced by the next caption, none at all when the server burns captions into the picture, and
unsure translations greyed out; and real speech into the browser's microphone comes back whole."""

from __future__ import annotations

import os

import pytest

from media.events import CaptionEvent
from media.manager import STREAMS_KEY
from tests.conftest import wait_until
from tests.speech import build_track, speech_tools_available
from tests.test_demo_page import fake_camera_browser
from tests.webrtc_helpers import CHROMIUM, enter_token, loopback_settings

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed")

SENTENCES = [
    "Today we are testing live captions in the browser and this sentence is long enough to wrap.",
    "The weather is sunny and the river is calm.",
    "We will meet at the library after lunch.",
    "Please send me the report before the end of the week.",
    "The train to the city leaves from the north station.",
    "My brother likes to play the guitar in the evening.",
]

CUES = "Array.from(document.getElementById('remote').textTracks[0].activeCues || []).map(c => c.text)"
ENTRIES = "Array.from(document.querySelectorAll('#captions li')).map(li => li.dataset.captionId)"


async def test_captions_are_shown_once_and_updated_in_place(make_server, tmp_path):
    server = await make_server(**loopback_settings())
    async with fake_camera_browser(tmp_path) as browser:
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(server.url("/"))
        await enter_token(page, server.token("api"))
        await page.select_option("#target-lang", "es")
        await page.click("#start")
        await page.wait_for_function("document.body.dataset.manifestId", timeout=30_000)
        stream = server.app[STREAMS_KEY].get_active(await page.evaluate("document.body.dataset.manifestId"))
        await page.wait_for_function(
            "(() => { const v = document.getElementById('remote');"
            " return v.readyState >= 2 && v.currentTime > 0.5 && (window.streamlensMessages || 0) >= 1; })()",
            timeout=30_000,
        )
        assert await wait_until(lambda: stream.params.get("captions", {}).get("burn_in") is False, timeout=10)

        # each caption: partials, its final, then its translation as an update (same id)
        ids = []
        for n, sentence in enumerate(SENTENCES):
            first = CaptionEvent(text=sentence.split()[0], final=False)
            ids.append(first.id)
            words = sentence.split()
            for k in (2, len(words) // 2, len(words)):
                stream.events.publish(CaptionEvent(id=first.id, text=" ".join(words[:k]), final=False))
            stream.events.publish(CaptionEvent(id=first.id, text=sentence, final=True))
            stream.events.publish(
                CaptionEvent(
                    id=first.id,
                    text=sentence,
                    final=True,
                    revision=1,
                    translations={"es": f"frase {n} traducida"},
                    translation_confidence={"es": 0.3 if n == 1 else 0.9},
                )
            )
            await page.wait_for_function(
                f"(() => {{ const li = document.querySelector('#captions li[data-caption-id=\"{first.id}\"]');"
                f" return li && li.textContent.includes('traducida'); }})()",
                timeout=10_000,
            )
            cues = await page.evaluate(CUES)
            # one cue over the video, at most two lines, and it is this caption's
            assert len(cues) <= 1, cues
            assert all(len(c.split("\n")) <= 2 for c in cues), cues
            assert all(len(line) <= 36 for c in cues for line in c.split("\n")), cues

        entries = await page.evaluate(ENTRIES)
        assert sorted(int(e) for e in entries) == sorted(ids)  # one entry per caption, no duplicates
        last = await page.evaluate(CUES)
        assert last and "traducida" in last[0]
        unsure = await page.evaluate(
            f"document.querySelector('#captions li[data-caption-id=\"{ids[1]}\"] .translation').className"
        )
        sure = await page.evaluate(
            f"document.querySelector('#captions li[data-caption-id=\"{ids[2]}\"] .translation').className"
        )
        assert "unsure" in unsure and "unsure" not in sure

        # burned into the video: the page draws no cue of its own (one rendition only)
        await page.check("#captions-burn-in")
        assert await wait_until(lambda: stream.params.get("captions", {}).get("burn_in") is True, timeout=10)
        burned = CaptionEvent(text="this caption is in the picture", final=True, burned_in=True)
        stream.events.publish(burned)
        await page.wait_for_function(
            f"document.querySelector('#captions li[data-caption-id=\"{burned.id}\"]') !== null", timeout=10_000
        )
        assert await page.evaluate(CUES) == []
        await page.screenshot(path=str(tmp_path / "captions.png"))
        await page.click("#stop")


def write_speech_wav(path, sentences: list[str], pause: float) -> None:
    """espeak-ng sentences as a 48 kHz mono 16-bit WAV for Chromium's fake microphone."""
    import wave

    import numpy as np

    track = build_track(sentences, pause_seconds=pause, lead_seconds=1.0, tail_seconds=3.0)
    x = np.arange(len(track.audio) * 3) / 3.0
    samples = (np.clip(np.interp(x, np.arange(len(track.audio)), track.audio), -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48000)
        out.writeframes(samples.tobytes())


@pytest.mark.skipif(not speech_tools_available(), reason="needs espeak-ng and sox")
async def test_spoken_sentence_pair_reaches_the_page_whole_and_once(make_server, tmp_path):
    """The issue's own example: two sentences with a short pause, spoken into the browser's
    microphone, come back as captions with neither clause lost, each caption listed once."""
    first, second = "Today we are testing live captions in the browser.", "The weather is sunny and the river is calm."
    wav = tmp_path / "speech.wav"
    write_speech_wav(wav, [first, second], pause=0.3)
    server = await make_server(**loopback_settings())
    async with fake_camera_browser(tmp_path, audio=wav) as browser:
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(server.url("/"))
        await enter_token(page, server.token("api"))
        await page.click("#start")
        await page.wait_for_function("document.body.dataset.manifestId", timeout=30_000)
        # the first finals of the (looping) recording
        await page.wait_for_function(
            "(() => { const t = Array.from(document.querySelectorAll('#captions li')).map(li => li.textContent)"
            ".join(' ').toLowerCase(); return t.includes('river') && t.includes('browser'); })()",
            timeout=60_000,
        )
        texts = await page.evaluate("Array.from(document.querySelectorAll('#captions li')).map(li => li.textContent)")
        entries = await page.evaluate(ENTRIES)
        assert len(entries) == len(set(entries))  # one entry per caption
        heard = " ".join(texts).lower()
        for word in ("testing", "captions", "browser", "sunny", "river", "calm"):
            assert word in heard, (word, texts)  # neither clause was dropped at the join
        cues = await page.evaluate(CUES)
        assert len(cues) <= 1 and all(len(c.split("\n")) <= 2 for c in cues), cues
        await page.click("#stop")
