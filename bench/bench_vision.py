"""Vision benchmarks: backend and stage latency per backend, and video fps with vision on vs off.

    .venv/bin/python bench/bench_vision.py [--seconds 4] [--no-fps]

Prints tables; never passes or fails. Backends measured:

- ``embedded``: the OpenCV Haar tagger on 512x512 and 1280x720 frames;
- ``vlm``: the VLM multiplexer against `tests.openai_stub.OpenAIStub` (a local OpenAI-compatible
  server answering after ``--stub-delay`` seconds, standing in for model time), so the figure is
  the client's own overhead (JPEG encode at the pixel budget, HTTP, parsing) plus that delay.

`compare_video_fps(run_video, make_stage, seconds)` is the reusable harness: it runs a video loop
twice, without and with a vision stage receiving every frame, and reports both frame rates.
`run_video(on_video, seconds) -> fps` is any loop that calls `on_video(VideoItem)` per frame; the
default `run_transcode_loop` decodes and re-encodes H.264 with PyAV as fast as it can.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import av  # noqa: E402
import numpy as np  # noqa: E402
import skimage.data  # noqa: E402

from inference.vision.base import VisionBackend, VisionRequest  # noqa: E402
from inference.vision.multiplexer import VlmConfig  # noqa: E402
from inference.vision.stage import VisionBackends, VisionSettings, VisionStage  # noqa: E402
from media.events import EventBus  # noqa: E402
from media.frames import VideoItem  # noqa: E402
from media.stage import Stage, StageContext  # noqa: E402
from media.stats import LatencyWindow  # noqa: E402

VideoRunner = Callable[[Callable[[VideoItem], None], float], Awaitable[float]]


def test_frames() -> dict[str, np.ndarray]:
    astronaut = skimage.data.astronaut()
    wide = np.full((720, 1280, 3), 30, np.uint8)
    wide[100:612, 300:812] = astronaut
    return {"512x512": astronaut, "1280x720": wide}


async def backend_latency(backend: VisionBackend, image: np.ndarray, calls: int = 20) -> dict[str, Any]:
    """Sequential analyze() calls; p50/p95 in ms."""
    window = LatencyWindow(calls)
    await backend.analyze(image, VisionRequest())  # warm-up
    for _ in range(calls):
        started = time.perf_counter()
        await backend.analyze(image, VisionRequest(source="bench"))
        window.add(time.perf_counter() - started)
    return window.summary_ms()


async def stage_latency(
    backends: VisionBackends, backend: str, seconds: float, interval: float = 0.25, fps: int = 30
) -> dict[str, Any]:
    """A VisionStage fed 1280x720 yuv420p frames at `fps` for `seconds`; its own stats."""
    loop = asyncio.get_running_loop()
    stage = VisionStage(backends, {"vision": {"interval": interval, "backend": backend}})
    await stage.start(StageContext(manifest_id=f"bench-{backend}", loop=loop, events=EventBus(loop)))
    frame = av.VideoFrame.from_ndarray(test_frames()["1280x720"], format="rgb24").reformat(format="yuv420p")

    def feed() -> None:
        start = time.perf_counter()
        for index in range(int(seconds * fps)):
            stage.on_video(VideoItem(frame=frame, media_time=index / fps, seq=index))
            delay = start + (index + 1) / fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    await asyncio.to_thread(feed)
    await asyncio.sleep(interval * 2)
    await stage.stop()
    return stage.stats()


# -- video fps with vision on / off ------------------------------------------------------------------


def _encoded_clip(width: int, height: int, frames: int) -> list[av.Packet]:
    """A short H.264 clip (the astronaut sliding sideways) as packets in memory."""
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = fractions.Fraction(1, 30)
    codec.options = {"preset": "ultrafast", "tune": "zerolatency"}
    base = np.full((height, width, 3), 30, np.uint8)
    photo = skimage.data.astronaut()[: min(512, height), : min(512, width)]
    packets: list[av.Packet] = []
    for index in range(frames):
        image = base.copy()
        x = (index * 8) % max(1, width - photo.shape[1])
        image[: photo.shape[0], x : x + photo.shape[1]] = photo
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        packets.extend(codec.encode(frame))
    packets.extend(codec.encode(None))
    return packets


async def run_transcode_loop(
    on_video: Callable[[VideoItem], None], seconds: float, width: int = 1280, height: int = 720
) -> float:
    """Decode + re-encode H.264 (PyAV, libx264 ultrafast) in a thread as fast as possible for
    `seconds`, calling `on_video` for each decoded frame; returns frames per second."""
    packets = _encoded_clip(width, height, 60)

    def loop() -> float:
        encoder = av.CodecContext.create("libx264", "w")
        encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
        encoder.time_base = fractions.Fraction(1, 30)
        encoder.options = {"preset": "ultrafast", "tune": "zerolatency"}
        frames, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            decoder = av.CodecContext.create("h264", "r")
            for packet in packets:
                for frame in decoder.decode(packet):
                    on_video(VideoItem(frame=frame, media_time=frames / 30, seq=frames))
                    frame.pts = frames
                    encoder.encode(frame)
                    frames += 1
        return frames / (time.perf_counter() - started)

    return await asyncio.to_thread(loop)


async def compare_video_fps(
    make_stage: Callable[[], Stage],
    run_video: VideoRunner = run_transcode_loop,
    seconds: float = 4.0,
) -> dict[str, Any]:
    """fps of `run_video` with no stage, then with the stage from `make_stage()` started on a real
    EventBus and receiving every frame. Returns both rates, the slowdown and the stage's stats."""
    off = await run_video(lambda item: None, seconds)
    loop = asyncio.get_running_loop()
    stage = make_stage()
    await stage.start(StageContext(manifest_id="bench-fps", loop=loop, events=EventBus(loop)))
    try:
        on = await run_video(stage.on_video, seconds)
    finally:
        await stage.stop()
    return {
        "fps_vision_off": round(off, 1),
        "fps_vision_on": round(on, 1),
        "slowdown_pct": round(100.0 * (off - on) / off, 1) if off else None,
        "stage": stage.stats(),
    }


# -- CLI ----------------------------------------------------------------------------------------------


def _row(*cells: Any) -> str:
    return " | ".join(str(c).ljust(w) for c, w in zip(cells, (26, 12, 10, 10, 10, 10)))


async def main(args: argparse.Namespace) -> None:
    from tests.openai_stub import OpenAIStub

    reply = '{"tags": [{"name": "person", "confidence": 0.9}, {"name": "space", "confidence": 0.8}]}'
    async with OpenAIStub(responder=lambda req: reply, delay_s=args.stub_delay) as stub:
        settings = VisionSettings(
            vlm=VlmConfig(model_id="stub-model", api_base_url=stub.base_url, tag_list=["person", "space", "dog"])
        )
        backends = VisionBackends(settings)
        try:
            print(f"backend analyze() latency, {args.calls} sequential calls (ms)")
            print(_row("backend / frame", "p50", "p95"))
            for name in ("embedded", "vlm"):
                backend = await backends.get(name)
                for label, image in test_frames().items():
                    summary = await backend_latency(backend, image, args.calls)
                    print(_row(f"{name} {label}", summary["p50"], summary["p95"]))
            print()
            print(
                f"VisionStage, 1280x720 yuv420p at 30 fps for {args.seconds}s, interval 0.25s (latency incl. RGB conversion)"
            )
            print(_row("backend", "p50 ms", "p95 ms", "samples", "skipped", "errors"))
            for name in ("embedded", "vlm"):
                stats = await stage_latency(backends, name, args.seconds)
                print(
                    _row(
                        name,
                        stats["latency_ms"]["p50"],
                        stats["latency_ms"]["p95"],
                        stats["samples"],
                        stats["skipped_ticks"],
                        stats["errors"],
                    )
                )
            if not args.no_fps:
                print()
                print(
                    f"1280x720 H.264 decode+encode loop, {args.seconds}s each, vision (embedded, interval 0.25s) off vs on"
                )
                result = await compare_video_fps(
                    lambda: VisionStage(backends, {"vision": {"interval": 0.25, "backend": "embedded"}}),
                    seconds=args.seconds,
                )
                print(_row("fps off", "fps on", "slowdown %", "samples"))
                print(
                    _row(
                        result["fps_vision_off"],
                        result["fps_vision_on"],
                        result["slowdown_pct"],
                        result["stage"]["samples"],
                    )
                )
        finally:
            await backends.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--stub-delay", type=float, default=0.05, help="seconds the stub VLM 'thinks' per frame")
    parser.add_argument("--no-fps", action="store_true", help="skip the video fps comparison")
    asyncio.run(main(parser.parse_args()))
