"""Every service the features put on the app, under one typed key each (one home: routes and
installers import their keys from here, never from each other)."""

from __future__ import annotations

from aiohttp import web

from analysis.runner import JobRunner
from inference.asr.model import AsrModelPool
from inference.gpu import GpuMemoryManager
from inference.translate.service import TranslationService
from inference.vision.stage import VisionBackends
from server.stream_service import StreamService

TRANSLATION_KEY = web.AppKey("translation", TranslationService)
VISION_KEY = web.AppKey("vision_backends", VisionBackends)
GPU_KEY = web.AppKey("gpu_memory", GpuMemoryManager)
ASR_KEY = web.AppKey("asr_pool", AsrModelPool)
RUNNER_KEY = web.AppKey("analysis_runner", JobRunner)
# stream start/stop (server/stream_service.py): routes, WebRTC, byoc and ingests start streams here
STREAM_SERVICE_KEY = web.AppKey("stream_service", StreamService)
