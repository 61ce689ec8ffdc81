"""VisionStage on a real EventBus, fed real PyAV frames from a feeder thread at 30 fps, with the
real embedded tagger (and a real, deliberately slow subclass of it)."""

from __future__ import annotations

import asyncio
import threading
import time

import av
import numpy as np
import pytest
import skimage.data

from inference.vision.base import VisionRequest, VisionResult
from inference.vision.embedded import EMBEDDED_MODEL_NAME, EmbeddedTagger
from inference.vision.stage import VisionBackends, VisionParams, VisionSettings, VisionStage
from media.events import EventBus, VisionEvent
from media.frames import VideoItem
from media.gpu_frames import GpuFrame, GpuFrameQueue
from media.stage import StageContext
from server.settings import Settings
from tests.conftest import wait_until

FPS = 30


def astronaut_frame() -> av.VideoFrame:
    # decoders hand out yuv420p; the stage converts only the sampled frame to RGB
    return av.VideoFrame.from_ndarray(skimage.data.astronaut(), format="rgb24").reformat(format="yuv420p")


class SlowTagger(EmbeddedTagger):
    """The real tagger, made slow: each analysis sleeps in its worker thread first."""

    name = "slow"

    def __init__(self, delay: float) -> None:
        super().__init__(max_pending=4)
        self.delay = delay

    def analyze_sync(self, image: np.ndarray, request: VisionRequest) -> VisionResult:
        time.sleep(self.delay)
        return super().analyze_sync(image, request)


class Feeder:
    """Calls stage.on_video from its own thread (like the decode thread) at a steady frame rate,
    recording how long each call took."""

    def __init__(self, stage: VisionStage, seconds: float, fps: int = FPS) -> None:
        self.stage, self.count, self.fps = stage, int(seconds * fps), fps
        self.frame = astronaut_frame()
        self.longest_call = 0.0
        self.fed = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.perf_counter()
        for index in range(self.count):
            item = VideoItem(frame=self.frame, media_time=index / self.fps, seq=index)
            t0 = time.perf_counter()
            self.stage.on_video(item)
            self.longest_call = max(self.longest_call, time.perf_counter() - t0)
            self.fed += 1
            delay = start + (index + 1) / self.fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    async def run(self) -> None:
        self.thread.start()
        await asyncio.to_thread(self.thread.join, 30)


async def start_stage(stage: VisionStage, manifest_id: str = "vision-test", params: dict | None = None):
    loop = asyncio.get_running_loop()
    bus = EventBus(loop)
    reports: list[str | None] = []
    ctx = StageContext(manifest_id=manifest_id, loop=loop, events=bus, params=params or {}, report_error=reports.append)
    await stage.start(ctx)
    return bus, reports


async def drain(sub, timeout: float = 0.2) -> list[VisionEvent]:
    events = []
    for _ in range(1000):
        event = await sub.get(timeout=timeout)
        if event is None:
            break
        events.append(event)
    return events


@pytest.fixture
async def backends():
    registry = VisionBackends(VisionSettings())
    yield registry
    await registry.close()


async def test_face_tags_arrive_with_boxes_while_feeding_30fps(backends: VisionBackends) -> None:
    stage = VisionStage(backends, {"vision": {"interval": 0.5, "backend": "embedded"}})
    bus, _reports = await start_stage(stage)
    sub = bus.subscribe(kinds={"tags"})
    feeder = Feeder(stage, seconds=3.0)
    try:
        await feeder.run()
        assert await wait_until(lambda: not stage.stats()["in_flight"], timeout=5)  # the last sample finished
    finally:
        await stage.stop()
    events = await drain(sub)
    assert feeder.fed == 90 and stage.stats()["frames_seen"] == 90
    assert len(events) >= 3, stage.stats()
    for event in events:
        assert isinstance(event, VisionEvent) and event.kind == "tags"
        assert event.model == EMBEDDED_MODEL_NAME
        assert event.frame_size == (512, 512)
        assert event.latency_ms > 0
        faces = [t for t in event.tags if t.name == "face"]
        assert len(faces) == 1
        x, y, w, h = faces[0].box
        assert 160 < x + w / 2 < 290 and 60 < y + h / 2 < 170
    pts = [e.pts for e in events]
    assert pts == sorted(pts) and all(0 <= p < 3.0 for p in pts)
    stats = stage.stats()
    assert stats["published"] == len(events) and stats["errors"] == 0
    assert stats["latency_ms"]["p50"] is not None and stats["latency_ms"]["p95"] >= stats["latency_ms"]["p50"]


async def test_slow_backend_skips_ticks_and_never_blocks_feeding() -> None:
    slow = SlowTagger(delay=1.0)
    registry = VisionBackends(VisionSettings(), backends={"slow": slow})
    stage = VisionStage(registry, {"vision": {"interval": 0.2, "backend": "slow"}})
    bus, _ = await start_stage(stage)
    sub = bus.subscribe(kinds={"tags"})
    feeder = Feeder(stage, seconds=3.0)
    try:
        await feeder.run()
    finally:
        await stage.stop()
        await registry.close()
    stats = stage.stats()
    assert feeder.fed == 90
    # a blocking on_video would have waited ~1 s for the model at least once
    assert feeder.longest_call < 0.5, feeder.longest_call
    assert stats["skipped_ticks"] >= 5, stats  # ~15 ticks, model takes 5 of them per frame
    assert stats["samples"] <= 4, stats  # never more than one analysis at a time
    assert stats["published"] >= 1
    assert slow.stats()["busy_rejections"] == 0  # nothing queued behind the busy model
    assert len(await drain(sub)) == stats["published"]


async def test_params_change_mid_stream(backends: VisionBackends) -> None:
    stage = VisionStage(backends, {"vision": {"interval": 0.2}})
    bus, _ = await start_stage(stage)
    sub = bus.subscribe()
    feeder = Feeder(stage, seconds=4.0)  # frames keep coming through every step below
    feeding = asyncio.create_task(feeder.run())
    try:
        assert await wait_until(lambda: stage.stats()["published"] >= 1, timeout=5)  # tags
        published = stage.stats()["published"]
        stage.update_params({"vision": {"interval": 0.2, "mode": "description"}})
        # one more than a sample that was in flight at the switch: a description
        assert await wait_until(lambda: stage.stats()["published"] >= published + 2, timeout=5)
        stage.update_params({"vision": {"enabled": False}})
        assert await wait_until(lambda: not stage.stats()["in_flight"], timeout=5)  # one in flight may still land
        published_when_disabled = stage.stats()["published"]
        # 15 more frames (0.5 s of video, 2.5 intervals) went by: enabled, they would have been sampled
        seen = stage.stats()["frames_seen"]
        assert await wait_until(lambda: stage.stats()["frames_seen"] >= seen + 15, timeout=5)
        assert not stage.stats()["in_flight"]
        assert stage.stats()["published"] == published_when_disabled
        stage.update_params({"vision": {"interval": "not-a-number"}})  # invalid: kept the old params
        assert stage.stats()["param_errors"] == 1 and stage.params.enabled is False
        await feeding
    finally:
        await stage.stop()
    events = [e for e in await drain(sub) if isinstance(e, VisionEvent)]
    kinds = [e.kind for e in events]
    assert "tags" in kinds and "description" in kinds
    assert kinds.index("description") > kinds.index("tags")
    description = next(e for e in events if e.kind == "description")
    assert description.text.startswith(EMBEDDED_MODEL_NAME) and "1 face" in description.text


async def test_unavailable_backend_is_counted_and_reported_once(backends: VisionBackends) -> None:
    stage = VisionStage(backends, {"vision": {"interval": 0.1, "backend": "vlm"}})  # no VLM configured
    bus, reports = await start_stage(stage)
    sub = bus.subscribe()
    feeder = Feeder(stage, seconds=1.0)
    try:
        await feeder.run()
        assert await wait_until(lambda: stage.stats()["errors"] >= 3 and not stage.stats()["in_flight"], timeout=5)
        stats = stage.stats()
        assert stats["errors"] >= 3 and "no VLM endpoint configured" in stats["last_error"]
        assert len(reports) == 1 and "VLM" in reports[0]  # transitions only, not every tick
        # switching to a working backend recovers and reports it
        stage.update_params({"vision": {"interval": 0.1, "backend": "embedded"}})
        feeder2 = Feeder(stage, seconds=0.8)
        await feeder2.run()
        assert await wait_until(lambda: reports[-1] is None and stage.stats()["published"] > 0, timeout=5)
    finally:
        await stage.stop()
    assert reports[-1] is None
    assert any(isinstance(e, VisionEvent) for e in await drain(sub))


async def test_params_are_validated_and_read_from_the_context(backends: VisionBackends) -> None:
    with pytest.raises(ValueError):
        VisionStage(backends, {"vision": {"interval": -1}})
    with pytest.raises(ValueError):
        VisionStage(backends, {"vision": {"mode": "poetry"}})
    assert VisionParams.from_stream_params({"vision": {"tag_list": "face, motion"}}).tag_list == ["face", "motion"]
    assert VisionParams.from_stream_params({}, VisionSettings(interval=2.5)).interval == 2.5

    stage = VisionStage(backends)  # params come from ctx.params at start
    await start_stage(stage, params={"vision": {"interval": 0.3, "threshold": 0.7, "burn_in": False}})
    try:
        assert stage.params.interval == 0.3 and stage.params.threshold == 0.7
    finally:
        await stage.stop()
    assert stage._task is None  # stopped: nothing left running


async def test_backends_registry_builds_shared_instances_lazily() -> None:
    registry = VisionBackends(VisionSettings())
    try:
        first = await registry.get("embedded")
        assert first is await registry.get("embedded")  # one instance shared by every stream
        status = registry.status()
        assert status["embedded"]["loaded"] and status["embedded"]["model"] == EMBEDDED_MODEL_NAME
        for name, needle in (("vlm", "no VLM endpoint"), ("tensorrt", "no TensorRT engine"), ("nope", "unknown")):
            with pytest.raises(Exception, match=needle):
                await registry.get(name)
        assert "no VLM endpoint" in registry.status()["vlm"]["reason"]
    finally:
        await registry.close()


def test_settings_from_environment(monkeypatch) -> None:
    environ = {
        "VISION_BACKEND": "vlm",
        "VISION_INTERVAL": "0.5",
        "VISION_VLM_ENDPOINT": "http://127.0.0.1:8000/v1",
        "VISION_VLM_MODEL": "Qwen/Qwen2.5-VL-3B-Instruct",
        "VISION_VLM_TAGS": "person, dog",
        "VISION_TENSORRT_ENGINE": "/models/x.engine",
    }
    for name in environ:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("VISION_VLM_ENDPOINTS", raising=False)
    assert VisionSettings().vlm is None
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    settings = VisionSettings()
    assert settings.default_backend == "vlm" and settings.interval == 0.5
    assert settings.vlm is not None and settings.vlm.tag_list == ["person", "dog"]
    assert settings.vlm.model_id == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert settings.tensorrt is not None and settings.tensorrt.engine_path == "/models/x.engine"
    assert Settings().vision.vlm is not None  # the root tree reads the same variables


class GpuFrameTagger(EmbeddedTagger):
    """A backend that takes frames from the GPU frame queue (like TensorRT). On this CPU-only
    test the queue holds the RGB array where a CUDA tensor would be; the routing is what's tested."""

    name = "gpu-frames"
    accepts_gpu_frames = True

    def __init__(self) -> None:
        super().__init__()
        self.gpu_frames_seen = 0

    async def analyze(self, image, request: VisionRequest) -> VisionResult:
        assert isinstance(image, GpuFrame), type(image)
        self.gpu_frames_seen += 1
        return await super().analyze(image.tensor, request)


async def test_gpu_frame_queue_feeds_backends_that_accept_gpu_frames() -> None:
    tagger = GpuFrameTagger()
    registry = VisionBackends(VisionSettings(), backends={"gpu-frames": tagger})
    queue = GpuFrameQueue(maxsize=2)
    stage = VisionStage(registry, {"vision": {"interval": 0.2, "backend": "gpu-frames"}}, gpu_frames=queue)
    bus, _ = await start_stage(stage)
    sub = bus.subscribe(kinds={"tags"})
    rgb = skimage.data.astronaut()
    frame = astronaut_frame()
    try:
        for index in range(30):
            stage.on_video(VideoItem(frame=frame, media_time=index / FPS, seq=index))
            queue.put(
                GpuFrame(
                    tensor=rgb,
                    media_time=100 + index / FPS,
                    seq=index,
                    ingest_time=0.0,
                    ready=None,
                    width=512,
                    height=512,
                )
            )
            await asyncio.sleep(1 / FPS)  # paced as live video
        assert await wait_until(lambda: not stage.stats()["in_flight"], timeout=5)  # the last sample finished
    finally:
        await stage.stop()
        await registry.close()
    events = await drain(sub)
    assert events and tagger.gpu_frames_seen == stage.stats()["gpu_samples"] >= 2
    assert all(e.pts >= 100 and e.frame_size == (512, 512) for e in events)  # times of the GPU frames
    assert all(any(t.name == "face" for t in e.tags) for e in events)


def test_an_update_about_something_else_keeps_vision_as_it_was():
    """Updates are merge patches: the stream merges them and hands the stage the whole params."""
    from media.params import merge_patch

    params = {"vision": {"interval": 0.5}}
    stage = VisionStage(VisionBackends(), params)
    params = merge_patch(params, {"captions": {"enabled": True}})  # about something else
    stage.update_params(params)
    assert stage.params.enabled and stage.params.interval == 0.5
    params = merge_patch(params, {"vision": {"enabled": False}})
    stage.update_params(params)
    assert not stage.params.enabled
    stage.update_params(merge_patch(params, {"vision": None}))  # null removes: back to the default (off)
    assert not stage.params.enabled
