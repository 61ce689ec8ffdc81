"""The Livepeer side channels of one stream: events (status/trace/error), control (params in) and
data (JSON lines out). Attached by a stream start hook when the start request named their URLs,
closed by the stream's stop callback — nothing outlives the stream.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from byoc.control_channel import ControlReader
from byoc.data_channel import DataPublisher
from byoc.events_channel import EventsReporter
from byoc.params import ParamsApplier
from byoc.status import StreamStatusTracker
from httpapi.outbound import OutboundPolicy
from media.events import StatusEvent
from media.spec import StreamSpec

log = logging.getLogger(__name__)


@dataclass
class ChannelConfig:
    pipeline: str = "streamlens"
    events_interval: float = 10.0
    error_min_interval: float = 1.0
    data_flush_interval: float = 0.333
    data_keepalive_interval: float = 25.0
    # ai-runner stops a stream when its control loop ends (the orchestrator closed the channel)
    stop_on_control_end: bool = True
    close_timeout: float = 5.0
    # which addresses the channels may contact, and TLS (None: httpapi.outbound's built-in policy)
    policy: OutboundPolicy | None = None


class StreamChannels:
    def __init__(
        self,
        stream: Any,
        *,
        control_url: str | None,
        events_url: str | None,
        data_url: str | None,
        config: ChannelConfig,
    ) -> None:
        self.stream = stream
        self.config = config
        self.label = stream.manifest_id
        self.received_at = time.time()
        self.tracker = StreamStatusTracker(stream, config.pipeline)
        self.applier = ParamsApplier(stream.update_params, stream.report_error, self.label)
        self.events = (
            EventsReporter(
                events_url,
                stream,
                self.tracker,
                interval=config.events_interval,
                error_min_interval=config.error_min_interval,
                policy=config.policy,
            )
            if events_url
            else None
        )
        self.control = (
            ControlReader(control_url, self.label, self.applier, on_end=self._control_ended, policy=config.policy)
            if control_url
            else None
        )
        self.data = (
            DataPublisher(
                data_url,
                stream,
                flush_interval=config.data_flush_interval,
                keepalive_interval=config.data_keepalive_interval,
                policy=config.policy,
            )
            if data_url
            else None
        )
        self._closed = False

    def attach(self) -> None:
        """Hook into the stream and start the channel tasks (on the event loop, before the stream starts)."""
        stream = self.stream
        stream.add_hook("params", self._on_params)
        stream.add_hook("first_input_segment", self._on_first_input)
        stream.add_hook("first_output_segment", self._on_first_output)
        stream.on_stop(self.close)
        self.applier.start()
        if self.events is not None:
            self.events.start()
            self.events.trace("runner_receive_stream_request", self.received_at)
        if self.data is not None:
            self.data.start()
        if self.control is not None:
            self.control.start()

    # -- stream hooks (event loop) --------------------------------------------------------------
    def _on_params(self, params: dict[str, Any]) -> None:
        self.tracker.on_params(params)
        # a line on the data channel (and any other event consumer) saying the params changed
        self.stream.events.publish(
            StatusEvent(
                state=self.stream.state.value,
                detail={"reason": "params_updated", "params_hash": self.tracker.last_params_hash},
            )
        )

    def _on_first_input(self, seq: int) -> None:
        if self.events is not None:
            self.events.trace("runner_receive_first_ingest_segment")

    def _on_first_output(self, seq: int) -> None:
        if self.events is not None:
            self.events.trace("runner_send_first_processed_segment")

    def _control_ended(self, reason: str) -> None:
        if self.config.stop_on_control_end and self.stream.active:
            self.stream.request_stop(f"control channel ended: {reason}")

    # -- stop -----------------------------------------------------------------------------------
    async def close(self, _stream: Any = None) -> None:
        if self._closed:
            return
        self._closed = True
        if self.control is not None:
            await self.control.close()
        await self.applier.close()
        if self.data is not None:
            await self.data.close(timeout=self.config.close_timeout)
        if self.events is not None:
            await self.events.close(final_status=True, timeout=self.config.close_timeout)
        log.info("[%s] livepeer channels closed", self.label)

    def stats(self) -> dict[str, Any]:
        return {
            "events": self.events.stats() if self.events else None,
            "control": self.control.stats() if self.control else None,
            "data": self.data.stats() if self.data else None,
        }


def spec_channel_urls(spec: StreamSpec) -> tuple[str | None, str | None, str | None]:
    """(control_url, events_url, data_url) of a start spec."""
    return spec.control_url, spec.events_url, spec.data_url


class ChannelRegistry:
    """The channels of running streams by manifest id; an entry leaves when its stream stops, so
    the registry never holds more than the server's stream capacity."""

    def __init__(self, config: ChannelConfig) -> None:
        self.config = config
        self._by_id: dict[str, StreamChannels] = {}

    def on_stream_built(self, stream: Any, spec: StreamSpec) -> None:
        """A stream start hook (the stream service's): attach channels when the start named any of their URLs."""
        control_url, events_url, data_url = spec_channel_urls(spec)
        if not (control_url or events_url or data_url):
            return
        channels = StreamChannels(
            stream, control_url=control_url, events_url=events_url, data_url=data_url, config=self.config
        )
        self._by_id[stream.manifest_id] = channels
        stream.on_stop(self._forget)
        channels.attach()

    def _forget(self, stream: Any) -> None:
        if self._by_id.get(stream.manifest_id) is not None and self._by_id[stream.manifest_id].stream is stream:
            del self._by_id[stream.manifest_id]

    def get(self, manifest_id: str) -> StreamChannels | None:
        return self._by_id.get(manifest_id)

    def items(self) -> list[tuple[str, StreamChannels]]:
        return list(self._by_id.items())

    def __len__(self) -> int:
        return len(self._by_id)
