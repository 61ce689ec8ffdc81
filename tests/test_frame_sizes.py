"""Any frame size from 16x16 to 4096x2304, odd or even, runs through every stage.

End to end over trickle: an 853x480 input (MPEG-2, 4:2:0 with odd chroma planes) and a 17x17
input (H.264 4:4:4) are decoded, overlaid, encoded (cropped by one pixel to even, never rescaled)
and published, and a WHEP viewer plays the 853x480 one. The stages themselves are also run once
at the smallest and the largest size."""

from __future__ import annotations

import asyncio
import io
from fractions import Fraction

import av
import numpy as np
import pytest

from media.encode import EncoderSettings, TsSegmentEncoder
from media.events import CaptionEvent, Tag, VisionEvent
from media.frames import VideoItem, copy_i420, crop_to_even, plane_array
from media.manager import STREAMS_KEY
from media.overlay import Overlay, OverlayState
from media.webrtc_sink import SharedVideoEncoder, WebRTCEncoderConfig
from server.keys import TRICKLE_KEY
from tests.conftest import wait_until
from tests.media_gen import decode_ts, tone
from tests.trickle_helpers import OutputCollector, publish_realtime
from tests.webrtc_helpers import WhepViewer, loopback_settings

SECONDS = 3


def odd_size_segments(
    width: int, height: int, codec: str, pix_fmt: str, seconds: int = SECONDS, fps: int = 30
) -> list[bytes]:
    """One-second MPEG-TS segments of a moving bar at any size, with a 440 Hz AAC tone."""
    segments = []
    for second in range(seconds):
        buf = io.BytesIO()
        container = av.open(buf, "w", format="mpegts")
        video = container.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.time_base = Fraction(1, 90000)
        video.codec_context.gop_size = fps
        audio = container.add_stream("aac", rate=48000)
        audio.layout = "stereo"
        for index in range(second * fps, (second + 1) * fps):
            frame = av.VideoFrame(width, height, pix_fmt)
            for number, plane in enumerate(frame.planes):
                pixels = plane_array(plane)
                pixels[:] = 128 if number else 60
                if number == 0:
                    x = index % max(1, plane.width)
                    pixels[:, x : x + max(1, plane.width // 8)] = 200
            frame.pts, frame.time_base = round(index * 90000 / fps), Fraction(1, 90000)
            container.mux(video.encode(frame))
            pcm = av.AudioFrame.from_ndarray(tone(index * 1600, 1600), format="s16", layout="stereo")
            pcm.sample_rate, pcm.pts, pcm.time_base = 48000, index * 1600, Fraction(1, 48000)
            container.mux(audio.encode(pcm))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
        container.close()
        segments.append(buf.getvalue())
    return segments


async def run_trickle_stream(server, name: str, segments: list[bytes], viewer: WhepViewer | None = None):
    trickle = server.app[TRICKLE_KEY]
    trickle.create_channel(f"{name}-in")
    trickle.create_channel(f"{name}-out")
    resp = await server.session.post(
        server.url("/stream/start"),
        json={
            "subscribe_url": server.trickle_url(f"{name}-in"),
            "publish_url": server.trickle_url(f"{name}-out"),
            "params": {"captions": {"burn_in": True}},
        },
    )
    body = await resp.json()
    assert resp.status == 200, body
    stream = server.app[STREAMS_KEY].get_active(body["manifest_id"])
    # a caption and tags to burn in: every overlay part draws at this size
    stream.events.publish(CaptionEvent(text="odd sizes are fine", final=True))
    stream.events.publish(VisionEvent(kind="tags", tags=[Tag("bar", 0.9, (1, 1, 5, 5))], frame_size=(17, 17)))
    collector = OutputCollector(server.trickle_url(f"{name}-out"), token=server.token("trickle")).start()
    publishing = asyncio.create_task(
        publish_realtime(server.trickle_url(f"{name}-in"), segments, token=server.token("trickle"))
    )
    try:
        if viewer is not None:
            assert await wait_until(lambda: stream.frames_out > 5, timeout=20)
            resp = await viewer.view(server.session, server.url(f"/whep/{stream.manifest_id}"), None)
            assert resp.status == 201, await resp.text()
        await publishing
        # the newest frames stay in the demuxer until more input would arrive (live input)
        assert await wait_until(lambda: stream.frames_in >= len(segments) * 30 - 6, timeout=10), stream.status()
        assert await wait_until(lambda: stream.frames_out + stream.frames_dropped >= stream.frames_in, timeout=10)
        assert await wait_until(lambda: stream.status()["sinks"]["trickle"]["segments"] >= 2, timeout=10)
    finally:
        publishing.cancel()
        await asyncio.gather(publishing, return_exceptions=True)
    status = stream.status()
    await server.session.delete(server.url(f"/stream/{stream.manifest_id}"))
    await asyncio.wait_for(collector.ended.wait(), 15)
    await collector.stop()
    return status, collector


async def test_853x480_input_runs_through_every_stage_and_plays_over_whep(make_server):
    server = await make_server(**loopback_settings())
    viewer = WhepViewer()
    try:
        status, collector = await run_trickle_stream(
            server, "odd853", odd_size_segments(853, 480, "mpeg2video", "yuv420p"), viewer
        )
        assert await wait_until(lambda: len(viewer.received.video) >= 10, timeout=20)
        assert {(v.width, v.height) for v in viewer.received.video} == {(852, 480)}
    finally:
        await viewer.close()
    assert status["state"] != "ERROR" and status["last_error"] is None, status
    # all the input was decoded; the share that keeps up is a speed figure (bench/bench_pipeline.py)
    assert status["frames_in"] >= 0.95 * (SECONDS * 30 - 6) and status["frames_out"] > 0
    frames, audio_frames = decode_ts(collector.data())
    # never more than was published (the status was read before the stop flushed the demuxer)
    assert 0 < len(frames) <= SECONDS * 30 and audio_frames > 0
    assert {(f.width, f.height) for f in frames} == {(852, 480)}  # cropped one column, not rescaled
    # the overlay drew its header (dark band, bright text) on the odd-width picture
    luma = frames[-1].to_ndarray()[:480]
    header = luma[2:14, 4:300]  # the input has no pixel darker than 60 anywhere
    assert (header < 40).mean() > 0.3 and header.max() > 180


async def test_17x17_input_runs_through_every_stage(make_server):
    server = await make_server(**loopback_settings())
    status, collector = await run_trickle_stream(server, "odd17", odd_size_segments(17, 17, "libx264", "yuv444p"))
    assert status["state"] != "ERROR" and status["last_error"] is None, status
    assert status["frames_out"] >= 0.95 * status["frames_in"] >= 0.95 * (SECONDS * 30 - 6)
    frames, _ = decode_ts(collector.data())
    assert len(frames) >= 0.9 * status["frames_in"]
    assert {(f.width, f.height) for f in frames} == {(16, 16)}


@pytest.mark.parametrize("size", [(16, 16), (17, 17), (853, 480), (4096, 2304), (4095, 2303)])
def test_every_stage_accepts_the_size(size):
    width, height = size
    frame = av.VideoFrame(width, height, "yuv420p")
    for number, plane in enumerate(frame.planes):
        plane_array(plane)[:] = 128 if number else 100
    state = OverlayState()
    state.on_event(CaptionEvent(text="a caption on any size", final=True))
    state.on_event(
        VisionEvent(
            kind="tags",
            tags=[Tag("thing", 0.8, (0, 0, 8, 8)), Tag("loose", 0.7)],
            frame_size=(width, height),
            text="on-screen text",
        )
    )
    drawn = Overlay("size-test", state).draw(frame, 1.0)
    assert (drawn.width, drawn.height) == (width, height)
    luma = plane_array(drawn.planes[0])
    assert luma.max() > 180 and luma.min() < 100  # header/caption text and darkened bands

    cropped = crop_to_even(drawn)
    assert (cropped.width, cropped.height) == (width - width % 2, height - height % 2)
    assert np.array_equal(plane_array(cropped.planes[0]), luma[: cropped.height, : cropped.width])

    class Segments:
        data = bytearray()

        def begin_segment(self) -> None: ...

        def write(self, data: bytes) -> None:
            self.data += data

        def end_segment(self) -> None: ...

    sink = Segments()
    encoder = TsSegmentEncoder(sink, width, height, False, EncoderSettings(preset="ultrafast"))
    assert encoder.encode_video(drawn, 0.0)
    encoder.close()
    frames, _ = decode_ts(bytes(sink.data))
    assert [(f.width, f.height) for f in frames] == [(cropped.width, cropped.height)]

    for codec in ("VP8", "H264"):
        shared = SharedVideoEncoder("size-test", codec, WebRTCEncoderConfig(), loop=None)
        packets = shared._encode(VideoItem(copy_i420(drawn), 0.0))
        packets += list(shared._context.encode(None))
        assert packets and packets[0].is_keyframe
