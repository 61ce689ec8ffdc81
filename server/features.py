"""Wires the AI features into the app: translation, vision, GPU memory, (and ASR captions).

Each feature takes its section of the one settings tree (`settings.translate`, `.asr`, `.vision`,
`.gpu`, `.analysis`; docs/reference/settings.md), adds its routes, its stage provider for streams,
its /health and /metrics figures, and closes on shutdown. Services live under the keys of
server/keys.py; route modules only read them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily

from analysis.engine import AnalysisServices
from analysis.runner import JobRunner
from analysis.settings import AnalysisSettings
from byoc.capabilities import CAPABILITIES_KEY, CapabilityContext, CapabilityError
from httpapi.errors import status_of
from httpapi.outbound import OUTBOUND_POLICY_KEY
from inference.asr.metrics import asr_metrics
from inference.asr.model import AsrModelPool, shared_pool
from inference.asr.stage import CaptionParams, CaptionStage
from inference.gpu import GpuMemoryManager
from inference.translate.base import TranslationError
from inference.translate.service import TranslationService
from inference.vision.stage import VisionBackends, VisionParams, VisionSettings, VisionStage
from media.manager import STREAMS_KEY
from media.spec import StreamSpec
from server.keys import (
    ASR_KEY,
    GPU_KEY,
    HEALTH_DETAILS_KEY,
    HEALTH_PROBES_KEY,
    METRICS_KEY,
    STREAM_SERVICE_KEY,
    TRANSLATION_KEY,
    VISION_KEY,
)
from server.routes_analysis import add_analysis_routes, analyze_capability, inference_capability
from server.routes_hls import install_hls
from server.routes_translate import add_translate_routes, translate_capability
from server.routes_vision import DescribeError, add_vision_routes, describe_capability
from server.rtmp_service import install_rtmp
from server.settings import Settings

log = logging.getLogger(__name__)


def install_translation(app: web.Application, settings: Settings) -> TranslationService:
    service = TranslationService(settings.translate, ssl_for=app[OUTBOUND_POLICY_KEY].tls.ssl_for)
    app[TRANSLATION_KEY] = service
    add_translate_routes(app, service)
    app[HEALTH_DETAILS_KEY]["translation"] = lambda: {"backend": service.backend, "model": service.model_info}

    async def close(_app: web.Application) -> None:
        await service.close()

    app.on_cleanup.append(close)

    async def translate(body: dict, _ctx) -> dict:
        try:
            return await translate_capability(body, service)
        except TranslationError as exc:
            raise CapabilityError(status_of(exc), exc.message) from None

    app[CAPABILITIES_KEY].register("translate", translate, "Translate text: {text|texts, source_lang, target_lang}")
    return service


def check_vision_block(block: object, settings: VisionSettings) -> VisionParams:
    """`params.vision` over the server's defaults, as the stage reads it; a ValidationError names the field."""
    if not isinstance(block, Mapping):
        raise ValueError("must be an object")
    defaults = {"interval": settings.interval, "backend": settings.default_backend, "threshold": settings.threshold}
    return VisionParams.model_validate({**defaults, "enabled": bool(block), **block})


def install_vision(app: web.Application, settings: Settings) -> VisionBackends:
    vision_settings = settings.vision
    backends = VisionBackends(vision_settings, ssl_for=app[OUTBOUND_POLICY_KEY].tls.ssl_for)
    app[VISION_KEY] = backends
    add_vision_routes(app, backends)

    def provider(spec: StreamSpec) -> VisionStage:
        return VisionStage(backends)

    streams = app[STREAM_SERVICE_KEY]
    streams.factory.stage_providers.append(provider)
    # an invalid `vision` block is a 400 at start and on every update (server/stream_service.py)
    streams.params.add("vision", lambda block: check_vision_block(block, vision_settings))
    app[HEALTH_DETAILS_KEY]["vision"] = backends.status

    async def close(_app: web.Application) -> None:
        await backends.close()

    app.on_cleanup.append(close)

    async def describe(body: dict, _ctx) -> dict:
        try:
            return await describe_capability(body, backends)
        except DescribeError as exc:
            raise CapabilityError(exc.status, exc.message) from None

    app[CAPABILITIES_KEY].register(
        "describe", describe, "Tag or describe an image: {image (base64/data URI), mode, tag_list, threshold}"
    )
    return backends


def install_gpu(app: web.Application, settings: Settings) -> GpuMemoryManager:
    gpu = GpuMemoryManager(settings.gpu)
    app[GPU_KEY] = gpu
    app[STREAMS_KEY].admission_checks.append(gpu.can_accept_stream)
    app[HEALTH_DETAILS_KEY]["gpu"] = gpu.snapshot

    def gpu_metrics():
        snap = gpu.snapshot()
        available = GaugeMetricFamily("streamlens_gpu_available", "1 when a CUDA device is usable")
        available.add_metric([], 1 if snap.get("available") else 0)
        yield available
        if snap.get("available"):
            for key in ("free_mb", "total_mb", "used_mb"):
                if key in snap:
                    family = GaugeMetricFamily(f"streamlens_gpu_{key}", f"GPU memory {key.replace('_mb', '')} (MiB)")
                    family.add_metric([], float(snap[key]))
                    yield family

    app[METRICS_KEY].add_source(gpu_metrics)
    watcher: dict[str, asyncio.Task] = {}

    async def start(_app: web.Application) -> None:
        track_gpu_models(app, gpu)
        if gpu.available:
            watcher["task"] = asyncio.create_task(gpu.run(gpu.settings.watch_interval), name="gpu-memory-watch")

    async def stop(_app: web.Application) -> None:
        task = watcher.pop("task", None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        gpu.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return gpu


def track_gpu_models(app: web.Application, gpu: GpuMemoryManager) -> None:
    """Tell the memory manager about the models this server really loads on the GPU (at startup,
    once the features are installed): the TensorRT vision engine, unloaded when idle under
    pressure and rebuilt on its next use; the speech model pool, reported but pinned (every live
    caption stream shares it, and it offers no unload)."""
    backends = app.get(VISION_KEY)
    if backends is not None:

        def tensorrt_idle() -> bool:
            engine = backends.loaded("tensorrt")
            return engine is None or getattr(engine, "idle", True)

        gpu.track_model(
            "vision:tensorrt",
            loaded=lambda: backends.loaded("tensorrt") is not None,
            unload=lambda: backends.unload("tensorrt"),
            is_idle=tensorrt_idle,
        )
    pool = app.get(ASR_KEY)
    if pool is not None:
        gpu.track_model(
            "asr",
            loaded=lambda: pool.loaded and pool.device == "cuda",
            pinned_reason="shared by every live caption stream",
        )


def install_asr(app: web.Application, settings: Settings, translation: TranslationService) -> AsrModelPool:
    """One shared speech model for every stream; each stream gets a CaptionStage that stays idle
    until its params carry a "captions" object."""
    asr_settings = settings.asr
    pool = shared_pool(asr_settings)
    app[ASR_KEY] = pool
    app[METRICS_KEY].add_source(lambda: asr_metrics(pool))

    def provider(spec: StreamSpec) -> CaptionStage:
        return CaptionStage(pool, asr_settings, translate=translation.translate_for_captions)

    streams = app[STREAM_SERVICE_KEY]
    streams.factory.stage_providers.append(provider)
    # an invalid `captions` block is a 400 at start and on every update, never silently ignored
    streams.params.add("captions", CaptionParams.model_validate)

    def probe() -> str:
        if pool.load_error is not None:
            return "ERROR"
        return "LOADING" if pool.loading else "OK"

    app[HEALTH_PROBES_KEY].append(probe)
    app[HEALTH_DETAILS_KEY]["asr"] = lambda: {
        "model": asr_settings.model,
        "loaded": pool.loaded,
        "loading": pool.loading,
        "load_error": pool.load_error,
    }

    async def preload(_app: web.Application) -> None:
        if settings.asr_preload:
            pool.start_loading()  # in the pool's thread; /health says LOADING meanwhile

    app.on_startup.append(preload)
    return pool


def install_analysis(app: web.Application, config: AnalysisSettings) -> JobRunner:
    """Jobs, tags and transcripts of recorded video (routes: server/routes_analysis.py); after the
    vision, ASR and translation features, whose services it shares."""
    services = AnalysisServices(
        vision=app[VISION_KEY],
        asr=app.get(ASR_KEY),
        translation=app.get(TRANSLATION_KEY),
        max_duration=config.max_duration,
        max_samples=config.max_samples,
        vlm_concurrency=config.vlm_concurrency,
        transcript_window=config.transcript_window,
        face_max_side=config.face_max_side,
        input_formats=config.input_formats,
        image_patch_size=config.image_patch_size,
    )
    runner = JobRunner(config, services, outbound_policy=app[OUTBOUND_POLICY_KEY])
    add_analysis_routes(app, runner)
    app[HEALTH_DETAILS_KEY]["analysis"] = runner.stats

    async def start(_app: web.Application) -> None:
        await runner.start()

    async def stop(_app: web.Application) -> None:
        await runner.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)

    async def analyze(body: dict, ctx: CapabilityContext) -> dict | web.Response:
        return await analyze_capability(runner, body, ctx)

    async def inference(body: dict, ctx: CapabilityContext) -> dict | web.Response:
        return await inference_capability(runner, body, ctx)

    app[CAPABILITIES_KEY].register(
        "analyze",
        analyze,
        "Timed tags / transcript of a video: {video_url, tag_list, frame_interval, "
        "threshold, backend, transcript, translate_to}",
    )
    app[CAPABILITIES_KEY].register(
        "video-inference",
        inference,
        "A VLM's answer about a video: {video_url, prompt, video_params, generation_params}",
    )
    return runner


def install_features(app: web.Application, settings: Settings) -> None:
    install_gpu(app, settings)
    translation = install_translation(app, settings)
    install_asr(app, settings, translation)
    install_vision(app, settings)
    install_analysis(app, settings.analysis)  # recorded video: jobs, tags, transcripts
    install_hls(app, settings)  # the `{"type": "hls"}` output and /stream/{id}/hls/ (server/routes_hls.py)
    install_rtmp(app, settings)  # RTMP ingest listener (RTMP_PORT), started and stopped with the app
