"""Prometheus figures of the shared speech model and of every captioned stream (lag first)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from inference.asr.model import AsrModelPool


def asr_metrics(pool: AsrModelPool) -> Iterator[Any]:
    """One scrape: pool gauges and counters, and per stream its lag (audio not decoded yet)."""
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
    for name, transcriber in list(pool.streams.items()):
        lag.add_metric([name], float(transcriber.lag_seconds))
        max_lag.add_metric([name], float(transcriber.max_lag_seconds))
        finals.add_metric([name], float(transcriber.finals))
        skipped.add_metric([name], float(transcriber.partials_skipped))
    yield from (lag, max_lag, finals, skipped)
