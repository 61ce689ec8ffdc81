"""`captions.vocabulary`: names and jargon biasing the decoder, per utterance and per stream, live
merge-patchable, and fed by the text the OCR tagger reads on the stream's video.

Real parts: espeak-ng speech through live trickle streams, the embedded tiny.en model (which spells
"Siobhan Szczepanski" and "Jarek Wojcik" wrong without a hint), RapidOCR reading a rendered slide."""

from __future__ import annotations

import asyncio

import numpy as np
from PIL import Image, ImageDraw

from inference.asr.vocabulary import (
    PROMPT_SLOT_TOKENS,
    SCREEN_MAX_TERMS,
    ScreenVocabulary,
    merged_terms,
    screen_terms,
)
from media.overlay import load_font
from server.features import ASR_KEY
from server.keys import TRICKLE_KEY
from tests.conftest import wait_until
from tests.media_gen import make_segments
from tests.speech import build_track, to_48k_int16
from tests.sse import SseReader
from tests.test_captions_stream import received_audio
from tests.trickle_helpers import OutputCollector, publish_realtime

SIOBHAN = "Our next speaker is Siobhan Szczepanski from the design team."
JAREK = "We thank Jarek Wojcik for his help."


def test_screen_terms_skip_ocr_noise():
    assert screen_terms("Siobhan Szczepanski") == ["Siobhan Szczepanski"]
    assert screen_terms("KUBERNETES release notes 2026") == ["Kubernetes"]  # capitals → a name's case
    # lowercase (common) words, digits, short tokens and capitalised common words are noise
    assert screen_terms("the next slide 42 Q3 ab1234 Agenda Welcome") == []
    assert screen_terms("Thanks to ZyphoraDB and Mensah") == ["ZyphoraDB", "Mensah"]


def test_screen_vocabulary_decays_and_is_bounded():
    now = [0.0]
    screen = ScreenVocabulary(half_life=10.0, clock=lambda: now[0])
    screen.observe(["Szczepanski"])
    assert screen.terms() == []  # seen once: not yet
    now[0] = 1.0
    screen.observe(["Szczepanski", "Szczepanski"])  # one look counts once
    assert screen.terms() == ["Szczepanski"]
    now[0] = 2.0
    for _ in range(3):
        screen.observe(["Wojcik"])
    assert screen.terms()[0] == "Wojcik"  # seen more, more recently: first
    now[0] = 60.0  # six half-lives later both decayed out
    screen.observe(["Mensah"])
    assert [row["term"] for row in screen.snapshot()] == ["Mensah"]
    for i in range(SCREEN_MAX_TERMS * 2):
        screen.observe([f"Name{chr(65 + i % 26)}{chr(65 + i // 26)}x"])
    assert len(screen.snapshot()) == SCREEN_MAX_TERMS and screen.evicted > 0
    assert merged_terms(["Jarek Wojcik"], ["jarek wojcik", "Mensah"]) == ("Jarek Wojcik", "Mensah")


async def test_vocabulary_fits_the_prompt_budget(server):
    """Many long terms and a long context: the terms that fit whole, in order, in Whisper's
    223-token previous-text slot beside the context tokens (counted with the model's tokenizer)."""
    pool = server.app[ASR_KEY]
    await asyncio.to_thread(pool.load)
    terms = tuple(f"Quintessential Xylophonist Number {i}" for i in range(50))
    context = "This is what the speaker said before, a sentence or two of earlier captions. " * 3
    result = await pool.decode(np.zeros(16000, np.float32), final=True, vocabulary=terms, context=context)
    assert result is not None and 0 < len(result.hotwords) < len(terms)
    assert result.hotwords == terms[: len(result.hotwords)]
    hf = pool.model.hf_tokenizer
    used = len(hf.encode(" " + ", ".join(result.hotwords), add_special_tokens=False).ids)
    context_tokens = min(pool.settings.prompt_tokens, len(hf.encode(" " + context, add_special_tokens=False).ids))
    assert used + context_tokens <= PROMPT_SLOT_TOKENS
    one_more = ", ".join(terms[: len(result.hotwords) + 1])
    assert len(hf.encode(" " + one_more, add_special_tokens=False).ids) + context_tokens > PROMPT_SLOT_TOKENS


async def test_vocabulary_is_per_utterance_in_a_shared_batch(server):
    """Two streams' finals decoded in one batch of the shared model: only the utterance whose
    stream named the name gets it."""
    pool = server.app[ASR_KEY]
    await asyncio.to_thread(pool.load)
    audio = build_track([JAREK], lead_seconds=0.3, tail_seconds=0.6).audio
    # a long final occupies the one worker, so the next two finals wait and are taken as one batch
    busy = asyncio.ensure_future(pool.decode(np.tile(audio, 6), final=True, stream="busy"))
    assert await wait_until(lambda: pool.stats()["running"] > 0 or busy.done(), timeout=10)
    assert not busy.done(), "the worker was free again before the two finals were queued"
    hinted, plain = await asyncio.gather(
        pool.decode(audio, final=True, stream="a", language="en", vocabulary=("Jarek Wojcik",)),
        pool.decode(audio, final=True, stream="b", language="en"),
    )
    await busy
    assert hinted is not None and plain is not None
    assert hinted.batch_size == plain.batch_size == 2  # one batch: the vocabulary rode per utterance
    assert "Jarek Wojcik" in hinted.text and hinted.hotwords == ("Jarek Wojcik",)
    assert "Wojcik" not in plain.text and plain.hotwords == ()


async def _start(server, name: str, params: dict) -> str:
    """Start a trickle stream reading channel `name` and writing `name`-out; its manifest id."""
    trickle = server.app[TRICKLE_KEY]
    trickle.create_channel(name)
    trickle.create_channel(f"{name}-out")
    resp = await server.session.post(
        server.url("/stream/start"),
        json={
            "subscribe_url": server.trickle_url(name),
            "publish_url": server.trickle_url(f"{name}-out"),
            "params": params,
        },
    )
    body = await resp.json()
    assert resp.status == 200, body
    return body["manifest_id"]


def _finals(captions: SseReader) -> list[dict]:
    return [m.data for m in captions.messages if m.data["final"] and m.data["revision"] == 0 and m.data["text"]]


async def _unhinted(pool, segments: list[bytes], track, index: int) -> str:
    """The model's reading of one phrase of the stream's own (lossy) audio, without vocabulary."""
    audio = received_audio(segments)
    phrase = track.phrases[index]
    piece = audio[max(0, int((phrase.start - 0.3) * 16000)) : int((phrase.end + 0.5) * 16000)]
    result = await pool.decode(piece, final=True, language="en")
    return result.text if result is not None else ""


async def test_vocabulary_spells_names_and_a_live_patch_takes_effect(server):
    pool = server.app[ASR_KEY]
    track = build_track([SIOBHAN, JAREK], pause_seconds=4.0, lead_seconds=1.0, tail_seconds=2.5)
    segments = make_segments(int(np.ceil(track.duration)), 320, 240, audio_samples=to_48k_int16(track.audio))
    manifest_id = await _start(server, "vocab", {"captions": {"language": "en", "vocabulary": ["Siobhan Szczepanski"]}})
    captions = SseReader(server.session, server.url(f"/stream/{manifest_id}/captions")).start()
    await asyncio.wait_for(captions.connected.wait(), 5)
    output = OutputCollector(server.trickle_url("vocab-out"), token=server.token("trickle")).start()
    publisher = asyncio.create_task(
        publish_realtime(server.trickle_url("vocab"), segments, token=server.token("trickle"))
    )

    # the first name's caption is final (in the 4 s pause): swap the vocabulary by a merge patch
    assert await wait_until(lambda: len(_finals(captions)) >= 1, timeout=15)
    resp = await server.session.post(
        server.url("/stream/params"),
        headers={"X-Stream-Id": manifest_id},
        json={"params": {"captions": {"vocabulary": ["Jarek Wojcik"]}}},
    )
    assert resp.status == 200, await resp.text()
    status = await (await server.session.get(server.url(f"/stream/{manifest_id}/status"))).json()
    assert status["stages"]["captions"]["vocabulary"] == ["Jarek Wojcik"]
    await publisher
    assert await wait_until(lambda: len(_finals(captions)) >= 2, timeout=15)
    first, second = _finals(captions)[0]["text"], _finals(captions)[1]["text"]
    assert "Siobhan Szczepanski" in first, first
    assert "Jarek Wojcik" in second, second
    status = await (await server.session.get(server.url(f"/stream/{manifest_id}/status"))).json()
    assert status["stages"]["captions"]["vocabulary_in_prompt"] == ["Jarek Wojcik"]

    # the control: the same audio without a hint comes out misspelled
    assert "Szczepanski" not in await _unhinted(pool, segments, track, 0)
    assert "Wojcik" not in await _unhinted(pool, segments, track, 1)
    await server.session.delete(server.url(f"/stream/{manifest_id}"))
    await captions.stop()
    await output.stop()


def slide(text: str, width: int = 512, height: int = 288) -> np.ndarray:
    """A white slide with `text` in big black letters (RGB)."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(image).text((24, height // 2 - 30), text, fill=(0, 0, 0), font=load_font(42))
    return np.asarray(image)


async def test_a_name_read_on_screen_reaches_the_vocabulary(server):
    # the slide shows the name for a few seconds before the speaker says it
    track = build_track([SIOBHAN], lead_seconds=5.0, tail_seconds=2.5)
    segments = make_segments(
        int(np.ceil(track.duration)),
        512,
        288,
        audio_samples=to_48k_int16(track.audio),
        picture=slide("Siobhan Szczepanski"),
        stamp_ids=False,
    )
    params = {
        "captions": {"language": "en"},
        "vision": {"enabled": True, "interval": 0.5, "backend": "embedded", "tag_list": ["text"]},
    }
    manifest_id = await _start(server, "ocr", params)
    captions = SseReader(server.session, server.url(f"/stream/{manifest_id}/captions")).start()
    await asyncio.wait_for(captions.connected.wait(), 5)
    output = OutputCollector(server.trickle_url("ocr-out"), token=server.token("trickle")).start()
    publisher = asyncio.create_task(
        publish_realtime(server.trickle_url("ocr"), segments, token=server.token("trickle"))
    )

    async def stage_status() -> dict:
        status = await (await server.session.get(server.url(f"/stream/{manifest_id}/status"))).json()
        return status["stages"]["captions"]

    seen: dict = {}

    async def poll() -> bool:
        seen.update(await stage_status())
        return any(row["term"] == "Siobhan Szczepanski" and row["score"] >= 1.5 for row in seen["screen_vocabulary"])

    assert await wait_until(poll, timeout=10, interval=0.2), seen
    assert any(row["term"] == "Siobhan Szczepanski" for row in seen["screen_vocabulary"]), seen
    await publisher
    assert await wait_until(lambda: len(_finals(captions)) >= 1, timeout=15)
    final = _finals(captions)[0]["text"]
    assert "Szczepanski" in final, final
    assert "Siobhan Szczepanski" in (await stage_status())["vocabulary_in_prompt"]
    await server.session.delete(server.url(f"/stream/{manifest_id}"))
    await captions.stop()
    await output.stop()
