"""The embedded CPU tagger: OpenCV's bundled Haar face detector plus two cheap frame measures.

This is not a vision-language model and never claims to be one: results carry the model name
``opencv-haar-face+frame-stats``. It needs no network, no GPU and no downloaded weights — the
cascade XML ships inside ``opencv-python-headless`` (4.x; OpenCV 5 dropped ``cv2.data``, hence the
``opencv-python-headless>=4.8,<5`` pin).

Tags it can give (``EMBEDDED_TAGS``):

``face``
    One tag per detected frontal face, with its box ``(x, y, w, h)`` in the input image's pixels.
    Detection runs once on a grey copy scaled so its longer side is at most
    ``detect_max_side``, with ``minNeighbors=0`` and ``outputRejectLevels=True`` so every raw
    candidate comes back with its final-stage *level weight* (how far the last cascade stage's sum
    cleared its threshold). Candidates are grouped the way OpenCV groups them
    (``cv2.groupRectangles``, eps 0.2); a group needs more than ``min_neighbors`` members. The
    confidence combines both signals OpenCV offers::

        neighbour_score = 1 - exp(-neighbours / 12)          # 12 overlapping hits -> 0.63, 44 -> 0.97
        weight_score    = 1 / (1 + exp(-(max_weight - 2) / 1.5))   # weight 2 -> 0.5, 7.4 -> 0.97
        confidence      = neighbour_score * weight_score

    The constants were chosen on scikit-image's sample photographs: the astronaut's face scores
    about 0.9 (0.84 when the photo sits in a 1280x720 frame, detected at 640 wide), while textured
    false positives stay below 0.5 (coins 0.46, gravel 0.10) — ask for threshold 0.6-0.7 when a
    false face costs more than a missed one.

``motion``
    Mean absolute grey-level difference between this frame and the previous sample *of the same
    source* (both shrunk to 128x72), as ``confidence = min(1, mean_abs_diff / motion_full_scale)``
    (``motion_full_scale`` defaults to 24 grey levels, i.e. ~10 % of the range).

``scene_change``
    Bhattacharyya distance (0 = same, 1 = disjoint) between hue x saturation x value histograms
    (16x8x8 bins, frame shrunk to 160x90) of this frame and the previous sample of the same source;
    the distance is the confidence.

``text``
    On-screen text read with RapidOCR (the ``rapidocr`` package: its PP-OCR detection and
    recognition ONNX models ship inside the wheel and run on onnxruntime). One tag per text line,
    with its box, the recogniser's score as confidence, and the words read (``TextTag.words``).
    Only when a request names ``text`` in its tag list: OCR costs about as much again as the face
    pass (measured 60-300 ms per 720p frame on one loaded core), so it is not a default.

Motion and scene change need a previous frame, so they appear only when the request names a
``source`` (a stream passes its manifest id) and from the second sample on. Per-source state is an
LRU bounded by ``max_sources``. Work runs on a small dedicated thread pool; at most
``max_pending`` analyses may be queued or running, beyond that ``BackendBusy`` is raised.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from inference.vision.base import (
    BackendBusy,
    BackendUnavailable,
    VisionBackend,
    VisionRequest,
    VisionResult,
    check_image,
    filter_tags,
)
from media.events import Tag
from media.lru import LRU
from media.stats import LatencyWindow

log = logging.getLogger(__name__)

EMBEDDED_MODEL_NAME = "opencv-haar-face+frame-stats"
DEFAULT_TAGS: tuple[str, ...] = ("face", "motion", "scene_change")  # an empty tag list means these
EMBEDDED_TAGS: tuple[str, ...] = (*DEFAULT_TAGS, "text")
OCR_MAX_SIDE = 640  # the text detector looks at the frame scaled to this longer side
FACE_CASCADE_FILE = "haarcascade_frontalface_default.xml"
_THUMB_SIZE = (128, 72)  # (w, h) for motion; fixed so any input resolution compares
_HIST_SIZE = (160, 90)  # (w, h) for the colour histogram
_GROUP_EPS = 0.2  # OpenCV's own grouping tolerance in detectMultiScale


def cascade_path() -> str:
    """Path of the bundled frontal-face cascade, or BackendUnavailable when this OpenCV lacks it."""
    data = getattr(cv2, "data", None)
    base = getattr(data, "haarcascades", None)
    if not base:
        raise BackendUnavailable(
            "OpenCV build has no bundled Haar cascades (cv2.data); install opencv-python-headless>=4.8,<5"
        )
    return base + FACE_CASCADE_FILE


def face_confidence(neighbours: int, max_level_weight: float) -> float:
    """The documented mapping from OpenCV's two detection signals to [0, 1]."""
    neighbour_score = 1.0 - math.exp(-max(0, neighbours) / 12.0)
    weight_score = 1.0 / (1.0 + math.exp(-(max_level_weight - 2.0) / 1.5))
    return round(neighbour_score * weight_score, 4)


@dataclass
class TextTag(Tag):
    """A `text` tag: one line of on-screen text and the words read in it."""

    words: str = ""


class TextReader:
    """RapidOCR's PP-OCR detector + recogniser (ONNX models shipped in the `rapidocr` wheel), loaded
    on first use, one per tagger (onnxruntime sessions are thread-safe). Single-threaded ONNX so
    the work stays on the caller's (lowered) thread."""

    def __init__(self, max_side: int = OCR_MAX_SIDE, min_score: float = 0.5) -> None:
        self.max_side = max_side
        self.min_score = min_score
        self._engine: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._engine is None:
                try:
                    from rapidocr import RapidOCR
                except ImportError:
                    raise BackendUnavailable("on-screen text needs the 'rapidocr' package (see the README)") from None
                self._engine = RapidOCR(
                    params={
                        "Global.log_level": "error",  # it warns on every frame without text otherwise
                        "Global.use_cls": False,  # on-screen text is upright
                        "Global.text_score": self.min_score,
                        "Det.limit_side_len": self.max_side,
                        "Det.limit_type": "max",  # shrink big frames; never enlarge small ones
                        "EngineConfig.onnxruntime.intra_op_num_threads": 1,
                        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
                    }
                )
            return self._engine

    def read(self, rgb: np.ndarray) -> list[TextTag]:
        engine = self._engine or self._load()
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        with self._lock:  # RapidOCR's pipeline object keeps per-call state: one frame at a time
            output = engine(bgr)
        if output.boxes is None or output.txts is None:
            return []
        tags: list[TextTag] = []
        for quad, words, score in zip(output.boxes, output.txts, output.scores):
            points = np.asarray(quad, dtype=float)
            x, y = points.min(axis=0)
            x2, y2 = points.max(axis=0)
            box = (int(x), int(y), int(round(x2 - x)), int(round(y2 - y)))
            if str(words).strip() and float(score) >= self.min_score:
                tags.append(TextTag("text", round(float(score), 4), box, words=str(words).strip()))
        tags.sort(key=lambda t: (t.box[1], t.box[0]) if t.box else (0, 0))  # reading order
        return tags


def _rect(values: Iterable[Any]) -> tuple[int, int, int, int]:
    """An OpenCV (x, y, w, h) rectangle as ints."""
    x, y, w, h = (int(v) for v in values)
    return x, y, w, h


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


@dataclass
class _SourceState:
    thumb: np.ndarray  # grey 128x72
    hist: np.ndarray  # normalised H-S-V histogram


def _lower_thread_priority(niceness: int = 10) -> None:
    """Tagging is best effort: on a busy CPU the video threads win and the sampler skips ticks,
    instead of the tagger slowing the video down. (Linux: per-thread nice via the native id.)"""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass
    # detection runs on this (lowered) thread only, not on OpenCV's own full-priority pool
    cv2.setNumThreads(1)


class EmbeddedTagger(VisionBackend):
    """Face boxes + motion + scene-change tags on the CPU. Safe to share between streams."""

    name = "embedded"
    model = EMBEDDED_MODEL_NAME

    def __init__(
        self,
        workers: int = 1,
        max_pending: int = 8,
        detect_max_side: int = 640,
        scale_factor: float = 1.1,
        min_neighbors: int = 3,
        min_face: int = 24,
        motion_full_scale: float = 24.0,
        max_sources: int = 256,
    ) -> None:
        self._cascade_file = cascade_path()
        probe = cv2.CascadeClassifier(self._cascade_file)
        if probe.empty():
            raise BackendUnavailable(f"could not load Haar cascade {self._cascade_file}")
        self.detect_max_side = detect_max_side
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face = min_face
        self.motion_full_scale = motion_full_scale
        self.max_pending = max_pending
        self.max_sources = max_sources
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix="vision-embedded", initializer=_lower_thread_priority
        )
        self._local = threading.local()  # one CascadeClassifier per worker thread
        self._sources: LRU[str, _SourceState] = LRU(max_sources)
        self._sources_lock = threading.Lock()
        self._pending = 0
        self._closed = False
        self.latency = LatencyWindow(256)
        self.calls = 0
        self.busy_rejections = 0
        self.faces_found = 0
        self.text_reader = TextReader()

    # -- VisionBackend -------------------------------------------------------------------------

    async def analyze(self, image: np.ndarray, request: VisionRequest) -> VisionResult:
        if self._closed:
            raise BackendUnavailable("embedded tagger is closed")
        image = check_image(image)
        if self._pending >= self.max_pending:
            self.busy_rejections += 1
            raise BackendBusy(f"embedded tagger has {self._pending} analyses pending (max {self.max_pending})")
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self.analyze_sync, image, request)
        finally:
            self._pending -= 1

    def analyze_sync(self, image: np.ndarray, request: VisionRequest) -> VisionResult:
        """The whole analysis, synchronously (runs on the worker pool; usable from any thread)."""
        started = time.perf_counter()
        image = check_image(image)
        wanted = {t.lower() for t in request.tag_list} or set(DEFAULT_TAGS)
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        tags: list[Tag] = []
        measures: dict[str, float] = {}
        if "face" in wanted:
            faces = self._detect_faces(grey)
            tags.extend(faces)
            measures["faces"] = float(len(faces))
        if "text" in wanted:
            lines = self.text_reader.read(image)
            tags.extend(lines)
            measures["text_lines"] = float(len(lines))
        if request.source is not None and wanted & {"motion", "scene_change"}:
            motion, scene = self._frame_change(request.source, image, grey)
            if motion is not None and scene is not None:
                measures["mean_abs_diff"] = motion
                measures["hist_distance"] = scene
                tags.append(Tag("motion", round(min(1.0, motion / self.motion_full_scale), 4)))
                tags.append(Tag("scene_change", round(min(1.0, max(0.0, scene)), 4)))
        kept = filter_tags(tags, request)
        self.calls += 1
        self.faces_found += sum(1 for t in kept if t.name == "face")
        self.latency.add(time.perf_counter() - started)
        text = self._describe(kept, measures) if request.mode == "description" else ""
        return VisionResult(tags=kept, text=text, model=self.model, measures=measures)

    async def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    def forget(self, source: str) -> None:
        with self._sources_lock:
            self._sources.pop(source)

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "calls": self.calls,
            "pending": self._pending,
            "busy_rejections": self.busy_rejections,
            "faces_found": self.faces_found,
            "sources": len(self._sources),
            "latency_ms": self.latency.summary_ms(),
        }

    # -- internals -----------------------------------------------------------------------------

    def _cascade(self) -> cv2.CascadeClassifier:
        cascade = getattr(self._local, "cascade", None)
        if cascade is None:
            cascade = cv2.CascadeClassifier(self._cascade_file)
            self._local.cascade = cascade
        return cascade

    def _detect_faces(self, grey: np.ndarray) -> list[Tag]:
        height, width = grey.shape
        scale = min(1.0, self.detect_max_side / max(height, width))
        small = grey
        if scale < 1.0:
            small = cv2.resize(
                grey, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
            )
        # no histogram equalisation: Haar windows are variance-normalised already, and a global
        # equalisation lets large flat borders (letterboxing) swing the scores
        min_side = max(8, round(self.min_face * scale))
        rects, _levels, weights = self._cascade().detectMultiScale3(
            small,
            scaleFactor=self.scale_factor,
            minNeighbors=0,
            minSize=(min_side, min_side),
            outputRejectLevels=True,
        )
        if len(rects) == 0:
            return []
        candidates = [_rect(r) for r in rects]
        level_weights = np.ravel(weights).astype(float).tolist()
        grouped, neighbours = cv2.groupRectangles([list(c) for c in candidates], self.min_neighbors, _GROUP_EPS)
        tags: list[Tag] = []
        for rect, count in zip(grouped, np.ravel(neighbours).tolist()):
            rect_t = _rect(rect)
            members = [w for c, w in zip(candidates, level_weights) if _iou(c, rect_t) >= 0.3]
            max_weight = max(members) if members else 0.0
            x, y, w, h = rect_t
            box = (round(x / scale), round(y / scale), round(w / scale), round(h / scale))
            tags.append(Tag("face", face_confidence(int(count), max_weight), box))
        tags.sort(key=lambda t: t.confidence, reverse=True)
        return tags

    def _frame_change(self, source: str, rgb: np.ndarray, grey: np.ndarray) -> tuple[float | None, float | None]:
        thumb = cv2.resize(grey, _THUMB_SIZE, interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(cv2.resize(rgb, _HIST_SIZE, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2HSV)
        # hue x saturation x value: value bins keep grey-only content comparable too
        hist = cv2.calcHist([hsv], [0, 1, 2], None, [16, 8, 8], [0, 180, 0, 256, 0, 256])
        cv2.normalize(hist, hist, alpha=1.0, norm_type=cv2.NORM_L1)
        with self._sources_lock:
            previous = self._sources.pop(source)
            self._sources.put(source, _SourceState(thumb, hist))
        if previous is None:
            return None, None
        motion = float(np.mean(cv2.absdiff(thumb, previous.thumb)))
        distance = float(cv2.compareHist(previous.hist, hist, cv2.HISTCMP_BHATTACHARYYA))
        return round(motion, 3), round(distance, 4)

    @staticmethod
    def _describe(tags: list[Tag], measures: dict[str, float]) -> str:
        faces = [t for t in tags if t.name == "face"]
        parts = [f"{len(faces)} face{'s' if len(faces) != 1 else ''} detected"]
        if "mean_abs_diff" in measures:
            parts.append(f"motion {measures['mean_abs_diff']:.1f} grey levels")
            parts.append(f"histogram distance {measures['hist_distance']:.2f}")
        words = " ".join(t.words for t in tags if isinstance(t, TextTag))
        if words:
            parts.append(f"text read: {words}")
        return f"{EMBEDDED_MODEL_NAME}: " + "; ".join(parts)
