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
import time
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from inference.vision.base import BackendBusy, BackendUnavailable, VisionBackend, VisionRequest
from inference.vision.embedded import EmbeddedTagger
from inference.vision.multiplexer import VlmConfig, VlmMultiplexer
from inference.vision.tensorrt_backend import TensorRtConfig
from media import gpu_frames as gpu_upload
from media.events import VisionEvent
from media.frames import LatestSlot, VideoItem, rgb_array
from media.gpu_frames import GpuFrame, GpuFrameQueue
from media.stage import Stage, StageContext
from media.stats import LatencyWindow

log = logging.getLogger(__name__)

BACKEND_NAMES: tuple[str, ...] = ("embedded", "vlm", "tensorrt")
_UNAVAILABLE_RETRY_SECONDS = 30.0


class VisionSettings(BaseSettings):
    """Server-wide vision settings (defaults for stream params plus backend configuration), read
    from the environment: VISION_BACKEND, VISION_INTERVAL, VISION_THRESHOLD,
    VISION_EMBEDDED_WORKERS, VISION_EMBEDDED_MAX_PENDING; VISION_VLM_ENDPOINT (api_base_url),
    VISION_VLM_MODEL, VISION_VLM_API_KEY, VISION_VLM_TAGS (comma-separated), VISION_VLM_ENDPOINTS
    (JSON list of {base_url, api_key, name, weight, is_fallback, max_concurrent, timeout}),
    VISION_VLM_TIMEOUT, VISION_VLM_MAX_PIXELS; VISION_TENSORRT_ENGINE, VISION_TENSORRT_LABELS.
    `vlm` / `tensorrt` may also be given whole (code and tests); the flat VISION_VLM_* and
    VISION_TENSORRT_* values build them when they are not."""

    # extra="ignore": a shared .env file holds every section's variables
    model_config = SettingsConfigDict(env_prefix="VISION_", extra="ignore", populate_by_name=True)

    default_backend: str = Field(
        "embedded",
        validation_alias=AliasChoices("VISION_BACKEND", "default_backend"),
        description="backend of streams whose params name none",
    )
    interval: float = Field(1.0, ge=0.05, le=3600, description="seconds between sampled frames")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="minimum tag confidence")
    embedded_workers: int = Field(1, ge=1, le=16, description="threads of the embedded CPU tagger")
    embedded_max_pending: int = Field(8, ge=1, description="frames waiting for the embedded tagger")
    vlm_endpoint: str | None = Field(None, description="OpenAI-compatible VLM base URL")
    vlm_model: str | None = Field(None, description="VLM model id")
    vlm_api_key: SecretStr | None = Field(None, description="VLM API key")
    vlm_tags: str | None = Field(None, description="comma-separated default tag list")
    vlm_endpoints: str | None = Field(None, description="JSON list of VLM endpoints for the multiplexer")
    vlm_timeout: float | None = Field(None, gt=0, description="seconds per VLM call")
    vlm_max_pixels: int | None = Field(None, ge=64 * 64, description="pixel budget per frame sent to the VLM")
    tensorrt_engine: str | None = Field(None, description="serialized TensorRT engine file")
    tensorrt_labels: str | None = Field(None, description="labels file, one class per line")
    vlm: VlmConfig | None = None
    tensorrt: TensorRtConfig | None = None

    @model_validator(mode="after")
    def _backend_configs(self) -> VisionSettings:
        if self.vlm is None and (self.vlm_endpoint or self.vlm_endpoints):
            vlm: dict[str, Any] = {"api_base_url": self.vlm_endpoint}
            for field_name, value in (
                ("model_id", self.vlm_model),
                ("api_key", self.vlm_api_key.get_secret_value() if self.vlm_api_key else None),
                ("timeout", self.vlm_timeout),
                ("max_pixels", self.vlm_max_pixels),
            ):
                if value is not None:
                    vlm[field_name] = value
            if self.vlm_tags:
                vlm["tag_list"] = [t.strip() for t in self.vlm_tags.split(",") if t.strip()]
            if self.vlm_endpoints:
                vlm["multiplexer_endpoints"] = json.loads(self.vlm_endpoints)
            self.vlm = VlmConfig.model_validate(vlm)
        if self.tensorrt is None and self.tensorrt_engine:
            trt: dict[str, Any] = {"engine_path": self.tensorrt_engine}
            if self.tensorrt_labels:
                trt["labels_path"] = self.tensorrt_labels
            self.tensorrt = TensorRtConfig.model_validate(trt)
        return self


class VisionBackends:
    """The shared backend instances, built lazily on first use: one embedded tagger, one VLM
    multiplexer, one TensorRT engine for the whole process. `register` adds or replaces one (a
    custom backend, or a test's). A backend that cannot be built raises `BackendUnavailable`;
    the reason is remembered for 30 s so a missing GPU is not probed on every frame."""

    def __init__(
        self,
        settings: VisionSettings | None = None,
        backends: Mapping[str, VisionBackend] | None = None,
        ssl_for: Any = None,
    ) -> None:
        self.settings = settings or VisionSettings()
        self.ssl_for = ssl_for  # the server's TlsPolicy.ssl_for, for the VLM endpoints
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
            return EmbeddedTagger(
                workers=self.settings.embedded_workers, max_pending=self.settings.embedded_max_pending
            )
        if name == "vlm":
            if self.settings.vlm is None:
                raise BackendUnavailable("no VLM endpoint configured (set VISION_VLM_ENDPOINT or vision.vlm settings)")
            return VlmMultiplexer(self.settings.vlm, ssl_for=self.ssl_for)
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

    async def unload(self, name: str) -> bool:
        """Close one loaded backend and forget it (it is rebuilt on its next use); for the GPU
        memory manager. False when it was not loaded."""
        backend = self._backends.pop(name, None)
        if backend is None:
            return False
        await backend.close()
        log.info("vision backend %s unloaded", name)
        return True

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
    def from_stream_params(
        cls, params: Mapping[str, Any] | None, settings: VisionSettings | None = None
    ) -> VisionParams:
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

    GPU frame path: while the stream's backend takes GPU frames (``accepts_gpu_frames = True``,
    TensorRT) and CUDA is present, the stage runs a `media.gpu_frames.GpuFrameUploader`: the decode
    thread offers each frame (a reference swap into a two-slot inbox), the uploader's thread copies
    it to the device and converts it to RGB there, and the sampler hands the newest `GpuFrame` from
    the stage's `GpuFrameQueue` to the backend — no host-side RGB conversion. Other backends, and
    machines without CUDA, keep the CPU path. `gpu_frames` injects a queue someone else fills."""

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
        self._uploader: Any = None  # media.gpu_frames.GpuFrameUploader while the GPU path is on
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
        self._update_gpu_path()

    def on_video(self, item: VideoItem) -> None:
        # decode thread: a reference swap, nothing else (the uploader's offer is one too)
        self.frames_seen += 1
        if self.params.enabled:
            self._slot.set(item)
            uploader = self._uploader
            if uploader is not None:
                uploader.offer(item)

    def _wants_gpu_frames(self) -> bool:
        if not self.params.enabled or self.params.backend != "tensorrt":
            return False
        return gpu_upload.available()

    def _update_gpu_path(self) -> None:
        """Start the frame uploader when the TensorRT path is on and CUDA is present; stop it when
        the params move away from it."""
        wanted = self._wants_gpu_frames()
        if wanted and self._uploader is None:
            queue = self._gpu_frames if self._gpu_frames is not None else gpu_upload.GpuFrameQueue(maxsize=2)
            device = self._backends.settings.tensorrt.device_index if self._backends.settings.tensorrt else 0
            try:
                uploader = gpu_upload.GpuFrameUploader(queue, device_index=device)
            except Exception as exc:  # CUDA present but unusable: the CPU path still works
                self._log().warning("GPU frame upload unavailable, vision uses CPU frames: %s", exc)
                return
            self._gpu_frames = queue
            uploader.start()
            self._uploader = uploader
            self._log().info("vision takes frames through the GPU frame queue (%s)", uploader.device)
        elif not wanted and self._uploader is not None:
            self._stop_uploader()

    def _stop_uploader(self) -> None:
        uploader, self._uploader = self._uploader, None
        if uploader is not None:
            uploader.stop()

    def update_params(self, params: dict[str, Any]) -> None:
        # the stream hands every stage its whole merged params: no "vision" key means the client
        # removed it (null in a merge patch), and vision goes back to its default (off)
        try:
            new = VisionParams.from_stream_params(params, self._backends.settings)
        except ValueError as exc:
            self.param_errors += 1
            self._log().warning("ignoring invalid vision params: %s", exc)
            return
        self.params = new
        ctx = getattr(self, "ctx", None)
        if ctx is not None:
            self._update_gpu_path()
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
            "gpu_upload": self._uploader.stats() if self._uploader is not None else None,
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
        if self._uploader is not None:
            await asyncio.to_thread(self._stop_uploader)
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
                image = await asyncio.to_thread(rgb_array, item.frame)
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
