"""Prometheus figures of the shared speech models and of every captioned stream (lag first).

Latency as the field measures it (pipecat's stt-benchmark "time to final segment"):
* time to final: from the end of speech - the moment the last sample the VAD called speech
  arrived at the server - to the publication of the final caption that holds it (so it includes
  the pause the VAD waits for, `ASR_VAD_MIN_SILENCE_MS`, and the final decode);
* time to first partial: from the arrival of the first sample the VAD called speech to the first
  caption text of that utterance (a partial, or the final when no partial came first).
Both are histograms per model (`streamlens_asr_time_to_final_seconds`,
`streamlens_asr_time_to_first_partial_seconds`) and p50/p95 per stream in its status.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from inference.asr.model import AsrModelPool, all_shared_pools

# seconds; time to final on CPU sits between 0.5 s (a pause) and a few seconds under load
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 0.6, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_MAX_HISTOGRAMS = 16  # (kind, model) pairs: two kinds × a handful of models


class LatencyHistogram:
    """Cumulative Prometheus-style histogram (thread-safe, fixed buckets: bounded)."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self._counts = [0] * (len(buckets) + 1)  # the last is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        """([(le, cumulative count)...] ending with +Inf, sum)."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        out, running = [], 0
        for le, count in zip([*(str(b) for b in self.buckets), "+Inf"], counts):
            running += count
            out.append((le, float(running)))
        return out, total


_histograms: dict[tuple[str, str], LatencyHistogram] = {}
_histograms_lock = threading.Lock()


def latency_histogram(kind: str, model: str) -> LatencyHistogram:
    """The process-wide histogram of `kind` ("final" | "first_partial") for one model."""
    key = (kind, model)
    with _histograms_lock:
        histogram = _histograms.get(key)
        if histogram is None:
            histogram = LatencyHistogram()
            if len(_histograms) < _MAX_HISTOGRAMS:
                _histograms[key] = histogram
        return histogram


def latency_metrics() -> Iterator[Any]:
    families = {
        "final": HistogramMetricFamily(
            "streamlens_asr_time_to_final_seconds",
            "end of speech (VAD) to the final caption holding its last word",
            labels=["model"],
        ),
        "first_partial": HistogramMetricFamily(
            "streamlens_asr_time_to_first_partial_seconds",
            "start of speech (VAD) to the utterance's first caption text",
            labels=["model"],
        ),
    }
    with _histograms_lock:
        items = list(_histograms.items())
    for (kind, model), histogram in items:
        buckets, total = histogram.snapshot()
        families[kind].add_metric([model], buckets, total)
    yield from families.values()


def asr_metrics(pool: AsrModelPool) -> Iterator[Any]:
    """One scrape: pool gauges and counters, latency histograms, and per stream (of every model)
    its lag (audio not decoded yet)."""
    yield from latency_metrics()
    stats = pool.stats()
    gauges = (
        ("streamlens_asr_pending", "ASR requests waiting or in a model call", stats["pending"]),
        ("streamlens_asr_finals_waiting", "utterances waiting for their final decode", stats["waiting"]["finals"]),
        (
            "streamlens_asr_busy_fraction",
            "share of the last seconds the ASR workers spent decoding",
            stats["busy_fraction"],
        ),
        ("streamlens_asr_mean_batch", "utterances per ASR model call (mean)", stats["mean_batch"]),
        ("streamlens_asr_loaded", "1 when the speech model is loaded", 1 if stats["loaded"] else 0),
    )
    for name, doc, value in gauges:
        family = GaugeMetricFamily(name, doc)
        family.add_metric([], float(value))
        yield family
    counters = (
        ("streamlens_asr_batches", "ASR model calls on utterance batches", stats["batches"]),
        ("streamlens_asr_finals", "final decodes", stats["finals"]),
        ("streamlens_asr_partials", "partial decodes", stats["partials"]),
        (
            "streamlens_asr_partials_skipped",
            "partial decodes skipped under load or replaced",
            stats["partials_skipped"],
        ),
        ("streamlens_asr_fallbacks", "finals decoded again with a 30 s window", stats["fallbacks"]),
        ("streamlens_asr_errors", "failed ASR model calls", stats["errors"]),
        ("streamlens_asr_busy_seconds", "seconds the ASR workers spent decoding", stats["busy_seconds"]),
    )
    for name, doc, value in counters:
        counter = CounterMetricFamily(name, doc)
        counter.add_metric([], float(value))
        yield counter
    lag = GaugeMetricFamily("streamlens_asr_lag_seconds", "audio of a stream not decoded yet", labels=["manifest_id"])
    max_lag = GaugeMetricFamily(
        "streamlens_asr_max_lag_seconds", "largest lag of a stream so far", labels=["manifest_id"]
    )
    finals = CounterMetricFamily("streamlens_asr_stream_finals", "final captions of a stream", labels=["manifest_id"])
    skipped = CounterMetricFamily(
        "streamlens_asr_stream_partials_skipped", "partials a stream skipped under load", labels=["manifest_id"]
    )
    pools = [pool, *(p for p in all_shared_pools() if p is not pool)]
    streams = [item for p in pools for item in list(p.streams.items())]
    for name, transcriber in streams:
        lag.add_metric([name], float(transcriber.lag_seconds))
        max_lag.add_metric([name], float(transcriber.max_lag_seconds))
        finals.add_metric([name], float(transcriber.finals))
        skipped.add_metric([name], float(transcriber.partials_skipped))
    yield from (lag, max_lag, finals, skipped)
