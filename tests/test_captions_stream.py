"""Live captions end to end: espeak-ng sentences muxed with video into MPEG-TS, streamed through
trickle in real time, recognised by the embedded tiny.en model, translated by Apertium, and read
back as SSE, WebVTT and pixels burned into the returned video."""

from __future__ import annotations

import asyncio
import io

import av
import numpy as np

from inference.asr.audio import Resampler16k
from server.features import ASR_KEY
from server.keys import TRICKLE_KEY
from tests.conftest import wait_until
from tests.media_gen import decode_ts, make_segments, read_frame_id, synthetic_picture
from tests.speech import build_track, to_48k_int16, word_error_rate
from tests.sse import SseReader
from tests.trickle_helpers import OutputCollector, publish_realtime

PHRASES = [
    "We will meet at the library after lunch.",
    "The train to the city leaves from the north station.",
    "My brother likes to play the guitar in the evening.",
]
GAP = 3.0  # seconds of silence between the second and third sentence


def received_audio(segments: list[bytes]) -> np.ndarray:
    """The segments' audio decoded and resampled to 16 kHz mono as the server does it."""
    resampler = Resampler16k()
    with av.open(io.BytesIO(b"".join(segments)), format="mpegts") as container:
        parts = [resampler.convert(frame) for frame in container.decode(container.streams.audio[0])]
    return np.concatenate(parts)


async def test_captions_from_a_live_trickle_stream(server):
    pool = server.app[ASR_KEY]
    track = build_track(PHRASES, pause_seconds=[1.0, GAP], lead_seconds=1.0, tail_seconds=2.5)
    seconds = int(np.ceil(track.duration))
    segments = make_segments(seconds, 320, 240, audio_samples=to_48k_int16(track.audio))
    trickle = server.app[TRICKLE_KEY]
    trickle.create_channel("talk")
    trickle.create_channel("talk-out")

    resp = await server.session.post(
        server.url("/stream/start"),
        json={
            "subscribe_url": server.trickle_url("talk"),
            "publish_url": server.trickle_url("talk-out"),
            "params": {"captions": {"enabled": True, "language": "en", "translate_to": ["es"], "burn_in": True}},
        },
    )
    body = await resp.json()
    assert resp.status == 200, body
    manifest_id = body["manifest_id"]
    captions = SseReader(server.session, server.url(f"/stream/{manifest_id}/captions")).start()
    await asyncio.wait_for(captions.connected.wait(), 5)
    collector = OutputCollector(server.trickle_url("talk-out"), token=server.token("trickle")).start()
    await publish_realtime(server.trickle_url("talk"), segments, token=server.token("trickle"))

    def finals():
        """Each caption's final, once (its translation arrives later as an update of it)."""
        return [m.data for m in captions.messages if m.data["final"] and m.data["revision"] == 0 and m.data["text"]]

    def updates():
        return [m.data for m in captions.messages if m.data["final"] and m.data["revision"] > 0]

    assert await wait_until(lambda: len(finals()) >= len(PHRASES) and len(updates()) >= len(finals()), timeout=20)
    # one final per caption; the translation is an update of the same id, same text
    final_ids = [f["id"] for f in finals()]
    assert len(final_ids) == len(set(final_ids))
    by_id = {f["id"]: f for f in finals()}
    for update in updates():
        assert update["id"] in by_id and update["text"] == by_id[update["id"]]["text"]
        assert update["translations"].get("es") or update["untranslated"]

    # accuracy: within 0.03 WER of the same model offline on the same audio (the stream's lossy
    # audio track as the server decodes it)
    heard = received_audio(segments)
    segments_offline, _ = await asyncio.get_running_loop().run_in_executor(
        None, lambda: pool.model.transcribe(heard, language="en", beam_size=pool.settings.beam_size)
    )
    offline = " ".join(s.text.strip() for s in segments_offline)
    unique_finals = {f["id"]: f for f in finals()}
    translated = {u["id"]: u for u in updates()}
    streaming = " ".join(f["text"] for f in sorted(unique_finals.values(), key=lambda f: f["start"]))
    assert word_error_rate(track.text, streaming) <= word_error_rate(track.text, offline) + 0.03, (streaming, offline)

    # partials come first, under the final's id
    first_kind = {}
    for message in captions.messages:
        first_kind.setdefault(message.data["id"], message.event)
    assert all(first_kind[i] == "partial" for i in unique_finals)

    # nothing is captioned inside the silent gap (media time = seconds since the first frame)
    gap_start, gap_end = track.phrases[1].end + 0.6, track.phrases[2].start - 0.3
    for message in captions.messages:
        start, end = message.data["start"], message.data["end"]
        assert not (gap_start < start and end < gap_end), message.data

    # translations by Apertium, and the WebVTT document of the finals
    assert any("biblioteca" in f["translations"].get("es", "").lower() for f in translated.values())
    vtt = await (await server.session.get(server.url(f"/stream/{manifest_id}/captions.vtt"))).text()
    assert vtt.startswith("WEBVTT") and vtt.count(" --> ") == len(unique_finals) and "library" in vtt.lower()
    vtt_es = await (await server.session.get(server.url(f"/stream/{manifest_id}/captions.vtt?lang=es"))).text()
    assert "biblioteca" in vtt_es.lower()

    status = await (await server.session.get(server.url(f"/stream/{manifest_id}/status"))).json()
    assert status["stages"]["captions"]["finals"] >= len(PHRASES)
    await server.session.delete(server.url(f"/stream/{manifest_id}"))
    await asyncio.wait_for(collector.ended.wait(), 10)

    # burned in: the caption band differs from the input picture once captions exist, not before
    frames, _ = decode_ts(collector.data())
    band = slice(int(240 * 0.7), 240)

    def band_change(frame) -> float:
        original = synthetic_picture(320, 240, read_frame_id(frame))[:240].astype(int)
        return float(np.abs(frame.to_ndarray()[:240][band].astype(int) - original[band]).mean())

    first_final_time = min(f["emitted_at"] for f in unique_finals.values())
    assert first_final_time  # captions were emitted while the video ran
    before = [band_change(f) for f in frames[:20]]  # the first second: lead-in silence, no caption yet
    after = [band_change(f) for f in frames[-45:]]  # the last captions stay on screen
    assert max(before) < 10 < max(after), (max(before), max(after))
    await collector.stop()
    await captions.stop()
