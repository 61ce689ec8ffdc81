"""Test media made with PyAV: H.264 + AAC MPEG-TS segments with frame numbers stamped in the video.

Each segment is a standalone MPEG-TS chunk that starts on a keyframe (as the Livepeer gateway
sends them); timestamps run on across segments. The frame number is drawn as a row of black/white
blocks in the middle of the picture, away from the overlay's header and caption band, so a test
can tell which input frame an output frame came from.
"""

from __future__ import annotations

import io
import math
from fractions import Fraction

import av
import numpy as np

ID_BITS = 16
AUDIO_RATE = 48000


def id_block_geometry(width: int, height: int) -> tuple[int, int, int]:
    """(block size, x0, y0) of the frame-id row."""
    block = max(8, width // (ID_BITS + 2))
    x0 = (width - block * ID_BITS) // 2
    y0 = height // 2 - block // 2
    return block, x0, y0


def stamp_frame_id(luma: np.ndarray, frame_id: int) -> None:
    height, width = luma.shape
    block, x0, y0 = id_block_geometry(width, height)
    for bit in range(ID_BITS):
        value = 235 if (frame_id >> (ID_BITS - 1 - bit)) & 1 else 16
        luma[y0 : y0 + block, x0 + bit * block : x0 + (bit + 1) * block] = value


def read_frame_id(frame: av.VideoFrame) -> int:
    luma = frame.to_ndarray(format="gray") if frame.format.name != "yuv420p" else frame.to_ndarray()[: frame.height]
    height, width = luma.shape
    block, x0, y0 = id_block_geometry(width, height)
    frame_id = 0
    for bit in range(ID_BITS):
        cy, cx = y0 + block // 2, x0 + bit * block + block // 2
        patch = luma[cy - block // 4 : cy + block // 4, cx - block // 4 : cx + block // 4]
        frame_id = (frame_id << 1) | int(patch.mean() > 128)
    return frame_id


def synthetic_picture(width: int, height: int, index: int) -> np.ndarray:
    """An I420 picture: moving gradients (so the encoder has real work) plus the frame id."""
    ys, xs = np.mgrid[0:height, 0:width]
    luma = ((xs + ys + index * 4) % 220 + 16).astype(np.uint8)
    stamp_frame_id(luma, index)
    chroma_u = np.full((height // 2, width // 2), 128 + int(40 * math.sin(index / 15)), np.uint8)
    chroma_v = np.full((height // 2, width // 2), 128 + int(40 * math.cos(index / 15)), np.uint8)
    return np.concatenate([luma, chroma_u.reshape(-1, width), chroma_v.reshape(-1, width)])


def picture_i420(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """An RGB photograph scaled to width×height as an I420 array."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:, :, :3]), format="rgb24")
    return frame.reformat(width=width, height=height, format="yuv420p").to_ndarray()


def tone(start_sample: int, samples: int, freq: float = 440.0) -> np.ndarray:
    t = (np.arange(samples) + start_sample) / AUDIO_RATE
    wave = (0.2 * np.sin(2 * math.pi * freq * t) * 32767).astype(np.int16)
    return np.stack([wave, wave]).reshape(1, -1)  # packed stereo s16: shape (1, samples*2)


def make_segments(
    seconds: float,
    width: int = 512,
    height: int = 512,
    fps: int = 30,
    segment_seconds: float = 1.0,
    audio: bool = True,
    first_frame: int = 0,
    audio_samples: np.ndarray | None = None,
    picture: np.ndarray | None = None,
    stamp_ids: bool = True,
) -> list[bytes]:
    """MPEG-TS segments of `segment_seconds` each (one GOP each).

    `audio_samples` (mono int16 at 48 kHz) replaces the test tone, e.g. with speech; `picture` (an
    RGB photograph) replaces the moving gradient (its frame id is stamped unless `stamp_ids` is off)."""
    still = picture_i420(picture, width, height) if picture is not None else None
    frames_per_segment = max(1, round(fps * segment_seconds))
    total_frames = round(seconds * fps)
    segments = []
    samples_per_frame = AUDIO_RATE // fps
    for seg_start in range(0, total_frames, frames_per_segment):
        buf = io.BytesIO()
        container = av.open(buf, "w", format="mpegts")
        video = container.add_stream(
            "libx264", rate=fps, options={"preset": "ultrafast", "tune": "zerolatency", "bf": "0"}
        )
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.gop_size = frames_per_segment
        video.time_base = Fraction(1, 90000)
        aud = None
        if audio:
            aud = container.add_stream("aac", rate=AUDIO_RATE)
            aud.layout = "stereo"
        for index in range(seg_start, min(total_frames, seg_start + frames_per_segment)):
            number = first_frame + index
            if still is not None:
                planes = still.copy()
                if stamp_ids:
                    stamp_frame_id(planes[:height], number)
            else:
                planes = synthetic_picture(width, height, number)
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts = round(number * 90000 / fps)
            frame.time_base = Fraction(1, 90000)
            container.mux(video.encode(frame))
            if aud is not None:
                start = number * samples_per_frame
                if audio_samples is not None:
                    chunk = audio_samples[start : start + samples_per_frame]
                    chunk = np.pad(chunk, (0, samples_per_frame - len(chunk)))
                    pcm = np.stack([chunk, chunk], axis=1).reshape(1, -1).astype(np.int16)
                else:
                    pcm = tone(start, samples_per_frame)
                aframe = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
                aframe.sample_rate = AUDIO_RATE
                aframe.pts = start
                aframe.time_base = Fraction(1, AUDIO_RATE)
                container.mux(aud.encode(aframe))
        container.mux(video.encode(None))
        if aud is not None:
            container.mux(aud.encode(None))
        container.close()
        segments.append(buf.getvalue())
    return segments


def decode_ts(data: bytes) -> tuple[list[av.VideoFrame], int]:
    """Decode an MPEG-TS byte string: (video frames, number of audio frames)."""
    frames: list[av.VideoFrame] = []
    audio_frames = 0
    if not data:
        return frames, 0
    with av.open(io.BytesIO(data), format="mpegts") as container:
        streams = [s for s in (container.streams.video[:1] + container.streams.audio[:1])]
        for packet in container.demux(streams):
            try:
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        frames.append(frame)
                    else:
                        audio_frames += 1
            except av.InvalidDataError:
                continue
    return frames, audio_frames
