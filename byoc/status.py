"""ai-runner's `status` event for one stream, as its live pipeline sends it.

The gateway stores the newest `type: "status"` event and serves it on
`/live/video-to-video/{id}/status` and `/process/stream/{id}/status`. Shape and units follow
ai-runner's `PipelineStatus` model: times are integer milliseconds since the epoch (None when the
moment never happened), `last_params` is transient — sent once, then
cleared — and `last_params_hash` is the md5 of the params as sorted-key JSON.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

# Stream states → ai-runner PipelineState; a stopped stream is what ai-runner calls OFFLINE.
AI_RUNNER_STATES = {
    "LOADING": "LOADING",
    "ONLINE": "ONLINE",
    "DEGRADED_INPUT": "DEGRADED_INPUT",
    "DEGRADED_INFERENCE": "DEGRADED_INFERENCE",
    "ERROR": "ERROR",
    "STOPPED": "OFFLINE",
}


def timestamp_ms(seconds: float | None) -> int | None:
    return int(seconds * 1000) if seconds is not None else None


def wall_clock(monotonic_time: float | None) -> float | None:
    """A `time.monotonic()` reading as epoch seconds (meters record monotonic time)."""
    if monotonic_time is None:
        return None
    return time.time() - (time.monotonic() - monotonic_time)


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.md5(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def ai_runner_state(stream: Any) -> str:
    value = getattr(stream.state, "value", str(stream.state))
    return AI_RUNNER_STATES.get(value, "ERROR")


class StreamStatusTracker:
    """Builds status events for one stream and keeps the transient fields between reports."""

    def __init__(self, stream: Any, pipeline: str) -> None:
        self.stream = stream
        self.pipeline = pipeline
        self.start_time = stream.created_at.timestamp()
        # the first report carries the start params, as ai-runner's does after a stream (re)start
        self._last_params: dict[str, Any] | None = dict(stream.params)
        self._last_params_hash = params_hash(stream.params)
        self._last_status_time: float | None = None
        self.reports = 0

    @property
    def last_params_hash(self) -> str:
        return self._last_params_hash

    def on_params(self, params: dict[str, Any]) -> None:
        self._last_params = dict(params)
        self._last_params_hash = params_hash(params)

    def snapshot(self, clear_transient: bool = False, now: float | None = None) -> dict[str, Any]:
        """The status event; with `clear_transient` (a periodic report) `last_params` is emptied
        afterwards and `last_status_timestamp` advances."""
        stream = self.stream
        now = time.time() if now is None else now
        mono = time.monotonic()
        start_ms = timestamp_ms(self.start_time)
        status = {
            "type": "status",
            "pipeline": self.pipeline,
            "start_time": start_ms,
            "state": ai_runner_state(stream),
            "last_state_update_time": timestamp_ms(getattr(stream, "state_changed_at", None)),
            "input_status": {
                "last_input_time": timestamp_ms(wall_clock(stream.in_meter.last_time)),
                "fps": round(stream.in_meter.rate(mono), 2),
            },
            "inference_status": {
                "last_output_time": timestamp_ms(wall_clock(stream.out_meter.last_time)),
                "fps": round(stream.out_meter.rate(mono), 2),
                "last_params_update_time": timestamp_ms(stream.params_updated_at),
                "last_params": self._last_params,
                "last_params_hash": self._last_params_hash,
                "last_error_time": timestamp_ms(stream.last_error_time),
                "last_error": stream.last_error,
                # ai-runner's fields for a pipeline restart; this server never restarts one in place
                "last_restart_time": None,
                "last_restart_logs": None,
                "restart_count": 0,
            },
            "last_status_timestamp": timestamp_ms(self._last_status_time) if self._last_status_time else start_ms,
            "timestamp": timestamp_ms(now),
        }
        if clear_transient:
            self._last_params = None
            self._last_status_time = now
            self.reports += 1
        return status


def idle_status(pipeline: str) -> dict[str, Any]:
    """What `GET /stream/status` answers when no stream runs (ai-runner: OFFLINE)."""
    now_ms = timestamp_ms(time.time())
    return {
        "type": "status",
        "pipeline": pipeline,
        "start_time": None,
        "state": "OFFLINE",
        "last_state_update_time": None,
        "input_status": {"last_input_time": None, "fps": 0.0},
        "inference_status": {
            "last_output_time": None,
            "fps": 0.0,
            "last_params_update_time": None,
            "last_params": None,
            "last_params_hash": None,
            "last_error_time": None,
            "last_error": None,
            "last_restart_time": None,
            "last_restart_logs": None,
            "restart_count": 0,
        },
        "last_status_timestamp": None,
        "timestamp": now_ms,
    }
