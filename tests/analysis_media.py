"""Recorded test files for the analysis tests and bench: MP4 (H.264, optional AAC) written with PyAV.

`write_video(path, seconds, picture=...)` calls `picture(t)` for each frame time and encodes what it
returns (RGB uint8). Helpers draw the pictures: a plain grey card, scikit-image's astronaut, a card
with words rendered on it. `audio` (16 kHz mono float32) becomes the sound track.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from fractions import Fraction

import aiohttp
import av
import cv2
import numpy as np

Picture = Callable[[float], np.ndarray]


def plain_card(width: int, height: int, shade: int = 96) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    grey = (shade + (xs + ys) % 32).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def astronaut_card(width: int, height: int) -> np.ndarray:
    from skimage import data

    photo = data.astronaut()
    side = min(width, height)
    face = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)
    card = plain_card(width, height)
    x0 = (width - side) // 2
    card[:, x0 : x0 + side] = face[:height]
    return card


def text_card(width: int, height: int, words: str) -> np.ndarray:
    card = np.full((height, width, 3), 255, np.uint8)
    scale = width / 320
    cv2.putText(
        card,
        words,
        (int(12 * scale), height // 2),
        cv2.FONT_HERSHEY_SIMPLEX,
        1.1 * scale,
        (0, 0, 0),
        max(2, int(3 * scale)),
        cv2.LINE_AA,
    )
    return card


def write_video(
    path: str,
    seconds: float,
    picture: Picture,
    fps: int = 10,
    width: int = 320,
    height: int = 240,
    gop: int | None = None,
    audio: np.ndarray | None = None,
    bit_rate: int | None = None,
    container_format: str | None = None,
) -> str:
    """Encode `seconds` of video; `audio` (16 kHz mono float32) is muxed as AAC when given."""
    with av.open(path, "w", format=container_format) as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        options = {"preset": "ultrafast"}
        if bit_rate:
            video.bit_rate = bit_rate
        video.codec_context.gop_size = gop or fps * 2
        video.options = options
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=16000)
            sound.layout = "mono"
        frames = round(seconds * fps)
        for index in range(frames):
            rgb = picture(index / fps)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            container.mux(video.encode(frame.reformat(format="yuv420p")))
        container.mux(video.encode(None))
        if sound is not None:
            pcm = np.clip(audio, -1, 1).astype(np.float32)
            step = 1024
            for start in range(0, len(pcm), step):
                chunk = pcm[start : start + step].reshape(1, -1)
                aframe = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                aframe.sample_rate = 16000
                aframe.pts = start
                aframe.time_base = Fraction(1, 16000)
                container.mux(sound.encode(aframe))
            container.mux(sound.encode(None))
    return path


def face_between(start: float, end: float, width: int = 320, height: int = 240) -> Picture:
    """A plain card, with the astronaut from `start` to `end` seconds."""
    plain, face = plain_card(width, height), astronaut_card(width, height)
    return lambda t: face if start <= t < end else plain


def text_between(start: float, end: float, words: str, width: int = 320, height: int = 240) -> Picture:
    plain, card = plain_card(width, height), text_card(width, height, words)
    return lambda t: card if start <= t < end else plain


# -- a server for the analysis tests, and a local file server for video_url --------------------------


class FileServer:
    """Serves files from one directory on 127.0.0.1 (a real HTTP origin for `video_url`)."""

    def __init__(self, directory: str, host: str = "127.0.0.1") -> None:
        self.directory = directory
        self.host = host
        self.requests = 0
        self._runner = None
        self.port = 0

    async def __aenter__(self) -> FileServer:
        from aiohttp import web

        async def count(request, handler):
            self.requests += 1
            return await handler(request)

        app = web.Application(middlewares=[web.middleware(count)])

        async def redirect(_request):
            raise web.HTTPFound("/files/x")

        app.router.add_static("/files/", self.directory)
        app.router.add_get("/redirect", redirect)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.port}/files/{name}"


async def wait_job(session, base_url: str, job_id: str, timeout: float = 60.0) -> dict:
    """Poll a job until it is no longer queued/running (bounded in time)."""
    deadline = time.monotonic() + timeout
    while True:
        async with session.get(f"{base_url}/v1/jobs/{job_id}") as resp:
            job = await resp.json()
        if job["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return job
        await asyncio.sleep(0.1)


def video_form(path: str, **fields) -> aiohttp.FormData:
    """A multipart body: the file as `video`, other fields as text (JSON for non-strings)."""
    form = aiohttp.FormData()
    for key, value in fields.items():
        form.add_field(key, value if isinstance(value, str) else json.dumps(value))
    with open(path, "rb") as handle:
        form.add_field("video", handle.read(), filename=path.rsplit("/", 1)[-1], content_type="video/mp4")
    return form
