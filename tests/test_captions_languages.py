"""Captions in any spoken language: espeak-ng Spanish, German and French streamed live through
trickle (real server, real FFmpeg-free PyAV muxing, the embedded multilingual `base` model next to
`tiny.en`), with `language: "auto"` and with a fixed language; translation from the detected
language (Apertium es→en, Whisper's own speech translation de→en, a pair nothing serves said
once); a bilingual speaker followed utterance by utterance; time to final in status and /metrics;
and the reassembly of the base model from its two packages (a corrupted part is a clear error)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest

from inference.asr.model import (
    BASE_MODEL_SIZE,
    AsrModelPool,
    AsrSettings,
    EmbeddedModelError,
    assemble_base_model,
    base_model_parts,
    pool_for_language,
)
from server.keys import ASR_KEY, TRICKLE_KEY
from tests.conftest import RunningServer, wait_until
from tests.media_gen import make_segments
from tests.speech import SAMPLE_RATE, speech_tools_available, synthesize, to_48k_int16, voiced_bounds
from tests.sse import SseReader
from tests.trickle_helpers import OutputCollector, publish_realtime
from tests.webrtc_helpers import BrowserPeer, SpeechTrack

pytestmark = pytest.mark.skipif(not speech_tools_available(), reason="espeak-ng and sox are needed")

# sentences the base model reads back from espeak-ng (checked by hand: its German and French
# voices are hard even offline, so each test looks for words it gets right)
SPANISH = ["Los niños juegan en el jardín de la casa.", "El tren sale de la estación del norte por la mañana."]
GERMAN = ["Ich habe heute keine Zeit.", "Ich trinke gern Kaffee mit Milch."]
FRENCH = ["Je ne parle pas très bien français."]


def spoken(phrases: list[tuple[str, str]], pause: float = 1.2, lead: float = 1.0, tail: float = 2.5) -> np.ndarray:
    """(voice, text) phrases joined by `pause` s of silence, as 16 kHz mono float32."""
    parts = [np.zeros(int(lead * SAMPLE_RATE), np.float32)]
    for i, (voice, text) in enumerate(phrases):
        samples = synthesize(text, voice)
        first, last = voiced_bounds(samples)
        parts.append(samples[first:last])
        parts.append(np.zeros(int((tail if i == len(phrases) - 1 else pause) * SAMPLE_RATE), np.float32))
    return np.concatenate(parts)


class LiveStream:
    """One trickle stream with captions: started, fed in real time, its SSE captions read."""

    def __init__(self, server: RunningServer, name: str, audio16k: np.ndarray, captions: dict) -> None:
        self.server, self.name, self.captions_params = server, name, captions
        self.segments = make_segments(
            int(np.ceil(len(audio16k) / SAMPLE_RATE)), 320, 240, audio_samples=to_48k_int16(audio16k)
        )
        self.manifest_id = ""
        self.sse: SseReader | None = None
        self.collector: OutputCollector | None = None

    async def start(self) -> LiveStream:
        s = self.server
        trickle = s.app[TRICKLE_KEY]
        trickle.create_channel(self.name)
        trickle.create_channel(f"{self.name}-out")
        resp = await s.session.post(
            s.url("/stream/start"),
            json={
                "subscribe_url": s.trickle_url(self.name),
                "publish_url": s.trickle_url(f"{self.name}-out"),
                "params": {"captions": self.captions_params},
            },
        )
        body = await resp.json()
        assert resp.status == 200, body
        self.manifest_id = body["manifest_id"]
        self.sse = SseReader(s.session, s.url(f"/stream/{self.manifest_id}/captions")).start()
        await asyncio.wait_for(self.sse.connected.wait(), 5)
        self.collector = OutputCollector(s.trickle_url(f"{self.name}-out"), token=s.token("trickle")).start()
        return self

    async def publish(self) -> None:
        await publish_realtime(self.server.trickle_url(self.name), self.segments, token=self.server.token("trickle"))

    def finals(self) -> list[dict]:
        assert self.sse is not None
        return [m.data for m in self.sse.messages if m.data["final"] and m.data["revision"] == 0 and m.data["text"]]

    def updates(self) -> list[dict]:
        assert self.sse is not None
        return [m.data for m in self.sse.messages if m.data["final"] and m.data["revision"] > 0]

    def text(self) -> str:
        return " ".join(f["text"] for f in sorted(self.finals(), key=lambda f: f["start"])).lower()

    async def status(self) -> dict:
        resp = await self.server.session.get(self.server.url(f"/stream/{self.manifest_id}/status"))
        return await resp.json()

    async def stop(self) -> None:
        await self.server.session.delete(self.server.url(f"/stream/{self.manifest_id}"))
        if self.collector is not None:
            await asyncio.wait_for(self.collector.ended.wait(), 10)


# ---- the embedded base model -----------------------------------------------------------------


def test_base_model_is_reassembled_once_and_a_corrupted_part_is_a_clear_error(tmp_path: Path) -> None:
    parts = base_model_parts()
    target = assemble_base_model(tmp_path / "cache", parts)
    assert (target / "model.bin").stat().st_size == BASE_MODEL_SIZE
    assert {p.name for p in target.iterdir()} == {
        "model.bin",
        "model.bin.sha256",
        "config.json",
        "tokenizer.json",
        "vocabulary.txt",
    }  # no temporary file left behind
    stamp = (target / "model.bin").stat().st_mtime_ns
    assert assemble_base_model(tmp_path / "cache", parts) == target
    assert (target / "model.bin").stat().st_mtime_ns == stamp  # reused, not written again

    # part 2 with one byte flipped (same size): its SHA-256 gives it away, and nothing is written
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        os.symlink(parts[0].parent / name, broken / name)
    os.symlink(parts[0], broken / "model.bin.part1")
    data = bytearray(parts[1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "model.bin.part2").write_bytes(bytes(data))
    with pytest.raises(EmbeddedModelError, match=r"part2.*SHA-256.*corrupted"):
        assemble_base_model(tmp_path / "other", [broken / "model.bin.part1", broken / "model.bin.part2"])
    assert not (tmp_path / "other").exists()
    (broken / "model.bin.part2").write_bytes(bytes(data[:1000]))  # truncated
    with pytest.raises(EmbeddedModelError, match=r"part2 has 1000 bytes"):
        assemble_base_model(tmp_path / "other", [broken / "model.bin.part1", broken / "model.bin.part2"])
    with pytest.raises(EmbeddedModelError, match=r"part1 is missing"):
        assemble_base_model(tmp_path / "other", [broken / "nothing", broken / "model.bin.part2"])


async def test_a_broken_cache_dir_is_a_load_error_of_the_pool(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    pool = AsrModelPool(AsrSettings(model="embedded:base", cache_dir=str(tmp_path / "file")))
    with pytest.raises(OSError):
        pool.load()
    assert pool.load_error is not None and "file" in pool.load_error


def test_streams_pick_their_model_by_language() -> None:
    primary = AsrModelPool(AsrSettings())  # embedded:tiny.en, nothing loaded here
    assert pool_for_language(primary, "en") is primary
    multilingual = pool_for_language(primary, "auto")
    assert multilingual.settings.model == "embedded:base"
    assert pool_for_language(primary, "de") is multilingual  # one pool (one load) for every stream
    none = AsrModelPool(AsrSettings(multilingual_model=""))
    assert pool_for_language(none, "es") is none
    base = AsrModelPool(AsrSettings(model="embedded:base"))
    assert pool_for_language(base, "es") is base  # a multilingual ASR_MODEL serves every language


# ---- live streams ------------------------------------------------------------------------------


async def test_spanish_detected_captioned_and_translated_to_english(server: RunningServer) -> None:
    stream = await LiveStream(
        server, "es-auto", spoken([("es", t) for t in SPANISH]), {"language": "auto", "translate_to": ["en"]}
    ).start()
    await stream.publish()
    assert await wait_until(
        lambda: len(stream.finals()) >= 2 and len(stream.updates()) >= len(stream.finals()), timeout=30
    ), stream.finals()
    text = stream.text()
    assert "niños" in text and "estación" in text, text
    for final in stream.finals():
        assert final["lang"] == "es" and final["lang_prob"] > 0.3, final
    english = " ".join(u["translations"].get("en", "") for u in stream.updates()).lower()
    assert "boys" in english and "train" in english, english  # Apertium spa→eng, from the detected language
    vtt = await (await server.session.get(server.url(f"/stream/{stream.manifest_id}/captions.vtt"))).text()
    assert "<lang es>" in vtt and "niños" in vtt.lower(), vtt

    status = await stream.status()
    captions = status["stages"]["captions"]
    assert captions["language"] == "es" and captions["model"] == "embedded:base", captions
    assert captions["language_probability"] > 0.3
    assert captions["time_to_final"]["count"] >= 2 and 0 < captions["time_to_final"]["p50"] < 10, captions
    assert captions["time_to_first_partial"]["count"] >= 1, captions
    metrics = await (await server.session.get(server.url("/metrics"))).text()
    assert 'streamlens_asr_time_to_final_seconds_count{model="embedded:base"}' in metrics
    assert "streamlens_asr_time_to_first_partial_seconds_bucket" in metrics
    await stream.stop()
    assert server.app[ASR_KEY].settings.model == "embedded:tiny.en"  # the English model stays primary


async def test_fixed_german_and_french_with_speech_translation_and_an_unservable_pair(server: RunningServer) -> None:
    german = await LiveStream(
        server, "de-fixed", spoken([("de", t) for t in GERMAN]), {"language": "de", "translate_to": ["en", "fr"]}
    ).start()
    french = await LiveStream(server, "fr-fixed", spoken([("fr", t) for t in FRENCH]), {"language": "fr"}).start()
    await asyncio.gather(german.publish(), french.publish())
    assert await wait_until(
        lambda: len(german.finals()) >= 2 and len(german.updates()) >= 2 and french.finals(), timeout=40
    ), (german.finals(), french.finals())
    assert "zeit" in german.text() and "milch" in german.text(), german.text()
    assert "français" in french.text(), french.text()
    for final in german.finals() + french.finals():
        assert final["lang"] in ("de", "fr") and final["lang_prob"] is None  # given, not detected
    # no Apertium deu-eng pair: English comes from Whisper's own translation of the speech
    for update in german.updates():
        assert update["translations"].get("en") and update["translation_flags"]["en"] == ["speech_translation"]
        assert update["translations"]["en"].isascii()
    # de→fr: nothing serves it; said once (status, and one event), never silently dropped
    flagged = [u for u in german.updates() if "fr" in u["untranslated"]]
    assert len(flagged) == 1 and flagged[0]["translation_flags"]["fr"] == ["unsupported_pair"], german.updates()
    captions = (await german.status())["stages"]["captions"]
    assert captions["unservable_translations"] == ["de->fr"], captions
    await asyncio.gather(german.stop(), french.stop())


async def test_a_bilingual_speaker_is_followed_per_utterance(server: RunningServer) -> None:
    phrases = [("es", SPANISH[0]), ("de", GERMAN[1]), ("es", SPANISH[1])]
    stream = await LiveStream(
        server, "es-de", spoken(phrases, pause=1.5), {"language": "auto", "allowed_languages": ["es", "de"]}
    ).start()
    await stream.publish()
    assert await wait_until(lambda: len(stream.finals()) >= 3, timeout=30), stream.finals()
    finals = sorted(stream.finals(), key=lambda f: f["start"])
    assert [f["lang"] for f in finals] == ["es", "de", "es"], finals
    assert "niños" in finals[0]["text"].lower() and "milch" in finals[1]["text"].lower(), finals
    assert all(0.3 < f["lang_prob"] <= 1.0 for f in finals), finals
    await stream.stop()


async def test_webrtc_captions_carry_the_detected_language(server: RunningServer) -> None:
    peer = BrowserPeer()
    mic = SpeechTrack(to_48k_int16(spoken([("es", SPANISH[0])], tail=1.5)))
    audio_sender = next(t.sender for t in peer.pc.getTransceivers() if t.kind == "audio")
    audio_sender.replaceTrack(mic)
    try:
        await peer.connect(
            server.session,
            server.base_url,
            params={"captions": {"language": "auto", "allowed_languages": ["es", "de", "fr"]}},
        )

        def finals() -> list[dict]:
            return [m for m in peer.messages_of("caption") if m["final"] and m["text"]]

        assert await wait_until(lambda: finals(), timeout=30), list(peer.messages)
        caption = finals()[0]
        assert caption["lang"] == "es" and 0.3 < caption["lang_prob"] <= 1.0, caption
        assert "niños" in caption["text"].lower(), caption
    finally:
        await peer.close()


async def test_an_unknown_language_is_a_clear_4xx(server: RunningServer) -> None:
    server.app[TRICKLE_KEY].create_channel("bad-lang")
    for captions in ({"language": "xx"}, {"language": "auto", "allowed_languages": ["es", "klingon"]}):
        resp = await server.session.post(
            server.url("/stream/start"),
            json={"subscribe_url": server.trickle_url("bad-lang"), "params": {"captions": captions}},
        )
        body = await resp.json()
        assert 400 <= resp.status < 500 and "not a language the speech model knows" in str(body), body
