"""`StreamSpec`: what a stream is asked to be (its id, where it reads and writes, its params), the
domain type every layer shares. HTTP start bodies (server/start_request.py), WebRTC, RTMP and
byoc all build or read one; it lives in `media` so none of them imports another to name it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StreamSpec:
    manifest_id: str
    mode: str  # "native" | "livepeer"
    subscribe_url: str | None
    publish_url: str | None
    control_url: str | None = None
    events_url: str | None = None
    data_url: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    model_id: str | None = None
    source_type: str = "trickle"  # "trickle" (subscribe_url) | "rtmp" (a publisher with stream_key)
    stream_key: str | None = None  # the RTMP publisher's credential: never logged, answered once

    def metadata(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "subscribe_url": self.subscribe_url,
            "publish_url": self.publish_url,
            "control_url": self.control_url,
            "events_url": self.events_url,
            "data_url": self.data_url,
            "model_id": self.model_id,
            "width": self.params.get("width"),
            "height": self.params.get("height"),
        }
