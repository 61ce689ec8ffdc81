"""Frame conversions reuse one swscale context per thread (media.frames.reformat / rgb_array).

Converting many fresh frames on one thread must not add threads (a context per frame would start
swscale slice threads with each). The frames are kept alive on purpose, so a leak would show as a
thread count, not a race. Only our own functions are checked: what PyAV does by itself differs
between its versions."""

from __future__ import annotations

import os
import threading

import av
import numpy as np

from media.frames import reformat, rgb_array


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _fresh_frames(count: int, width: int = 640, height: int = 360) -> list[av.VideoFrame]:
    rng = np.random.default_rng(3)
    frames = []
    for _ in range(count):
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        frames.append(reformat(av.VideoFrame.from_ndarray(rgb, format="rgb24"), "yuv420p"))
    return frames


def test_conversions_reuse_this_threads_context() -> None:
    def convert_in_a_new_thread(convert) -> int:
        """Threads added by converting 8 fresh frames (kept alive) after a first conversion."""
        out: list[int] = []
        shapes: set[tuple[int, ...]] = set()

        def run() -> None:
            frames = _fresh_frames(9)
            convert(frames[0])
            before = _threads()
            arrays = [convert(frame) for frame in frames[1:]]
            out.append(_threads() - before)
            shapes.update(a.shape for a in arrays)

        worker = threading.Thread(target=run)
        worker.start()
        worker.join(timeout=60)
        assert shapes == {(360, 640, 3)}  # checked here: an assertion in the thread would not fail the test
        return out[0]

    assert convert_in_a_new_thread(rgb_array) == 0
    assert convert_in_a_new_thread(lambda f: reformat(f, "rgb24").to_ndarray()) == 0


def test_results_are_independent_frames_and_scale() -> None:
    dark, light = (
        reformat(av.VideoFrame.from_ndarray(np.full((240, 320, 3), v, np.uint8), format="rgb24"), "yuv420p")
        for v in (20, 220)
    )
    a, b = rgb_array(dark), rgb_array(light)
    assert not np.shares_memory(a, b)
    assert abs(int(a[0, 0, 0]) - 20) <= 3 and abs(int(b[0, 0, 0]) - 220) <= 3
    assert rgb_array(light, 161, 91).shape == (91, 161, 3)  # odd sizes too
    small = reformat(dark, "yuv420p", 100, 50)
    assert (small.width, small.height, small.format.name) == (100, 50, "yuv420p")
