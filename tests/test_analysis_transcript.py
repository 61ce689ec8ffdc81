"""Transcripts of recorded files: espeak-ng speech muxed into a generated video, the shared embedded
ASR model in batch mode (windows + VAD), real Apertium for `translate_to`, VTT/SRT downloads."""

from __future__ import annotations

import av
import numpy as np
import pytest

from analysis.transcript import RATE, audio_windows
from inference.asr.model import AsrSettings, shared_pool
from server.settings import Settings
from tests.analysis_media import plain_card, video_form, wait_job, write_video
from tests.conftest import start_server, stop_server
from tests.speech import DEFAULT_PHRASES, build_track, speech_tools_available, word_error_rate

pytestmark = pytest.mark.skipif(
    not speech_tools_available(), reason="espeak-ng and sox are needed (scripts/install_system_deps.sh)"
)


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    track = build_track(DEFAULT_PHRASES + DEFAULT_PHRASES[::-1], pause_seconds=1.2)  # ~40 s, 90 words
    path = str(tmp_path_factory.mktemp("speech") / "talk.mp4")
    write_video(path, track.duration, lambda t: plain_card(160, 120), fps=5, width=160, height=120, audio=track.audio)
    return path, track


def decoded_audio(path: str) -> np.ndarray:
    """The file's audio as the job hears it (16 kHz mono), in one piece: the offline reference."""
    return np.concatenate([chunk for _offset, chunk, _total in audio_windows(path, 3600)])


async def test_transcript_matches_the_offline_model_and_exports_vtt_srt(monkeypatch, tmp_path, spoken):
    path, track = spoken
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ANALYSIS_TRANSCRIPT_WINDOW", "20")  # two windows, so a cut is exercised
    server = await start_server(Settings(host="127.0.0.1", port=0, asr_preload=False))
    try:
        resp = await server.session.post(server.url("/v1/transcribe"), data=video_form(path, translate_to="es"))
        accepted = await resp.json()
        assert resp.status == 202, accepted
        job = await wait_job(server.session, server.base_url, accepted["job_id"], timeout=120)
        assert job["status"] == "completed", job
        transcript = job["result"]["transcript"]
        segments = transcript["segments"]
        starts = [s["start"] for s in segments]
        assert starts == sorted(starts) and all(s["end"] > s["start"] for s in segments)
        assert segments[-1]["end"] <= track.duration + 0.5

        reference = await shared_pool(AsrSettings()).transcribe(decoded_audio(path), vad_filter=True)
        job_wer = word_error_rate(track.text, transcript["text"])
        offline_wer = word_error_rate(track.text, reference.text)
        assert job_wer <= offline_wer + 0.03, (job_wer, offline_wer, transcript["text"], reference.text)
        assert job_wer < 0.3

        assert all(s["translations"].get("es") for s in segments), segments
        vtt = await (await server.session.get(server.url(f"/v1/jobs/{job['id']}/transcript.vtt"))).text()
        assert vtt.startswith("WEBVTT") and "-->" in vtt and segments[0]["text"] in vtt
        spanish = await (await server.session.get(server.url(f"/v1/jobs/{job['id']}/transcript.vtt?lang=es"))).text()
        assert segments[0]["translations"]["es"] in spanish
        srt = await (await server.session.get(server.url(f"/v1/jobs/{job['id']}/transcript.srt"))).text()
        assert srt.startswith("1\n00:00:") and "," in srt.splitlines()[1]
        resp = await server.session.get(server.url(f"/v1/jobs/{job['id']}/transcript.srt?lang=xx"))
        assert resp.status == 404

        # analyze can add the transcript to tags; a file without sound fails clearly
        silent = write_video(
            str(tmp_path / "silent.mp4"), 2, lambda t: plain_card(160, 120), fps=5, width=160, height=120
        )
        resp = await server.session.post(
            server.url("/v1/analyze"), data=video_form(silent, transcript="true", tag_list="face")
        )
        job = await wait_job(server.session, server.base_url, (await resp.json())["job_id"])
        assert job["status"] == "failed" and "no audio" in job["error"]
    finally:
        await stop_server(server)


def test_audio_windows_cut_in_silence_and_cover_the_track(spoken):
    path, track = spoken
    offsets, total = [], 0
    for offset, chunk, _duration in audio_windows(path, 10):  # searches the last 5 s for the pause
        assert abs(offset * RATE - total) < 2
        offsets.append(offset)
        total += len(chunk)
        assert len(chunk) <= 15 * RATE
    assert len(offsets) >= 3
    with av.open(path) as container:
        duration = float(container.streams.audio[0].duration * container.streams.audio[0].time_base)
    assert abs(total / RATE - duration) < 0.2
    # every cut lies in a pause between phrases, never inside one
    for cut in offsets[1:]:
        assert not any(p.start + 0.05 < cut < p.end - 0.05 for p in track.phrases), (cut, track.phrases)
