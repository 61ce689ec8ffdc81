"""Wires the AI features into the app: translation, vision, GPU memory, (and ASR captions).

Each feature reads its own environment variables (documented in the README), adds its routes,
its stage provider for streams, its /health and /metrics figures, and closes on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from prometheus_client.core import GaugeMetricFamily

from inference.asr.model import AsrModelPool, AsrSettings, shared_pool
from inference.asr.stage import CaptionStage
from inference.gpu import GpuMemoryManager, GpuSettings
from inference.translate.service import TranslateSettings, TranslationService
from inference.vision.stage import VisionBackends, VisionParams, VisionSettings, VisionStage
from byoc.capabilities import CapabilityError
from inference.translate.base import TranslationError
from server.routes_translate import add_translate_routes, translate_capability
from server.routes_vision import DescribeError, add_vision_routes, describe_capability
from server.settings import Settings
from server.start_request import StreamSpec

log = logging.getLogger(__name__)

_ENV_NAME = re.compile(r"^([A-Z][A-Z0-9_]+)\b")

TRANSLATION_KEY = web.AppKey("translation", TranslationService)
VISION_KEY = web.AppKey("vision_backends", VisionBackends)
GPU_KEY = web.AppKey("gpu_memory", GpuMemoryManager)
ASR_KEY = web.AppKey("asr_pool", AsrModelPool)


def model_from_env(model: type[BaseModel], environ: Mapping[str, str] | None = None) -> Any:
    """Build a settings model whose field descriptions start with their env var name
    ("TRANSLATE_CACHE_SIZE: ..."); unset variables keep the defaults."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        match = _ENV_NAME.match(field.description or "")
        if match and env.get(match.group(1)) not in (None, ""):
            data[name] = env[match.group(1)]
    return model.model_validate(data)


def gpu_settings_from_env(environ: Mapping[str, str] | None = None) -> GpuSettings:
    env = os.environ if environ is None else environ
    data = {}
    for key, name in (("GPU_DEVICE_INDEX", "device_index"), ("GPU_MIN_FREE_MB", "min_free_mb"),
                      ("GPU_PRESSURE_FREE_MB", "pressure_free_mb"), ("GPU_WATCH_INTERVAL", "interval")):
        if env.get(key):
            data[name] = env[key]
    return GpuSettings.model_validate(data)


def install_translation(app: web.Application) -> TranslationService:
    service = TranslationService(model_from_env(TranslateSettings))
    app[TRANSLATION_KEY] = service
    add_translate_routes(app, service)
    app["health_details"]["translation"] = lambda: {"backend": service.backend, "model": service.model_info}

    async def close(_app: web.Application) -> None:
        await service.close()

    app.on_cleanup.append(close)

    async def translate(body: dict, _ctx) -> dict:
        try:
            return await translate_capability(body, service)
        except TranslationError as exc:
            raise CapabilityError(exc.http_status, exc.message) from None

    app["capabilities"].register("translate", translate, "Translate text: {text|texts, source_lang, target_lang}")
    return service


def install_vision(app: web.Application, settings: Settings) -> VisionBackends:
    vision_settings = VisionSettings.from_env()
    backends = VisionBackends(vision_settings)
    app[VISION_KEY] = backends
    add_vision_routes(app, backends)

    def provider(spec: StreamSpec) -> VisionStage:
        VisionParams.from_stream_params(spec.params, vision_settings)  # invalid params → ValueError → 400
        return VisionStage(backends)

    app["stream_factory"].stage_providers.append(provider)
    app["health_details"]["vision"] = backends.status

    async def close(_app: web.Application) -> None:
        await backends.close()

    app.on_cleanup.append(close)

    async def describe(body: dict, _ctx) -> dict:
        try:
            return await describe_capability(body, backends)
        except DescribeError as exc:
            raise CapabilityError(exc.status, exc.message) from None

    app["capabilities"].register("describe", describe,
                                 "Tag or describe an image: {image (base64/data URI), mode, tag_list, threshold}")
    return backends


def install_gpu(app: web.Application) -> GpuMemoryManager:
    gpu = GpuMemoryManager(gpu_settings_from_env())
    app[GPU_KEY] = gpu
    app["streams"].admission_checks.append(gpu.can_accept_stream)
    app["health_details"]["gpu"] = gpu.snapshot

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

    app["metrics"].add_source(gpu_metrics)
    watcher: dict[str, asyncio.Task] = {}

    async def start(_app: web.Application) -> None:
        if gpu.available:
            watcher["task"] = asyncio.create_task(gpu.run(gpu.settings.interval), name="gpu-memory-watch")

    async def stop(_app: web.Application) -> None:
        task = watcher.pop("task", None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        gpu.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return gpu


def install_asr(app: web.Application, settings: Settings, translation: TranslationService) -> AsrModelPool:
    """One shared speech model for every stream; each stream gets a CaptionStage that stays idle
    until its params carry a "captions" object."""
    asr_settings = model_from_env(AsrSettings)
    pool = shared_pool(asr_settings)
    app[ASR_KEY] = pool

    def provider(spec: StreamSpec) -> CaptionStage:
        return CaptionStage(pool, asr_settings, translate=translation.translate_for_captions)

    app["stream_factory"].stage_providers.append(provider)

    def probe() -> str:
        if pool.load_error is not None:
            return "ERROR"
        return "LOADING" if pool.loading else "OK"

    app["health_probes"].append(probe)
    app["health_details"]["asr"] = lambda: {
        "model": asr_settings.model, "loaded": pool.loaded, "loading": pool.loading, "load_error": pool.load_error}

    async def preload(_app: web.Application) -> None:
        if settings.asr_preload:
            pool.start_loading()  # in the pool's thread; /health says LOADING meanwhile

    app.on_startup.append(preload)
    return pool


def install_features(app: web.Application, settings: Settings) -> None:
    install_gpu(app)
    translation = install_translation(app)
    install_asr(app, settings, translation)
    install_vision(app, settings)
