"""The burn-in overlay: luma-only drawing, Unicode captions rendered once per change, state rules."""

from __future__ import annotations

import av
import numpy as np

from media.events import CaptionEvent, Tag, VisionEvent
from media.overlay import CaptionBand, Overlay, OverlayState
from tests.media_gen import synthetic_picture


def frame_of(width: int = 640, height: int = 360) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(synthetic_picture(width, height, 7), format="yuv420p")
    frame.pts = 1234
    return frame


def test_caption_state_partials_finals_and_withdrawals():
    state = OverlayState()
    state.on_event(CaptionEvent(id=10, text="hello wor", final=False))
    assert state.caption_lines()[1] == ["hello wor"]
    state.on_event(CaptionEvent(id=10, text="hello world", final=True, translations={"es": "hola mundo"}))
    assert state.caption_lines()[1] == ["hello world", "hola mundo"]
    state.on_event(CaptionEvent(id=11, text="next one", final=False))
    state.on_event(CaptionEvent(id=10, text="hello world", final=True, translations={"es": "hola mundo"}))
    assert state.caption_lines()[1][-1] == "next one"  # a late re-sent final keeps the newer partial
    version = state.caption_version
    state.on_event(CaptionEvent(id=11, text="", final=True))  # the partial's words were dropped
    assert state.caption_lines()[1] == ["hello world", "hola mundo"] and state.caption_version == version + 1


def test_overlay_draws_on_luma_only_and_keeps_timestamps():
    state = OverlayState()
    overlay = Overlay("stream-x", state)
    source = frame_of()
    before = source.to_ndarray()
    out = overlay.draw(source, media_time=3.5)
    after = out.to_ndarray()
    assert out.pts == 1234 and (out.width, out.height) == (640, 360)
    assert np.array_equal(after[360:], before[360:])  # chroma untouched: no RGB round trip
    assert np.abs(after[:20, :200].astype(int) - before[:20, :200]).mean() > 20  # the header
    assert np.array_equal(source.to_ndarray(), before)  # the decoder's frame is never written to


def test_unicode_caption_band_is_rendered_once_per_change():
    band = CaptionBand()
    first = band.mask_for(1, ["¿Dónde está la estación? — Ça va très bien"], 640, 360)
    assert first is not None and first.max() == 255 and first.shape[1] == 640
    assert band.mask_for(1, ["ignored: same version"], 640, 360) is first  # cached, not re-rendered
    assert band.mask_for(2, [], 640, 360) is None


def test_vision_boxes_are_drawn_scaled_to_the_frame():
    state = OverlayState()
    state.on_event(VisionEvent(kind="tags", tags=[Tag("face", 0.9, (100, 50, 80, 80))], frame_size=(320, 180)))
    out = Overlay("s", state).draw(frame_of(), media_time=0.0).to_ndarray()[:360]
    # the box was given in 320x180 coordinates: on the 640x360 frame its top edge is at y=100
    assert out[100, 210:350].mean() > 200
