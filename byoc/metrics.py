"""Prometheus figures of the Livepeer layer, read at scrape time (a stopped stream's labels go
with it, so label sets stay bounded by the stream capacity and the capability registry)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

REGISTRATION_STATES = ("idle", "registering", "registered", "retrying", "stopped")


class CapabilityCounter:
    """Batch requests by (capability, status). Unknown names are counted as one label, so a
    client cannot grow the label set by inventing paths."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def add(self, capability: str, status: int, known: bool) -> None:
        self.counts[(capability if known else "<unknown>", str(status))] += 1


def livepeer_metrics(service: Any) -> Iterable:
    """A `Metrics.add_source` callable's body for one LivepeerService."""
    events = CounterMetricFamily(
        "streamlens_livepeer_events", "Events-channel events per stream", labels=["manifest_id", "result"]
    )
    data = CounterMetricFamily(
        "streamlens_livepeer_data_lines", "Data-channel JSON lines per stream", labels=["manifest_id", "result"]
    )
    control = CounterMetricFamily(
        "streamlens_livepeer_control_messages", "Control-channel messages per stream", labels=["manifest_id", "kind"]
    )
    for manifest_id, channels in service.channels.items():
        if channels.events is not None:
            ev = channels.events
            for result, value in (("sent", ev.sent), ("failed", ev.failed), ("dropped", ev.dropped)):
                events.add_metric([manifest_id, result], value)
        if channels.data is not None:
            dc = channels.data
            for result, value in (("sent", dc.lines_sent), ("dropped", dc.lines_dropped), ("oversize", dc.oversize)):
                data.add_metric([manifest_id, result], value)
        if channels.control is not None:
            cc = channels.control
            for kind, value in (("params", cc.messages), ("keepalive", cc.keepalives), ("invalid", cc.invalid)):
                control.add_metric([manifest_id, kind], value)
    yield events
    yield data
    yield control
    requests = CounterMetricFamily(
        "streamlens_capability_requests", "BYOC batch requests", labels=["capability", "status"]
    )
    for (capability, status), value in service.capability_counter.counts.items():
        requests.add_metric([capability, status], value)
    yield requests
    if service.registrar is not None:
        state = GaugeMetricFamily(
            "streamlens_livepeer_registration_state", "1 for the registration's state", labels=["state"]
        )
        for name in REGISTRATION_STATES:
            state.add_metric([name], 1 if service.registrar.state == name else 0)
        yield state
