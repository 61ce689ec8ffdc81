"""Burn-in overlay drawn on the luma (Y) plane of yuv420p frames.

Only the Y plane is touched, so the frame is never converted to RGB: white text on a darkened band
needs no chroma edits. Caption text is rendered once per change into a grey mask with a TrueType
font (Unicode-safe) and blended into the band; the header (stream id + clock) uses OpenCV's cheap
Hershey font since it changes every frame. Vision tags and boxes come from `VisionEvent`s.
"""

from __future__ import annotations

import logging
import textwrap
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import av
import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from media.events import CaptionEvent, StreamEvent, VisionEvent
from media.frames import copy_i420, plane_array
from media.params import (
    CAPTIONS_BURN_IN_DEFAULT,
    OVERLAY_CLOCK_DEFAULT,
    OVERLAY_ENABLED_DEFAULT,
    VISION_BURN_IN_DEFAULT,
    option,
)

log = logging.getLogger(__name__)

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
)
TEXT_LUMA = 235
TAG_TTL_SECONDS = 3.0


@lru_cache(maxsize=8)
def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    for path in FONT_CANDIDATES:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


@dataclass
class OverlayOptions:
    enabled: bool = OVERLAY_ENABLED_DEFAULT  # params.overlay.enabled
    clock: bool = OVERLAY_CLOCK_DEFAULT  # params.overlay.clock
    captions: bool = CAPTIONS_BURN_IN_DEFAULT  # burn captions in (params.captions.burn_in)
    tags: bool = VISION_BURN_IN_DEFAULT  # draw vision tags/boxes (params.vision.burn_in)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> OverlayOptions:
        return cls(
            enabled=bool(option(params, "overlay", "enabled", OVERLAY_ENABLED_DEFAULT)),
            clock=bool(option(params, "overlay", "clock", OVERLAY_CLOCK_DEFAULT)),
            captions=bool(option(params, "captions", "burn_in", CAPTIONS_BURN_IN_DEFAULT)),
            tags=bool(option(params, "vision", "burn_in", VISION_BURN_IN_DEFAULT)),
        )


class OverlayState:
    """What the overlay should show, updated from stream events on the loop and read by the video
    worker thread. Holds only the newest caption/tag state, so it cannot grow."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.final_text = ""
        self.final_translation = ""
        self.partial_text = ""
        self._partial_id: int | None = None
        self.caption_version = 0
        self.vision: VisionEvent | None = None
        self.vision_received_at = 0.0

    def on_event(self, event: StreamEvent) -> None:
        if isinstance(event, CaptionEvent):
            self._on_caption(event)
        elif isinstance(event, VisionEvent) and event.kind == "tags":
            with self._lock:
                self.vision = event
                self.vision_received_at = time.monotonic()

    def _on_caption(self, event: CaptionEvent) -> None:
        with self._lock:
            if event.final and not event.text:
                # an empty final withdraws its partial (its words were dropped); the last line stays
                changed = self._partial_id is not None and self._partial_id <= event.id and bool(self.partial_text)
                if changed:
                    self.partial_text = ""
            elif event.final:
                translation = next(iter(event.translations.values()), "") if event.translations else ""
                changed = (event.text, translation) != (self.final_text, self.final_translation)
                self.final_text, self.final_translation = event.text, translation
                # the partial this final replaces (or an older one) disappears; a newer one stays
                if self.partial_text and self._partial_id is not None and self._partial_id <= event.id:
                    self.partial_text = ""
                    changed = True
            else:
                changed = event.text != self.partial_text
                self.partial_text, self._partial_id = event.text, event.id
            if changed:
                self.caption_version += 1

    def caption_lines(self) -> tuple[int, list[str]]:
        with self._lock:
            lines = [t for t in (self.final_text, self.final_translation, self.partial_text) if t]
            return self.caption_version, lines

    def current_vision(self) -> VisionEvent | None:
        with self._lock:
            if self.vision is None or time.monotonic() - self.vision_received_at > TAG_TTL_SECONDS:
                return None
            return self.vision


class CaptionBand:
    """Renders caption lines into a cached grey mask sized for the frame width."""

    def __init__(self) -> None:
        self._key: tuple[int, int, int] | None = None
        self._mask: np.ndarray | None = None

    def mask_for(self, version: int, lines: list[str], width: int, height: int) -> np.ndarray | None:
        key = (version, width, height)
        if key == self._key:
            return self._mask
        self._key = key
        self._mask = self._render(lines, width, height) if lines else None
        return self._mask

    @staticmethod
    def _render(lines: list[str], width: int, height: int) -> np.ndarray:
        font_size = max(12, height // 22)
        font = load_font(font_size)
        chars_per_line = max(10, int(width / (font_size * 0.55)))
        wrapped: list[str] = []
        for line in lines:
            wrapped.extend(textwrap.wrap(line, chars_per_line) or [""])
        wrapped = wrapped[-2:]  # newest lines only; the band never covers the whole frame
        line_height = int(font_size * 1.3)
        band_height = line_height * len(wrapped) + font_size // 2
        image = Image.new("L", (width, band_height), 0)
        draw = ImageDraw.Draw(image)
        for i, line in enumerate(wrapped):
            text_width = draw.textlength(line, font=font)
            x = max(4, int((width - text_width) / 2))
            draw.text((x, font_size // 4 + i * line_height), line, fill=255, font=font)
        return np.asarray(image, dtype=np.uint8)


class Overlay:
    """Draws the header, captions and vision tags onto frames. One instance per stream; `draw` is
    called from the stream's video worker thread only."""

    def __init__(self, label: str, state: OverlayState | None = None, options: OverlayOptions | None = None) -> None:
        self.label = label
        self.state = state or OverlayState()
        self.options = options or OverlayOptions()
        self._band = CaptionBand()

    def draw(self, frame: av.VideoFrame, media_time: float) -> av.VideoFrame:
        """A drawn copy of `frame` (decoder-owned reference frames stay untouched); any size,
        odd or even: only the Y plane is drawn on, through a view that skips line padding."""
        if not self.options.enabled:
            return frame
        out = copy_i420(frame)
        width, height = out.width, out.height
        luma = plane_array(out.planes[0])
        if self.options.clock:
            self._draw_header(luma, media_time)
        if self.options.tags:
            vision = self.state.current_vision()
            if vision is not None:
                self._draw_tags(luma, vision)
        if self.options.captions:
            version, lines = self.state.caption_lines()
            mask = self._band.mask_for(version, lines, width, height)
            if mask is not None:
                self._blend_band(luma, mask)
        return out

    def _draw_header(self, luma: np.ndarray, media_time: float) -> None:
        now = time.time()
        clock = time.strftime("%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}"
        text = f"{self.label}  {clock}  t={media_time:8.3f}"
        scale = max(0.4, luma.shape[1] / 1400)
        thickness = 1 if scale < 0.8 else 2
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        box_h = text_h + baseline + 8
        region = luma[0:box_h, 0 : min(luma.shape[1], text_w + 12)]
        np.right_shift(region, 2, out=region)
        cv2.putText(luma, text, (6, text_h + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_LUMA, thickness, cv2.LINE_AA)

    def _draw_tags(self, luma: np.ndarray, event: VisionEvent) -> None:
        height, width = luma.shape
        sx = sy = 1.0
        if event.frame_size:
            sx, sy = width / max(1, event.frame_size[0]), height / max(1, event.frame_size[1])
        scale = max(0.4, width / 1600)
        loose: list[str] = []
        for tag in event.tags:
            label = f"{tag.name} {tag.confidence:.2f}"
            if tag.box is None:
                loose.append(label)
                continue
            x, y, w, h = tag.box
            x0, y0 = int(x * sx), int(y * sy)
            x1, y1 = int((x + w) * sx), int((y + h) * sy)
            cv2.rectangle(luma, (x0, y0), (x1, y1), TEXT_LUMA, 2)
            cv2.putText(luma, label, (x0, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_LUMA, 1, cv2.LINE_AA)
        if event.text:
            loose.append(event.text[:60])
        for i, label in enumerate(loose[:6]):
            (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            y = 40 + i * (th + 8)
            x = max(0, width - tw - 8)
            box = luma[max(0, y - th - 4) : y + 4, max(0, x - 4) : width]  # clipped on tiny frames
            np.right_shift(box, 2, out=box)
            cv2.putText(luma, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_LUMA, 1, cv2.LINE_AA)

    @staticmethod
    def _blend_band(luma: np.ndarray, mask: np.ndarray) -> None:
        band_h = min(mask.shape[0], luma.shape[0])
        margin = max(0, min(luma.shape[0] // 30, luma.shape[0] - band_h))
        y1 = luma.shape[0] - margin
        y0 = y1 - band_h
        band = luma[y0:y1]
        alpha = mask[-band_h:].astype(np.uint16)
        dark = band.astype(np.uint16) >> 2
        band[:] = ((dark * (255 - alpha) + TEXT_LUMA * alpha) // 255).astype(np.uint8)
