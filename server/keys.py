"""Every service the composition root and the features put on the app, under one typed key each
(one home: routes and installers import their keys from here, never from each other).

A key that a module imported here must read lives beside its type instead, so there is no import
circle: `SETTINGS_KEY` (server/settings.py), `STREAMS_KEY` (media/manager.py), `WEBRTC_KEY`
(server/webrtc_service.py); byoc, which imports no `server` module, keeps `LIVEPEER_KEY`
(byoc/service.py) and `CAPABILITIES_KEY` (byoc/capabilities.py); httpapi keeps its own
(`REGISTRY_KEY`, `OUTBOUND_POLICY_KEY`, `MAX_BODY_BYTES_KEY`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from analysis.runner import JobRunner
from inference.asr.model import AsrModelPool
from inference.gpu import GpuMemoryManager
from inference.translate.service import TranslationService
from inference.vision.stage import VisionBackends
from server.metrics import Metrics
from server.stream_service import StreamService
from trickle.server import TrickleServer

TRANSLATION_KEY = web.AppKey("translation", TranslationService)
VISION_KEY = web.AppKey("vision_backends", VisionBackends)
GPU_KEY = web.AppKey("gpu_memory", GpuMemoryManager)
ASR_KEY = web.AppKey("asr_pool", AsrModelPool)
RUNNER_KEY = web.AppKey("analysis_runner", JobRunner)
# stream start/stop (server/stream_service.py): routes, WebRTC, byoc and ingests start streams here
STREAM_SERVICE_KEY = web.AppKey("stream_service", StreamService)
METRICS_KEY = web.AppKey("metrics", Metrics)
# the built-in trickle server (trickle/server.py)
TRICKLE_KEY = web.AppKey("trickle", TrickleServer)
# /health: probes return "OK" | "LOADING" | "ERROR"; details are extra sections of the body
HEALTH_PROBES_KEY: web.AppKey[list[Callable[[], str]]] = web.AppKey("health_probes")
HEALTH_DETAILS_KEY: web.AppKey[dict[str, Callable[[], Any]]] = web.AppKey("health_details")
