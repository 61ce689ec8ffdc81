"""Prometheus figures of the built-in trickle server, read from `TrickleServer.stats()` at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# stats() counter → (metric name, help)
COUNTERS = {
    "rejected_budget": ("streamlens_trickle_rejected_budget", "Segment writes refused: memory budget full (503)"),
    "segments_evicted_budget": (
        "streamlens_trickle_segments_evicted_budget",
        "Segments given up early to stay under TRICKLE_MAX_TOTAL_BYTES",
    ),
    "post_body_timeouts": ("streamlens_trickle_post_body_timeouts", "Segment POST bodies closed after stalling (408)"),
    "rejected_subscribers_channel": (
        "streamlens_trickle_rejected_subscribers_channel",
        "Reads refused: the channel's reader cap (503)",
    ),
    "rejected_subscribers_total": (
        "streamlens_trickle_rejected_subscribers_server",
        "Reads refused: the server's reader cap (503)",
    ),
    "rejected_oversize": ("streamlens_trickle_rejected_oversize", "Segments over TRICKLE_MAX_SEGMENT_BYTES (413)"),
    "rejected_channel_limit": (
        "streamlens_trickle_rejected_channel_limit",
        "Channels refused: TRICKLE_MAX_CHANNELS reached (503)",
    ),
    "segments_published": ("streamlens_trickle_segments_published", "Segments published to the built-in server"),
    "bytes_published": ("streamlens_trickle_bytes_published", "Bytes published to the built-in server"),
}
GAUGES = {
    "bytes_held": ("streamlens_trickle_bytes_held", "Segment bytes held across all channels"),
    "max_total_bytes": ("streamlens_trickle_max_total_bytes", "TRICKLE_MAX_TOTAL_BYTES"),
    "channels": ("streamlens_trickle_channels", "Channels open"),
    "subscribers": ("streamlens_trickle_subscribers", "Reads being served"),
}


def trickle_metrics(trickle: Any) -> Iterator:
    """A `Metrics.add_source` callable's body: `metrics.add_source(lambda: trickle_metrics(trickle))`."""
    stats = trickle.stats()
    for key, (name, doc) in COUNTERS.items():
        counter = CounterMetricFamily(name, doc)
        counter.add_metric([], stats.get(key, 0))
        yield counter
    for key, (name, doc) in GAUGES.items():
        gauge = GaugeMetricFamily(name, doc)
        gauge.add_metric([], stats.get(key, 0))
        yield gauge
