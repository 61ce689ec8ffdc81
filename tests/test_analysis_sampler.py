"""The frame sampler on real H.264 files (each frame stamped with its number), the TRU sampling
plan, tag-span merging and the subtitle formats."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.sampler import (
    PATCH,
    FrameSampler,
    NotAVideo,
    VideoInfo,
    fit_frame_size,
    interval_times,
    merge_factor,
    video_plan,
)
from analysis.settings import AnalysisSettings
from analysis.spans import merge_spans
from analysis.subtitles import to_srt, to_vtt
from tests.analysis_media import write_video
from tests.media_gen import ID_BITS, id_block_geometry

FPS = 10


def numbered(t: float, width: int = 320, height: int = 240) -> np.ndarray:
    """A grey picture with the frame number as a row of black/white blocks."""
    index = round(t * FPS)
    picture = np.full((height, width, 3), 128, np.uint8)
    block, x0, y0 = id_block_geometry(width, height)
    for bit in range(ID_BITS):
        value = 235 if (index >> (ID_BITS - 1 - bit)) & 1 else 16
        picture[y0 : y0 + block, x0 + bit * block : x0 + (bit + 1) * block] = value
    return picture


def frame_number(rgb: np.ndarray) -> int:
    grey = rgb.mean(axis=2)
    height, width = grey.shape
    block, x0, y0 = id_block_geometry(width, height)
    number = 0
    for bit in range(ID_BITS):
        cy, cx = y0 + block // 2, x0 + bit * block + block // 2
        number = (number << 1) | int(grey[cy - 2 : cy + 2, cx - 2 : cx + 2].mean() > 128)
    return number


@pytest.mark.parametrize("gop_seconds", [1, 10])
def test_each_sample_is_the_frame_at_its_time_and_only_samples_are_decoded(tmp_path, gop_seconds):
    path = write_video(str(tmp_path / "n.mp4"), 30, numbered, fps=FPS, gop=gop_seconds * FPS)
    times = interval_times(30.0, 2.0, 1000)
    with FrameSampler(path) as sampler:
        frames = list(sampler.frames(times))
        assert [f.target for f in frames] == times
        assert [frame_number(f.image) for f in frames] == [round(t * FPS) for t in times]
        assert [f.t for f in frames] == times
        if gop_seconds == 1:  # a keyframe before every sample: one seek, a frame or so per sample
            assert sampler.frames_decoded <= 2 * len(times)
        else:  # long GOPs: never more than decoding straight through (plus the first GOP's probing)
            assert sampler.frames_decoded <= 300 + 100
    # scaled frames keep the right content
    with FrameSampler(path) as sampler:
        frame = next(sampler.frames([7.3], 160, 120))
        assert frame.image.shape == (120, 160, 3) and frame.t == pytest.approx(7.3)


def test_not_a_video_is_refused_clearly(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00garbage" * 500)
    with pytest.raises(NotAVideo, match="not a readable media file"):
        FrameSampler(str(junk))


def test_truncated_file_gives_the_frames_it_has(tmp_path):
    path = write_video(str(tmp_path / "t.ts"), 6, numbered, fps=FPS, container_format="mpegts")
    data = open(path, "rb").read()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[: len(data) // 2])
    with FrameSampler(str(cut)) as sampler:
        got = [frame_number(f.image) for f in sampler.frames(interval_times(6.0, 1.0, 100))]
    assert got and got == sorted(got) and got[-1] < 60


def test_tru_plan_obeys_fps_max_frames_and_pixel_budgets():
    info = VideoInfo(duration=100.0, width=1280, height=720, fps=25.0, codec="h264", container="mp4", has_audio=False)
    plan = video_plan(info, fps=2.0, max_frames=768, min_pixels=4096, max_pixels=262144, total_pixels=10**9)
    assert len(plan.times) == 200 and plan.times[:3] == [0.0, 0.5, 1.0]
    assert plan.width % PATCH == 0 and plan.height % PATCH == 0 and plan.width * plan.height <= 262144
    assert abs(plan.width / plan.height - 16 / 9) < 0.1
    capped = video_plan(info, fps=2.0, max_frames=50, min_pixels=4096, max_pixels=262144, total_pixels=50 * 30000)
    assert len(capped.times) == 50 and capped.times == sorted(capped.times)
    assert capped.times[0] == pytest.approx(1.0) and capped.times[-1] == pytest.approx(99.0)
    assert 50 * capped.width * capped.height <= 50 * 30000
    tight = video_plan(info, fps=2.0, max_frames=768, min_pixels=20000, max_pixels=262144, total_pixels=100 * 20000)
    assert len(tight.times) * tight.width * tight.height <= 100 * 20000
    width, height = fit_frame_size(100, 50, 40000, 262144)  # small frames are enlarged to min_pixels
    assert width * height >= 40000 and width % PATCH == 0 and height % PATCH == 0 and width > height


@pytest.mark.parametrize(("env", "factor"), [(None, 32), ("16", 32), ("14", 28)])
def test_frame_sides_are_multiples_of_the_patch_size_merged_2x2(monkeypatch, env, factor):
    """IMAGE_PATCH_SIZE (default 16, Qwen3-VL) sets the side multiple: 16 → 32 px, 14 (Qwen2.5-VL) → 28 px."""
    monkeypatch.delenv("IMAGE_PATCH_SIZE", raising=False)
    if env is not None:
        monkeypatch.setenv("IMAGE_PATCH_SIZE", env)
    patch_size = AnalysisSettings().image_patch_size
    assert merge_factor(patch_size) == factor
    info = VideoInfo(duration=20.0, width=1280, height=720, fps=25.0, codec="h264", container="mp4", has_audio=False)
    for max_pixels, total in ((262144, 10**9), (40000, 10**9), (262144, 10 * 20000), (5000, 10**9)):
        plan = video_plan(
            info, fps=1.0, max_frames=768, min_pixels=4096, max_pixels=max_pixels, total_pixels=total, factor=factor
        )
        assert plan.width % factor == 0 and plan.height % factor == 0, (factor, plan)
        assert plan.width * plan.height <= max(max_pixels, 4096) and plan.width > plan.height
    # min/max pixels count in units of the factor too: a frame is never below one merged token
    tiny = video_plan(info, fps=1.0, max_frames=4, min_pixels=784, max_pixels=784, total_pixels=784, factor=factor)
    assert (tiny.width, tiny.height) == (factor, factor)
    width, height = fit_frame_size(100, 50, 40000, 262144, factor)
    assert width % factor == 0 and height % factor == 0 and width * height >= 40000
    # the exported default is the Qwen3-VL multiple
    assert PATCH == 32


def test_spans_merge_over_one_missed_sample_only():
    hits = [1, 1, 0, 1, 1, 0, 0, 1, 0]
    samples = [(i * 0.5, {"face": 0.9} if hit else {}) for i, hit in enumerate(hits)]
    samples[1][1]["face"] = 0.95
    spans = merge_spans(samples, 0.5, 4.5, threshold=0.5)
    assert spans == {
        "face": [{"start": 0.0, "end": 2.5, "confidence": 0.95}, {"start": 3.5, "end": 4.0, "confidence": 0.9}]
    }
    assert merge_spans([(0.0, {"face": 0.4})], 0.5, 1.0, threshold=0.5) == {}


def test_vtt_and_srt_text():
    segments = [
        {"start": 0.5, "end": 2.25, "text": "Hello there", "translations": {"es": "Hola"}},
        {"start": 3661.0, "end": 3662.5, "text": "a --> b", "translations": {"es": "x"}},
    ]
    vtt = to_vtt(segments)
    assert vtt.splitlines()[:4] == ["WEBVTT", "", "1", "00:00:00.500 --> 00:00:02.250"]
    # WebVTT escapes '>' (so "-->" cannot end up in cue text); SRT has no escaping, so it rewrites it
    assert "01:01:01.000 --> 01:01:02.500" in vtt and "a --&gt; b" in vtt
    assert "a -> b" in to_srt(segments)
    assert "Hola" in to_vtt(segments, "es")
    assert to_srt(segments).splitlines()[:3] == ["1", "00:00:00,500 --> 00:00:02,250", "Hello there"]
    with pytest.raises(KeyError):
        to_srt(segments, "fr")
