"""Timed tag spans from per-sample tags.

A tag's span starts at its first sample at or above the threshold and ends where the last such
sample's interval ends. A single missed sample between hits does not split a span (detectors blink);
two or more do. A span's confidence is the highest confidence seen in it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def merge_spans(
    samples: Sequence[tuple[float, dict[str, float]]],
    interval: float,
    duration: float,
    threshold: float,
    max_gap_samples: int = 1,
) -> dict[str, list[dict[str, float]]]:
    """`samples`: (time, {tag: confidence}) in time order → {tag: [{start, end, confidence}]}."""
    spans: dict[str, list[dict[str, float]]] = {}
    open_spans: dict[str, dict[str, float]] = {}
    last_hit_index: dict[str, int] = {}
    for index, (t, tags) in enumerate(samples):
        for name, confidence in tags.items():
            if confidence < threshold:
                continue
            current = open_spans.get(name)
            if current is not None and index - last_hit_index[name] <= max_gap_samples + 1:
                current["end"] = t
                current["confidence"] = max(current["confidence"], confidence)
            else:
                current = {"start": t, "end": t, "confidence": confidence}
                open_spans[name] = current
                spans.setdefault(name, []).append(current)
            last_hit_index[name] = index
    for items in spans.values():
        for span in items:
            span["end"] = round(min(duration, span["end"] + interval) if duration > 0 else span["end"] + interval, 3)
            span["start"] = round(span["start"], 3)
            span["confidence"] = round(span["confidence"], 4)
    return spans


def best_confidences(tags: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Highest confidence per tag name in one sample (several faces → one `face` value)."""
    best: dict[str, float] = {}
    for name, confidence in tags:
        if confidence > best.get(name, -1.0):
            best[name] = confidence
    return best
