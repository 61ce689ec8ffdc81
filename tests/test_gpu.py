"""GPU parts: frame upload queue, TensorRT backend, GPU memory manager.

Tests marked `needs_cuda` run only where torch sees a CUDA device and skip elsewhere with the
reason. The CPU-side tests check that, without a GPU, everything says so plainly and nothing
imports torch. The memory manager's policy is also tested with a fixed-reading probe — a real
`MemoryProbe` subclass, the same seam the NVML and torch probes plug into."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import skimage.data

from inference.gpu import GpuMemoryManager, GpuSettings, MemoryProbe, MemoryReading
from inference.vision.base import BackendUnavailable, VisionRequest
from inference.vision.tensorrt_backend import TensorRtBackend, TensorRtConfig, missing_requirements
from media import gpu_frames
from media.gpu_frames import GpuFrame, GpuFrameQueue, GpuFrameUploader
from tests.conftest import wait_until

REPO = Path(__file__).resolve().parents[1]
CUDA = gpu_frames.available()
needs_cuda = pytest.mark.skipif(not CUDA, reason=f"needs a GPU: {gpu_frames.unavailable_reason() or 'no CUDA device'}")
needs_tensorrt = pytest.mark.skipif(
    not CUDA or importlib.util.find_spec("tensorrt") is None or importlib.util.find_spec("onnx") is None,
    reason="needs CUDA, tensorrt and onnx (no CUDA device or packages missing)",
)
cpu_only = pytest.mark.skipif(CUDA, reason="checks the no-GPU path; this machine has CUDA")


# -- CPU side: plain unavailability ------------------------------------------------------------------


@cpu_only
def test_memory_manager_reports_unavailability_plainly() -> None:
    manager = GpuMemoryManager()
    assert manager.available is False
    assert manager.snapshot() == {"available": False, "reason": "no CUDA device"}
    accept, reason = manager.can_accept_stream()
    assert accept is True and "no CUDA device" in reason  # nothing to protect: never refuses
    asyncio.run(asyncio.wait_for(manager.run(0.01), 1.0))  # returns at once, does nothing


@cpu_only
def test_tensorrt_backend_names_what_is_missing(tmp_path: Path) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(BackendUnavailable) as caught:
        TensorRtBackend(TensorRtConfig(engine_path=str(engine)))
    message = str(caught.value)
    for missing in missing_requirements():
        assert missing in message
    if importlib.util.find_spec("tensorrt") is None:
        assert "tensorrt" in message
    if importlib.util.find_spec("torch") is None:
        assert "torch" in message


@cpu_only
def test_build_engine_cli_explains_missing_tensorrt(tmp_path: Path) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"\x08\x07")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "inference.vision.build_engine",
            "--onnx",
            str(onnx),
            "--out",
            str(tmp_path / "m.engine"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "tensorrt" in proc.stderr


@cpu_only
def test_cpu_path_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from media import gpu_frames\n"
        "import inference.vision, inference.gpu, server.routes_vision\n"
        "from inference.gpu import GpuMemoryManager\n"
        "assert gpu_frames.available() is False\n"
        "GpuMemoryManager().snapshot()\n"
        "assert 'torch' not in sys.modules and 'tensorrt' not in sys.modules, 'torch imported'\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@cpu_only
def test_uploader_refuses_without_cuda() -> None:
    with pytest.raises(RuntimeError, match="no CUDA device|torch"):
        GpuFrameUploader(GpuFrameQueue())


def test_gpu_frame_queue_is_bounded_drop_oldest() -> None:
    # the queue only holds references, so its policy is testable anywhere
    queue = GpuFrameQueue(maxsize=3)
    frames = [
        GpuFrame(tensor=None, media_time=i / 30, seq=i, ingest_time=0.0, ready=None, width=2, height=2)
        for i in range(10)
    ]
    for frame in frames:
        queue.put(frame)
    assert len(queue) == 3 and queue.dropped == 7
    assert queue.latest() is frames[-1]
    assert queue.get(timeout=0).seq == 7
    assert queue.get_latest(timeout=0).seq == 9 and queue.dropped == 8
    assert queue.get(timeout=0.01) is None
    queue.close()
    assert queue.latest() is None


# -- memory manager policy (fixed-reading probe) -----------------------------------------------------


class FixedProbe(MemoryProbe):
    """Reports whatever free memory the test sets; unloads can give memory back."""

    name = "fixed"

    def __init__(self, free_mb: float, total_mb: float = 16000) -> None:
        self.free_mb, self.total_mb = free_mb, total_mb

    def read(self) -> MemoryReading:
        return MemoryReading(self.total_mb, self.free_mb, self.total_mb - self.free_mb, "test-gpu", None, self.name)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_memory_manager_admission_and_pressure_decisions() -> None:
    probe, clock = FixedProbe(free_mb=8000), Clock()
    manager = GpuMemoryManager(
        GpuSettings(min_free_mb=2000, pressure_free_mb=1000, unload_cooldown=30), probe=probe, clock=clock
    )
    unloaded: list[str] = []
    loaded = {"translator": True, "engine-a": True, "engine-b": True, "asr": True, "gone": False}

    def unloader(name: str, gives_back: float):
        def unload() -> None:
            unloaded.append(name)
            loaded[name] = False
            probe.free_mb += gives_back

        return unload

    async def unload_b() -> None:
        unloaded.append("engine-b")
        loaded["engine-b"] = False
        probe.free_mb += 600

    busy = {"translator": True}
    manager.track_model(
        "translator", lambda: loaded["translator"], unloader("translator", 100), is_idle=lambda: not busy["translator"]
    )
    manager.track_model("asr", lambda: loaded["asr"], pinned_reason="shared by every live caption stream")
    manager.track_model("engine-a", lambda: loaded["engine-a"], unloader("engine-a", 600))
    manager.track_model("engine-b", lambda: loaded["engine-b"], unload_b)
    manager.track_model("gone", lambda: loaded["gone"], unloader("gone", 10_000))  # not loaded: never asked

    assert manager.can_accept_stream()[0] is True
    assert await manager.relieve_pressure() == []  # no pressure: nothing unloaded
    assert manager.snapshot()["decisions"] == []

    probe.free_mb = 1500
    clock.now += 1
    accept, reason = manager.can_accept_stream()
    assert accept is False and "min_free_mb=2000" in reason
    assert manager.snapshot()["decisions"][-1]["action"] == "refuse_stream"

    probe.free_mb = 300
    clock.now += 1
    # busy translator and pinned asr are kept; engine-a unloads (+600 = 900, still short), then
    # engine-b (+600 = 1500): enough, stop
    assert await manager.relieve_pressure() == ["engine-a", "engine-b"]
    assert unloaded == ["engine-a", "engine-b"]
    snapshot = manager.snapshot()
    assert snapshot["available"] is True and snapshot["device_name"] == "test-gpu"
    assert snapshot["free_mb"] == 1500 and snapshot["under_pressure"] is False and snapshot["unloads"] == 2
    decisions = [(d["action"], d["model"], d["detail"].split(":")[0]) for d in snapshot["decisions"]]
    assert decisions[1:] == [
        ("keep", "translator", "busy"),
        ("keep", "asr", "pinned"),
        ("unload", "engine-a", "idle under pressure; 900 MiB free after"),
        ("unload", "engine-b", "idle under pressure; 1500 MiB free after"),
    ]
    models = {m["name"]: m for m in snapshot["models"]}
    assert models["asr"] == {
        "name": "asr",
        "loaded": True,
        "unloadable": False,
        "unloads": 0,
        "pinned": "shared by every live caption stream",
    }
    assert models["engine-a"]["loaded"] is False and models["engine-a"]["unloads"] == 1

    probe.free_mb = 100  # pressure again: the unloaded engines are not loaded, so not asked again
    clock.now += 1
    busy["translator"] = False
    assert await manager.relieve_pressure() == ["translator"]
    assert len(manager.snapshot()["decisions"]) == 6  # "kept asr" is recorded once per cooldown
    loaded["engine-a"] = True  # rebuilt on its next use
    clock.now += 31
    assert await manager.relieve_pressure() == ["engine-a"]


async def test_memory_manager_watcher_runs_until_cancelled() -> None:
    probe = FixedProbe(free_mb=500)
    manager = GpuMemoryManager(GpuSettings(min_free_mb=2000, pressure_free_mb=1000, unload_cooldown=0), probe=probe)
    calls: list[int] = []
    manager.track_model("m", lambda: True, lambda: calls.append(1))
    task = asyncio.create_task(manager.run(0.01))
    assert await wait_until(lambda: len(calls) >= 3, timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(calls) >= 3 and manager.pressure_events >= 3


async def test_server_tracks_the_models_it_really_loads() -> None:
    """The wiring of server.features: the vision engine slot is unloadable (and really unloads
    the backend, which is rebuilt on its next use); the speech pool is pinned."""
    from aiohttp import web

    from inference.asr.model import AsrModelPool, AsrSettings
    from inference.vision.embedded import EmbeddedTagger
    from inference.vision.stage import VisionBackends, VisionSettings
    from server.features import ASR_KEY, VISION_KEY, track_gpu_models

    app = web.Application()
    engine = EmbeddedTagger()  # a real backend standing in the "tensorrt" slot (no GPU here)
    app[VISION_KEY] = VisionBackends(VisionSettings(), backends={"tensorrt": engine})
    app[ASR_KEY] = AsrModelPool(AsrSettings(device="cpu"))
    probe = FixedProbe(free_mb=100)
    manager = GpuMemoryManager(GpuSettings(min_free_mb=2000, pressure_free_mb=1000), probe=probe)
    track_gpu_models(app, manager)
    models = {m["name"]: m for m in manager.snapshot()["models"]}
    assert models["vision:tensorrt"]["loaded"] is True and models["vision:tensorrt"]["unloadable"] is True
    assert models["asr"]["unloadable"] is False and models["asr"]["loaded"] is False  # CPU pool: no GPU memory
    assert await manager.relieve_pressure() == ["vision:tensorrt"]
    assert app[VISION_KEY].loaded("tensorrt") is None
    assert manager.snapshot()["decisions"][-1]["action"] == "unload"


def test_settings_come_from_gpu_environment_variables(monkeypatch) -> None:
    monkeypatch.setenv("GPU_MIN_FREE_MB", "4096")
    monkeypatch.setenv("GPU_WATCH_INTERVAL", "0.5")
    monkeypatch.setenv("GPU_UNLOAD_COOLDOWN", "5")
    settings = GpuSettings()
    assert (settings.min_free_mb, settings.watch_interval, settings.unload_cooldown) == (4096, 0.5, 5.0)


def test_settings_reject_inverted_thresholds() -> None:
    with pytest.raises(ValueError):
        GpuSettings(min_free_mb=500, pressure_free_mb=1000)


# -- CUDA machines ------------------------------------------------------------------------------------


@needs_cuda
def test_uploads_frames_once_into_the_gpu_queue_with_pinned_reuse() -> None:
    import torch

    queue = GpuFrameQueue(maxsize=2)
    uploader = GpuFrameUploader(queue)
    rgb = skimage.data.astronaut()
    yuv_frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    first = uploader.upload(yuv_frame, media_time=0.0, seq=0)
    pinned_ptrs = {slot.host.data_ptr() for slot in uploader._pinned}
    for seq in range(1, 6):
        queue.put(uploader.upload(yuv_frame, media_time=seq / 30, seq=seq))
    assert {slot.host.data_ptr() for slot in uploader._pinned} == pinned_ptrs  # buffers reused
    assert all(slot.host.is_pinned() for slot in uploader._pinned)
    assert len(queue) == 2 and queue.dropped == 3
    tensor = first.wait()
    torch.cuda.synchronize()
    assert tensor.is_cuda and tensor.dtype == torch.uint8 and tuple(tensor.shape) == (512, 512, 3)
    reference = yuv_frame.to_ndarray(format="rgb24").astype(np.int16)
    assert np.abs(tensor.cpu().numpy().astype(np.int16) - reference).mean() < 3  # GPU colour conversion
    assert uploader.stats()["gpu_color_converted"] == 6


@needs_cuda
def test_uploader_thread_never_blocks_the_decoder() -> None:
    import time

    from media.frames import VideoItem

    queue = GpuFrameQueue(maxsize=4)
    uploader = GpuFrameUploader(queue, inbox_size=2)
    uploader.start()
    frame = av.VideoFrame.from_ndarray(skimage.data.astronaut(), format="rgb24").reformat(format="yuv420p")
    try:
        for seq in range(120):
            uploader.offer(VideoItem(frame=frame, media_time=seq / 30, seq=seq))
        deadline = time.monotonic() + 10
        while queue.latest() is None or queue.latest().seq < 119:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        uploader.stop()
    stats = uploader.stats()
    assert stats["uploaded"] + stats["inbox_dropped"] == 120 and stats["errors"] == 0


@needs_cuda
def test_memory_manager_reads_the_real_device() -> None:
    manager = GpuMemoryManager(GpuSettings(min_free_mb=1, pressure_free_mb=0))
    snapshot = manager.snapshot()
    assert (
        snapshot["available"] is True and snapshot["total_mb"] > 0 and 0 < snapshot["free_mb"] <= snapshot["total_mb"]
    )
    assert manager.can_accept_stream()[0] is True
    manager.close()


@needs_tensorrt
async def test_tensorrt_engine_classifies_on_gpu(tmp_path: Path) -> None:
    import torch

    from inference.vision.build_engine import build_engine

    # a tiny classifier with a known answer: class = the brightest colour channel
    class BrightestChannel(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3)) * 10.0

    onnx_path = tmp_path / "brightest.onnx"
    export_args = dict(input_names=["image"], output_names=["logits"], opset_version=17)
    try:  # the TorchScript exporter: no onnxscript needed
        torch.onnx.export(BrightestChannel(), torch.zeros(1, 3, 64, 64), str(onnx_path), dynamo=False, **export_args)
    except TypeError:  # torch < 2.5 has no `dynamo` argument
        torch.onnx.export(BrightestChannel(), torch.zeros(1, 3, 64, 64), str(onnx_path), **export_args)
    engine_path = build_engine(onnx_path, tmp_path / "brightest.engine")
    labels = tmp_path / "labels.txt"
    labels.write_text("red\ngreen\nblue\n")
    backend = TensorRtBackend(
        TensorRtConfig(engine_path=str(engine_path), labels_path=str(labels), top_k=3, mean=(0, 0, 0), std=(1, 1, 1))
    )
    try:
        blue = np.zeros((120, 160, 3), np.uint8)
        blue[..., 2] = 255
        result = await backend.analyze(blue, VisionRequest(threshold=0.0))
        assert result.tags[0].name == "blue" and result.tags[0].confidence > 0.9
        assert abs(sum(t.confidence for t in result.tags) - 1.0) < 0.01  # softmax over the 3 classes
        gpu_input = torch.from_numpy(blue).cuda()
        assert (await backend.analyze(gpu_input, VisionRequest())).tags[0].name == "blue"
    finally:
        await backend.close()


@needs_cuda
async def test_tensorrt_vision_stage_takes_frames_through_the_gpu_queue() -> None:
    """With CUDA, a stream whose vision backend is TensorRT uploads its frames (decode thread →
    uploader → GpuFrameQueue) and the backend gets GpuFrames, not host arrays."""
    import torch

    from inference.vision.base import VisionBackend, VisionResult
    from inference.vision.stage import VisionBackends, VisionSettings, VisionStage
    from media.events import EventBus
    from media.frames import VideoItem
    from media.stage import StageContext

    class RecordingEngine(VisionBackend):
        name = "tensorrt"
        model = "recording"
        accepts_gpu_frames = True

        def __init__(self) -> None:
            self.images: list = []

        async def analyze(self, image, request):
            self.images.append(image)
            tensor = image.wait()
            torch.cuda.synchronize()
            assert tensor.is_cuda and tuple(tensor.shape) == (240, 320, 3)
            return VisionResult(tags=[])

    engine = RecordingEngine()
    backends = VisionBackends(VisionSettings(), backends={"tensorrt": engine})
    stage = VisionStage(backends)
    loop = asyncio.get_running_loop()
    bus = EventBus(loop)
    await stage.start(StageContext("gpu-path", loop, bus, {"vision": {"backend": "tensorrt", "interval": 0.1}}))
    frame = av.VideoFrame.from_ndarray(skimage.data.astronaut()[:240, :320].copy(), format="rgb24").reformat(
        format="yuv420p"
    )
    try:
        for seq in range(30):
            stage.on_video(VideoItem(frame, seq / 30, seq=seq))
            await asyncio.sleep(1 / 30)
        assert engine.images and all(isinstance(image, GpuFrame) for image in engine.images)
        stats = stage.stats()
        assert stats["gpu_samples"] == stats["samples"] > 0 and stats["gpu_upload"]["uploaded"] > 0
        # moving to a CPU backend stops the uploader
        stage.update_params({"vision": {"backend": "embedded"}})
        assert stage.stats()["gpu_upload"] is None
    finally:
        await stage.stop()
        bus.close()


@cpu_only
async def test_vision_stage_without_cuda_keeps_the_cpu_path() -> None:
    """No CUDA: a TensorRT stage starts no uploader; frames stay on the CPU path."""
    from inference.vision.stage import VisionBackends, VisionSettings, VisionStage
    from media.events import EventBus
    from media.stage import StageContext

    loop = asyncio.get_running_loop()
    bus = EventBus(loop)
    stage = VisionStage(VisionBackends(VisionSettings()))
    await stage.start(StageContext("cpu-path", loop, bus, {"vision": {"backend": "tensorrt"}}))
    try:
        assert stage.params.backend == "tensorrt" and stage.stats()["gpu_upload"] is None
    finally:
        await stage.stop()
        bus.close()
