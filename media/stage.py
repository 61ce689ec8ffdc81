"""The contract between a stream and the AI stages that run beside its video.

`media` never imports a stage: the composition root (`StreamFactory` in server/pipeline.py) builds
stages from a stream's params and hands them to the `Stream`. A stage sees frames through two cheap hooks that
are called from the decode thread and must never block; heavy work happens in the stage's own
tasks or worker pools, and results go out as events on the stream's `EventBus`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from media.events import EventBus
from media.frames import AudioItem, VideoItem


@dataclass
class StageContext:
    manifest_id: str
    loop: asyncio.AbstractEventLoop
    events: EventBus
    params: dict[str, Any] = field(default_factory=dict)
    log: logging.LoggerAdapter[logging.Logger] | None = None
    # called by a stage when its model fails or recovers, so the stream can report
    # DEGRADED_INFERENCE; argument is an error message or None
    report_error: Any = None


class Stage:
    """Base class with no-op hooks; subclasses override what they need."""

    name = "stage"

    async def start(self, ctx: StageContext) -> None:
        self.ctx = ctx

    def on_video(self, item: VideoItem) -> None:
        """Called for every decoded video frame (decode thread). Keep a reference, never block."""

    def on_audio(self, item: AudioItem) -> None:
        """Called for every decoded audio frame (decode thread). Copy what you need, never block."""

    def update_params(self, params: dict[str, Any]) -> None:
        """New stream params (the whole params object); apply what concerns this stage."""

    def stats(self) -> dict[str, Any]:
        return {}

    async def stop(self) -> None:
        """Cancel every task and release every resource this stage holds."""
