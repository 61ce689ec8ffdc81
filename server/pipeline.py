"""The composition root of a stream: picks its source, sinks and AI stages from its spec and params.

`media` never imports a stage; this module is where stages are built and handed to a `Stream`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from httpapi.outbound import OutboundPolicy
from media.encode import EncoderSettings
from media.endpoints import MediaSink, MediaSource
from media.outputs.base import OutputBuilder
from media.outputs.rtmp import RtmpOutput
from media.outputs.runner import OutputsRunner
from media.outputs.spec import check_outputs_block
from media.spec import StreamSpec
from media.stage import Stage
from media.stream import Stream, StreamConfig, StreamThresholds
from media.trickle_io import TrickleSink, TrickleSource
from server.settings import Settings

# A stage provider builds a stage for a stream (or returns None when it does not apply).
StageProvider = Callable[[StreamSpec], Stage | None]


class StreamFactory:
    def __init__(
        self,
        settings: Settings,
        on_frame_latency: Callable[[float], None] | None = None,
        outbound: OutboundPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.on_frame_latency = on_frame_latency
        # caller-given trickle URLs connect only through the outbound policy (checked at connect time)
        self.outbound = outbound or OutboundPolicy.from_settings(settings)
        self.stage_providers: list[StageProvider] = []
        # `params.outputs` entry type → its output class/factory; a feature adds its own (the HLS
        # routes add "hls"); a type with no builder is refused (400) at start and on update
        self.output_builders: dict[str, OutputBuilder] = {"rtmp": RtmpOutput}

    def check_outputs(self, block: object) -> None:
        """The `params.outputs` section check (server/stream_service.py's ParamsValidator)."""
        check_outputs_block(block, self.outbound, self.output_builders)

    def encoder_settings(self) -> EncoderSettings:
        s = self.settings
        return EncoderSettings(
            preset=s.encoder_preset, tune=s.encoder_tune, crf=s.encoder_crf, gop_seconds=s.gop_seconds
        )

    def stream_config(self, video_queue_size: int | None = None) -> StreamConfig:
        s = self.settings
        return StreamConfig(
            video_queue_size=video_queue_size or s.video_queue_size,
            thresholds=StreamThresholds(
                input_timeout=s.input_timeout, output_stall=s.output_stall_timeout, min_input_fps=s.min_input_fps
            ),
            debug_frame_delay=s.debug_frame_delay_ms / 1000.0,
        )

    def build_stages(self, spec: StreamSpec) -> list[Stage]:
        stages = []
        for provider in self.stage_providers:
            stage = provider(spec)
            if stage is not None:
                stages.append(stage)
        return stages

    def output_size(self, spec: StreamSpec) -> tuple[int, int] | None:
        if "width" in spec.params and "height" in spec.params:
            return int(spec.params["width"]), int(spec.params["height"])
        return None

    def build(
        self,
        spec: StreamSpec,
        source: MediaSource | None = None,
        sinks: list[MediaSink] | None = None,
        video_queue_size: int | None = None,
    ) -> Stream:
        """A stream for `spec`: trickle in/out from its URLs unless a source/sinks are given (WebRTC).
        `video_queue_size` overrides the setting (WebRTC keeps only a few frames: a live peer must
        never wait behind stale ones)."""
        label = spec.manifest_id
        if source is None and spec.subscribe_url:
            source = TrickleSource(spec.subscribe_url, label, policy=self.outbound)
        if sinks is None:
            sinks = []
            if spec.publish_url:
                sinks.append(
                    TrickleSink(
                        spec.publish_url,
                        label,
                        self.encoder_settings(),
                        size=self.output_size(spec),
                        policy=self.outbound,
                    )
                )
        # every stream gets an outputs runner, so `params.outputs` can be added by a later update
        outputs = OutputsRunner(
            spec.manifest_id, spec.params, self.outbound, self.encoder_settings(), self.output_builders
        )
        return Stream(
            spec.manifest_id,
            source=source,
            sinks=[*sinks, outputs],
            stages=self.build_stages(spec),
            params=spec.params,
            loop=asyncio.get_running_loop(),
            config=self.stream_config(video_queue_size),
            metadata=spec.metadata(),
            on_frame_latency=self.on_frame_latency,
        )
