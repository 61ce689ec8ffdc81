"""The contract every vision backend follows, and the request/result types they share.

Image convention: every backend takes an **RGB** ``uint8`` array of shape ``(height, width, 3)``,
which is what ``av.VideoFrame.to_ndarray(format="rgb24")`` gives. Backends that need BGR (OpenCV's
JPEG encoder) convert internally. Boxes in results are ``(x, y, w, h)`` in the pixels of the image
that was passed in.

Failure convention: a backend that cannot be reached or is overloaded raises
``BackendUnavailable`` (the API maps it to 503; a stream stage counts it and carries on). A backend
that answered but whose answer could not be understood (malformed model output) returns a
``VisionResult`` with empty tags and ``error`` set — it never raises into the stream.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from media.events import Tag

VisionMode = Literal["tags", "description"]
VISION_MODES: tuple[str, ...] = ("tags", "description")


class BackendUnavailable(RuntimeError):
    """The backend cannot serve now: missing libraries/device, no endpoint configured, every
    endpoint failing or open, or too much work already queued."""


class BackendBusy(BackendUnavailable):
    """The backend's bounded work queue is full; the caller should skip this frame or retry later."""


@dataclass(frozen=True)
class VisionRequest:
    """What to ask of one frame.

    `tag_list` empty means "the backend's configured list" (the VLM's `tag_list` setting; every tag
    the embedded tagger knows). `threshold` drops tags whose confidence is below it. `prompt`
    replaces the default description prompt (description mode only). `source` keys per-source state
    such as the embedded tagger's previous frame for motion (a stream passes its manifest id)."""

    mode: VisionMode = "tags"
    tag_list: tuple[str, ...] = ()
    threshold: float = 0.5
    prompt: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in VISION_MODES:
            raise ValueError(f"mode must be one of {VISION_MODES}, got {self.mode!r}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError("threshold must be between 0 and 1")
        # accept any iterable of names but store an immutable, de-duplicated tuple
        object.__setattr__(self, "tag_list", tuple(dict.fromkeys(str(t) for t in self.tag_list if str(t).strip())))


@dataclass
class VisionResult:
    """Tags (mode "tags") and/or text (mode "description") from one look at one frame.

    `model` names what actually produced the result (e.g. "opencv-haar-face+frame-stats" or the
    VLM's model id). `error` is set, with empty tags/text, when the backend answered but the answer
    was unusable. `endpoint` is the VLM endpoint that answered (multiplexer only)."""

    tags: list[Tag] = field(default_factory=list)
    text: str = ""
    model: str = ""
    error: str | None = None
    endpoint: str | None = None
    measures: dict[str, float] = field(default_factory=dict)  # raw numbers behind the tags, for debugging

    @property
    def ok(self) -> bool:
        return self.error is None


def check_image(image: Any) -> np.ndarray:
    """Validate the RGB uint8 HxWx3 convention; returns the array (contiguous)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 array of shape (h, w, 3), got {image.dtype} {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError("empty image")
    return np.ascontiguousarray(image)


def filter_tags(tags: list[Tag], request: VisionRequest) -> list[Tag]:
    """Keep tags at or above the threshold (and in the request's list, when it names one)."""
    wanted = {t.lower() for t in request.tag_list}
    return [tag for tag in tags if tag.confidence >= request.threshold and (not wanted or tag.name.lower() in wanted)]


class VisionBackend(abc.ABC):
    """One way of looking at frames. Instances are shared by every stream (and the API), so
    implementations must be safe for concurrent `analyze` calls from one event loop and must
    bound their own pending work (raise `BackendBusy` when full)."""

    name: str = "vision"
    model: str = ""

    @abc.abstractmethod
    async def analyze(self, image: np.ndarray, request: VisionRequest) -> VisionResult:
        """Look at one RGB uint8 (h, w, 3) frame. Heavy work runs off the event loop."""

    async def close(self) -> None:
        """Release sessions, threads and device memory."""

    def forget(self, source: str) -> None:
        """Drop per-source state (called when a stream stops). Default: nothing kept."""

    def stats(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model}
