"""The embedded CPU tagger on real photographs (scikit-image's sample data) and synthetic frame
changes. No mocks: OpenCV's bundled Haar cascade runs for real."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import skimage.data

from inference.vision.base import BackendBusy, VisionRequest
from inference.vision.embedded import EMBEDDED_MODEL_NAME, EmbeddedTagger, face_confidence

# the astronaut's face in skimage.data.astronaut() (512x512): roughly x 175-275, y 60-165
FACE_CENTER = (225, 115)


def _center(box: tuple[int, int, int, int]) -> tuple[float, float]:
    x, y, w, h = box
    return x + w / 2, y + h / 2


@pytest.fixture
async def tagger():
    backend = EmbeddedTagger()
    yield backend
    await backend.close()


async def test_astronaut_face_is_tagged_with_a_box_over_the_face(tagger: EmbeddedTagger) -> None:
    image = skimage.data.astronaut()
    result = await tagger.analyze(image, VisionRequest())
    assert result.model == EMBEDDED_MODEL_NAME
    assert result.error is None
    faces = [t for t in result.tags if t.name == "face"]
    assert len(faces) == 1, result.tags
    face = faces[0]
    assert face.confidence >= 0.8
    cx, cy = _center(face.box)
    assert abs(cx - FACE_CENTER[0]) < 30 and abs(cy - FACE_CENTER[1]) < 30, face.box
    assert 60 <= face.box[2] <= 140 and 60 <= face.box[3] <= 140, face.box


async def test_boxes_are_in_input_pixels_when_detection_runs_downscaled(tagger: EmbeddedTagger) -> None:
    # a 1280x720 frame with the photo pasted at (300, 100): detection runs at 640 wide
    canvas = np.full((720, 1280, 3), 40, np.uint8)
    canvas[100:612, 300:812] = skimage.data.astronaut()
    result = await tagger.analyze(canvas, VisionRequest(threshold=0.5))
    faces = [t for t in result.tags if t.name == "face"]
    assert faces, result.tags
    cx, cy = _center(faces[0].box)
    assert abs(cx - (300 + FACE_CENTER[0])) < 40 and abs(cy - (100 + FACE_CENTER[1])) < 40, faces[0].box


async def test_photos_without_faces_give_no_face_tag(tagger: EmbeddedTagger) -> None:
    for image in (skimage.data.coffee(), skimage.data.chelsea(), np.dstack([skimage.data.coins()] * 3)):
        result = await tagger.analyze(np.ascontiguousarray(image), VisionRequest(threshold=0.5))
        assert not [t for t in result.tags if t.name == "face"], result.tags


def test_face_confidence_rises_with_neighbours_and_weight() -> None:
    assert face_confidence(44, 7.4) > 0.9
    assert face_confidence(4, 5.2) < 0.5
    assert face_confidence(20, 6.0) > face_confidence(5, 6.0)
    assert face_confidence(20, 6.0) > face_confidence(20, 1.0)
    assert 0.0 <= face_confidence(0, -5.0) <= face_confidence(1000, 50.0) <= 1.0


def _textured_frame(offset: int = 0) -> np.ndarray:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, size=(240, 320), dtype=np.uint8)
    base = np.roll(base, offset, axis=1)
    return np.ascontiguousarray(np.dstack([base, base // 2, 255 - base]))


async def test_motion_and_scene_change_follow_frame_changes(tagger: EmbeddedTagger) -> None:
    request = VisionRequest(source="stream-a", threshold=0.0, tag_list=("motion", "scene_change"))
    first = await tagger.analyze(_textured_frame(), request)
    assert first.tags == []  # nothing to compare with yet

    still = await tagger.analyze(_textured_frame(), request)
    tags = {t.name: t.confidence for t in still.tags}
    assert tags == {"motion": 0.0, "scene_change": 0.0}

    moved = await tagger.analyze(_textured_frame(offset=40), request)
    tags = {t.name: t.confidence for t in moved.tags}
    assert tags["motion"] > 0.5  # the texture shifted: big pixel differences
    assert tags["scene_change"] < 0.2  # same colours, same histogram
    assert moved.measures["mean_abs_diff"] > 10

    other_scene = await tagger.analyze(skimage.data.coffee(), request)
    tags = {t.name: t.confidence for t in other_scene.tags}
    assert tags["scene_change"] > 0.5
    # threshold applies to frame tags as well
    quiet = await tagger.analyze(skimage.data.coffee(), VisionRequest(source="stream-a", threshold=0.3))
    assert not [t for t in quiet.tags if t.name in ("motion", "scene_change")]


async def test_sources_keep_separate_previous_frames_and_are_bounded() -> None:
    tagger = EmbeddedTagger(max_sources=2)
    try:
        a, b = VisionRequest(source="a", threshold=0.0), VisionRequest(source="b", threshold=0.0)
        await tagger.analyze(_textured_frame(), a)
        await tagger.analyze(skimage.data.coffee(), b)
        result_a = await tagger.analyze(_textured_frame(), a)  # compares with a's frame, not b's
        assert {t.name: t.confidence for t in result_a.tags}["motion"] == 0.0
        await tagger.analyze(_textured_frame(), VisionRequest(source="c"))
        assert tagger.stats()["sources"] == 2  # LRU bound
        tagger.forget("c")
        assert tagger.stats()["sources"] == 1
        # without a source there is no frame comparison at all
        alone = await tagger.analyze(_textured_frame(), VisionRequest(threshold=0.0))
        assert not [t for t in alone.tags if t.name in ("motion", "scene_change")]
    finally:
        await tagger.close()


async def test_tag_list_limits_work_and_description_is_labelled(tagger: EmbeddedTagger) -> None:
    only_motion = await tagger.analyze(skimage.data.astronaut(), VisionRequest(tag_list=("motion",), source="s"))
    assert "faces" not in only_motion.measures  # face detection skipped entirely
    assert not only_motion.tags

    described = await tagger.analyze(skimage.data.astronaut(), VisionRequest(mode="description"))
    assert described.text.startswith(EMBEDDED_MODEL_NAME)
    assert "1 face" in described.text


async def test_pending_work_is_bounded() -> None:
    tagger = EmbeddedTagger(max_pending=1)
    try:
        image = skimage.data.astronaut()
        results = await asyncio.gather(
            *(tagger.analyze(image, VisionRequest()) for _ in range(4)), return_exceptions=True
        )
        busy = [r for r in results if isinstance(r, BackendBusy)]
        done = [r for r in results if not isinstance(r, BaseException)]
        assert busy and done
        assert tagger.stats()["busy_rejections"] == len(busy)
    finally:
        await tagger.close()


async def test_rejects_images_that_break_the_convention(tagger: EmbeddedTagger) -> None:
    with pytest.raises(ValueError):
        await tagger.analyze(np.zeros((10, 10), np.uint8), VisionRequest())
    with pytest.raises(ValueError):
        await tagger.analyze(np.zeros((10, 10, 3), np.float32), VisionRequest())
