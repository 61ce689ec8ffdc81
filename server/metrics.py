"""Prometheus figures. Per-stream numbers are read from the live streams at scrape time, so a
stopped stream's labels disappear with it (no unbounded label growth)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from media.manager import StreamManager

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StreamCollector(Collector):
    def __init__(self, manager: StreamManager, extra: list[Callable[[], Iterable]] | None = None) -> None:
        self.manager = manager
        self.extra = extra or []

    def collect(self):
        streams = self.manager.active()
        active = GaugeMetricFamily("streamlens_streams_active", "Streams running now")
        active.add_metric([], len(streams))
        yield active
        capacity = GaugeMetricFamily("streamlens_streams_capacity", "Streams the server accepts at once")
        capacity.add_metric([], self.manager.capacity)
        yield capacity
        frames = CounterMetricFamily(
            "streamlens_frames", "Video frames per stream", labels=["manifest_id", "direction"]
        )
        fps = GaugeMetricFamily("streamlens_fps", "Frames per second per stream", labels=["manifest_id", "direction"])
        state = GaugeMetricFamily(
            "streamlens_stream_state", "1 for the stream's current state", labels=["manifest_id", "state"]
        )
        events_dropped = CounterMetricFamily(
            "streamlens_events_dropped", "Events dropped by slow consumers", labels=["manifest_id"]
        )
        for s in streams:
            mid = s.manifest_id
            frames.add_metric([mid, "in"], s.frames_in)
            frames.add_metric([mid, "out"], s.frames_out)
            frames.add_metric([mid, "dropped"], s.frames_dropped)
            fps.add_metric([mid, "in"], s.in_meter.rate())
            fps.add_metric([mid, "out"], s.out_meter.rate())
            state.add_metric([mid, s.state.value], 1)
            events_dropped.add_metric([mid], s.events.dropped)
        yield frames
        yield fps
        yield state
        yield events_dropped
        for source in self.extra:
            yield from source()


class Metrics:
    def __init__(self, manager: StreamManager) -> None:
        self.registry = CollectorRegistry()
        self.collector = StreamCollector(manager)
        self.registry.register(self.collector)
        self.frame_latency = Histogram(
            "streamlens_frame_latency_seconds",
            "Decode-to-encoded latency of each video frame",
            buckets=(0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0),
            registry=self.registry,
        )
        self.streams_started = Counter("streamlens_streams_started", "Streams started", registry=self.registry)
        self.streams_rejected = Counter(
            "streamlens_streams_rejected",
            "Stream starts refused (capacity or bad input)",
            ["reason"],
            registry=self.registry,
        )

    def add_source(self, source: Callable[[], Iterable]) -> None:
        """Register a callable yielding extra metric families at scrape time."""
        self.collector.extra.append(source)

    def render(self) -> bytes:
        return generate_latest(self.registry)
