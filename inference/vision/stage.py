"""Vision on live frames: `VisionStage` samples a stream's newest frame every `interval` seconds
and publishes what a backend saw as `VisionEvent`s; `VisionBackends` holds the backends every
stream (and the HTTP API) shares; `VisionSettings` configures them.

The stage never slows the video: `on_video` (decode thread) only swaps a reference in a
`LatestSlot`. A timer task takes the newest frame at each tick, converts only that frame to RGB (in
a thread) and hands it to the backend. If the previous frame is still being analysed at the next
tick, the tick is *skipped* and counted — frames never queue up behind a slow model.

Stream params (``params["vision"]``; other keys such as the overlay's ``burn_in`` are ignored)::

    {"enabled": true, "interval": 1.0, "backend": "embedded" | "vlm" | "tensorrt",
     "tag_list": ["face", ...], "threshold": 0.5, "prompt": null, "mode": "tags" | "description"}

All of them can change mid-stream through `update_params`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from inference.vision.base import BackendBusy, BackendUnavailable, VisionBackend, VisionRequest
from inference.vision.embedded import EmbeddedTagger
from inference.vision.multiplexer import VlmConfig, VlmMultiplexer
from inference.vision.tensorrt_backend import TensorRtConfig
from media.events import VisionEvent
from media.frames import LatestSlot, VideoItem
from media.gpu_frames import GpuFrame, GpuFrameQueue
from media.stage import Stage, StageContext
from media.stats import LatencyWindow

log = logging.getLogger(__name__)

BACKEND_NAMES: tuple[str, ...] = ("embedded", "vlm", "tensorrt")
_UNAVAILABLE_RETRY_SECONDS = 30.0


class VisionSettings(BaseModel):
    """Server-wide vision settings (defaults for stream params plus backend configuration)."""

    model_config = ConfigDict(extra="forbid")

    default_backend: str = "embedded"
    interval: float = Field(1.0, ge=0.05, le=3600)
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    embedded_workers: int = Field(1, ge=1, le=16)
    embedded_max_pending: int = Field(8, ge=1)
    vlm: VlmConfig | None = None
    tensorrt: TensorRtConfig | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> VisionSettings:
        """Read the documented environment variables (unset ones keep their defaults):

        VISION_BACKEND, VISION_INTERVAL, VISION_THRESHOLD, VISION_EMBEDDED_WORKERS;
        VISION_VLM_ENDPOINT (api_base_url), VISION_VLM_MODEL, VISION_VLM_API_KEY,
        VISION_VLM_TAGS (comma-separated), VISION_VLM_ENDPOINTS (JSON list of
        {base_url, api_key, name, weight, is_fallback, max_concurrent, timeout}),
        VISION_VLM_TIMEOUT, VISION_VLM_MAX_PIXELS; VISION_TENSORRT_ENGINE, VISION_TENSORRT_LABELS."""
        env = os.environ if environ is None else environ
        data: dict[str, Any] = {}
        for key, field_name in (
            ("VISION_BACKEND", "default_backend"),
            ("VISION_INTERVAL", "interval"),
            ("VISION_THRESHOLD", "threshold"),
            ("VISION_EMBEDDED_WORKERS", "embedded_workers"),
        ):
            if env.get(key):
                data[field_name] = env[key]
        vlm: dict[str, Any] = {}
        for key, field_name in (
            ("VISION_VLM_ENDPOINT", "api_base_url"),
            ("VISION_VLM_MODEL", "model_id"),
            ("VISION_VLM_API_KEY", "api_key"),
            ("VISION_VLM_TIMEOUT", "timeout"),
            ("VISION_VLM_MAX_PIXELS", "max_pixels"),
        ):
            if env.get(key):
                vlm[field_name] = env[key]
        if env.get("VISION_VLM_TAGS"):
            vlm["tag_list"] = [t.strip() for t in env["VISION_VLM_TAGS"].split(",") if t.strip()]
        if env.get("VISION_VLM_ENDPOINTS"):
            vlm["multiplexer_endpoints"] = json.loads(env["VISION_VLM_ENDPOINTS"])
        if vlm.get("api_base_url") or vlm.get("multiplexer_endpoints"):
            data["vlm"] = vlm
        if env.get("VISION_TENSORRT_ENGINE"):
            data["tensorrt"] = {"engine_path": env["VISION_TENSORRT_ENGINE"]}
            if env.get("VISION_TENSORRT_LABELS"):
                data["tensorrt"]["labels_path"] = env["VISION_TENSORRT_LABELS"]
        return cls.model_validate(data)


class VisionBackends:
    """The shared backend instances, built lazily on first use: one embedded tagger, one VLM
    multiplexer, one TensorRT engine for the whole process. `register` adds or replaces one (a
    custom backend, or a test's). A backend that cannot be built raises `BackendUnavailable`;
    the reason is remembered for 30 s so a missing GPU is not probed on every frame."""

    def __init__(self, settings: VisionSettings | None = None, backends: Mapping[str, VisionBackend] | None = None) -> None:
        self.settings = settings or VisionSettings()
        self._backends: dict[str, VisionBackend] = dict(backends or {})
        self._failures: dict[str, tuple[str, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def register(self, name: str, backend: VisionBackend) -> None:
        self._backends[name] = backend
        self._failures.pop(name, None)

    def names(self) -> list[str]:
        return list(dict.fromkeys([*BACKEND_NAMES, *self._backends]))

    def loaded(self, name: str) -> VisionBackend | None:
        return self._backends.get(name)

    async def get(self, name: str) -> VisionBackend:
        backend = self._backends.get(name)
        if backend is not None:
            return backend
        if name not in BACKEND_NAMES:
            raise BackendUnavailable(f"unknown vision backend {name!r}; known: {', '.join(self.names())}")
        failure = self._failures.get(name)
        if failure is not None and time.monotonic() - failure[1] < _UNAVAILABLE_RETRY_SECONDS:
            raise BackendUnavailable(failure[0])
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            backend = self._backends.get(name)
            if backend is not None:
                return backend
            try:
                backend = await self._build(name)
            except BackendUnavailable as exc:
                self._failures[name] = (str(exc), time.monotonic())
                log.warning("vision backend %s unavailable: %s", name, exc)
                raise
            self._failures.pop(name, None)
            self._backends[name] = backend
            log.info("vision backend %s ready (%s)", name, backend.model)
            return backend

    async def _build(self, name: str) -> VisionBackend:
        if name == "embedded":
            return EmbeddedTagger(workers=self.settings.embedded_workers, max_pending=self.settings.embedded_max_pending)
        if name == "vlm":
            if self.settings.vlm is None:
                raise BackendUnavailable("no VLM endpoint configured (set VISION_VLM_ENDPOINT or vision.vlm settings)")
            return VlmMultiplexer(self.settings.vlm)
        if self.settings.tensorrt is None:
            raise BackendUnavailable("no TensorRT engine configured (set VISION_TENSORRT_ENGINE)")
        from inference.vision.tensorrt_backend import TensorRtBackend

        # deserialising an engine takes a while: not on the loop
        return await asyncio.to_thread(TensorRtBackend, self.settings.tensorrt)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per backend: loaded?, and why not when it failed; for /health."""
        out: dict[str, dict[str, Any]] = {}
        for name in self.names():
            entry: dict[str, Any] = {"loaded": name in self._backends}
            if name in self._failures:
                entry["reason"] = self._failures[name][0]
            backend = self._backends.get(name)
            if backend is not None:
                entry["model"] = backend.model
                health = getattr(backend, "health", None)
                if callable(health):
                    entry.update(health())
            out[name] = entry
        return out

    def stats(self) -> dict[str, Any]:
        return {name: backend.stats() for name, backend in self._backends.items()}

    async def close(self) -> None:
        for backend in list(self._backends.values()):
            try:
                await backend.close()
            except Exception:
                log.exception("closing vision backend %s failed", backend.name)
        self._backends.clear()


class VisionParams(BaseModel):
    """One stream's vision params (validated; unknown keys ignored)."""

    model_config = ConfigDict(extra="ignore")

    enabled: bool = True
    interval: float = Field(1.0, ge=0.05, le=3600)
    backend: str = "embedded"
    tag_list: list[str] = Field(default_factory=list, max_length=256)
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    prompt: str | None = Field(None, max_length=4000)
    mode: Literal["tags", "description"] = "tags"

    @field_validator("tag_list", mode="before")
    @classmethod
    def _split_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @classmethod
    def from_stream_params(cls, params: Mapping[str, Any] | None, settings: VisionSettings | None = None) -> VisionParams:
        """Validate ``params["vision"]`` over the server defaults. Raises ValueError when invalid."""
        settings = settings or VisionSettings()
        vision = (params or {}).get("vision") or {}
        if not isinstance(vision, Mapping):
            raise ValueError("params.vision must be an object")
        data = {"interval": settings.interval, "backend": settings.default_backend, "threshold": settings.threshold}
        # a stream without a "vision" object has vision off (it can be turned on mid-stream)
        data["enabled"] = bool(vision)
        data.update(vision)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ValueError(f"invalid vision params: {exc.errors(include_url=False)}") from None

    def request(self, source: str | None) -> VisionRequest:
        return VisionRequest(
            mode=self.mode, tag_list=tuple(self.tag_list), threshold=self.threshold, prompt=self.prompt, source=source
        )


class VisionStage(Stage):
    """Samples the newest frame every `interval` seconds and publishes `VisionEvent`s.

    `params` is the stream's whole params object (only ``params["vision"]`` is read); when None,
    ``ctx.params`` is used at `start`. Raises ValueError on invalid vision params.

    `gpu_frames`: the stream's `media.gpu_frames.GpuFrameQueue`, when frames are uploaded to the
    GPU. A backend with ``accepts_gpu_frames = True`` (TensorRT) then gets the newest `GpuFrame`
    directly — no host-side RGB conversion; other backends keep the CPU path."""

    name = "vision"

    def __init__(
        self,
        backends: VisionBackends,
        params: Mapping[str, Any] | None = None,
        latency_window: int = 256,
        gpu_frames: GpuFrameQueue | None = None,
    ) -> None:
        self._backends = backends
        self._gpu_frames = gpu_frames
        self._explicit_params = params is not None
        self.params = VisionParams.from_stream_params(params, backends.settings)
        self._slot: LatestSlot[VideoItem] = LatestSlot()
        self._last_version = 0
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._failing = False
        self._sources_used: set[str] = set()
        self.latency = LatencyWindow(latency_window)
        self.frames_seen = 0
        self.samples = 0
        self.gpu_samples = 0  # samples taken from the GPU frame queue
        self.published = 0
        self.skipped_ticks = 0
        self.idle_ticks = 0
        self.errors = 0
        self.backend_busy = 0
        self.param_errors = 0
        self.last_error: str | None = None

    # -- Stage hooks -------------------------------------------------------------------------------

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        if not self._explicit_params and ctx.params:
            self.params = VisionParams.from_stream_params(ctx.params, self._backends.settings)
        self._wake = asyncio.Event()
        self._task = ctx.loop.create_task(self._run(), name=f"vision-{ctx.manifest_id}")

    def on_video(self, item: VideoItem) -> None:
        # decode thread: a reference swap, nothing else
        self.frames_seen += 1
        if self.params.enabled:
            self._slot.set(item)

    def update_params(self, params: dict[str, Any]) -> None:
        if "vision" not in (params or {}):
            return  # an update about something else leaves vision as it is (as captions do)
        try:
            new = VisionParams.from_stream_params(params, self._backends.settings)
        except ValueError as exc:
            self.param_errors += 1
            self._log().warning("ignoring invalid vision params: %s", exc)
            return
        self.params = new
        ctx = getattr(self, "ctx", None)
        if ctx is not None and self._wake is not None:
            try:
                ctx.loop.call_soon_threadsafe(self._wake.set)  # re-time the next tick now
            except RuntimeError:  # loop closed
                pass

    def stats(self) -> dict[str, Any]:
        return {
            "enabled": self.params.enabled,
            "backend": self.params.backend,
            "mode": self.params.mode,
            "interval": self.params.interval,
            "frames_seen": self.frames_seen,
            "samples": self.samples,
            "gpu_samples": self.gpu_samples,
            "published": self.published,
            "skipped_ticks": self.skipped_ticks,
            "idle_ticks": self.idle_ticks,
            "errors": self.errors,
            "backend_busy": self.backend_busy,
            "param_errors": self.param_errors,
            "in_flight": self._inflight is not None and not self._inflight.done(),
            "last_error": self.last_error,
            "latency_ms": self.latency.summary_ms(),
        }

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._inflight) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._task = self._inflight = None
        if getattr(self, "ctx", None) is None:
            return  # never started
        for name in self._sources_used:
            backend = self._backends.loaded(name)
            if backend is not None:
                backend.forget(self.ctx.manifest_id)

    # -- sampling ----------------------------------------------------------------------------------

    def _log(self) -> logging.Logger | logging.LoggerAdapter:
        ctx = getattr(self, "ctx", None)
        return ctx.log if ctx is not None and ctx.log is not None else log

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        next_tick = loop.time() + self.params.interval
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_tick - loop.time()))
                self._wake.clear()  # params changed: the new interval counts from now
                next_tick = min(next_tick, loop.time() + self.params.interval)
                continue
            except TimeoutError:
                pass
            now = loop.time()
            next_tick += self.params.interval
            if next_tick <= now:  # we fell behind (a stalled loop): don't burst to catch up
                next_tick = now + self.params.interval
            self._tick()

    def _tick(self) -> None:
        params = self.params
        if not params.enabled:
            return
        item, version = self._slot.get()
        if item is None or version == self._last_version:
            self.idle_ticks += 1  # no new frame since the last sample
            return
        if self._inflight is not None and not self._inflight.done():
            self.skipped_ticks += 1  # the model is still busy: skip, never queue
            return
        self._last_version = version
        self._inflight = asyncio.get_running_loop().create_task(self._sample(item, params))

    async def _sample(self, item: VideoItem, params: VisionParams) -> None:
        started = time.perf_counter()
        manifest_id = self.ctx.manifest_id
        try:
            backend = await self._backends.get(params.backend)
            self._sources_used.add(params.backend)
            gpu_frame = self._gpu_frame_for(backend)
            if gpu_frame is not None:
                image: Any = gpu_frame
                pts, frame_size = gpu_frame.media_time, (gpu_frame.width, gpu_frame.height)
            else:
                image = await asyncio.to_thread(item.frame.to_ndarray, format="rgb24")
                pts, frame_size = item.media_time, (int(image.shape[1]), int(image.shape[0]))
            self.samples += 1
            result = await backend.analyze(image, params.request(manifest_id))
        except asyncio.CancelledError:
            raise
        except BackendBusy as exc:
            self.backend_busy += 1
            self._log().debug("vision backend busy: %s", exc)
            return
        except BackendUnavailable as exc:
            self._failed(str(exc))
            return
        except Exception as exc:  # a broken frame or backend bug must not end sampling
            self._log().exception("vision sample failed")
            self._failed(f"{type(exc).__name__}: {exc}")
            return
        if result.error:
            self._failed(result.error)
            return
        latency = time.perf_counter() - started
        self.latency.add(latency)
        self.ctx.events.publish(
            VisionEvent(
                kind=params.mode,
                tags=result.tags,
                text=result.text,
                pts=pts,
                model=result.model or backend.model,
                latency_ms=round(latency * 1000.0, 1),
                frame_size=frame_size,
            )
        )
        self.published += 1
        if self._failing:
            self._failing = False
            self._report(None)

    def _gpu_frame_for(self, backend: VisionBackend) -> GpuFrame | None:
        if self._gpu_frames is None or not getattr(backend, "accepts_gpu_frames", False):
            return None
        frame = self._gpu_frames.latest()
        if frame is not None:
            self.gpu_samples += 1
        return frame

    def _failed(self, message: str) -> None:
        self.errors += 1
        self.last_error = message
        if not self._failing:  # report transitions only, not every failed tick
            self._failing = True
            self._log().warning("vision failing: %s", message)
            self._report(message)

    def _report(self, message: str | None) -> None:
        report = getattr(self.ctx, "report_error", None)
        if callable(report):
            try:
                report(message)
            except Exception:
                log.exception("report_error callback failed")
