"""Streaming-core benchmarks: worker throughput against the ffmpeg CLI, per-frame pipeline latency,
end-to-end trickle latency, and memory under overload.

    .venv/bin/python -m bench.bench_pipeline [--quick]

Prints tables; never passes or fails. Every figure is measured in this process on the same input:

1. **Throughput**: frames/s of the worker path (PyAV decode → overlay → libx264 + Opus → MPEG-TS
   segments) against `ffmpeg` doing the same decode and x264 encode (same preset, tune, no B-frames,
   same GOP) on the same file, at 512x512 and 1280x720. The ratio is ours ÷ ffmpeg's.
2. **Latency** (real time over loopback trickle, 1 s input segments, frame numbers stamped into the
   video): per-frame pipeline latency (decoded → encoded) p50/p95, and end-to-end latency from an
   input frame's segment being published to that frame being received from the output channel.
3. **Memory**: peak RSS of a 60 s overloaded run (30 fps input into a stage deliberately slowed to
   20 fps): frames drop and are counted; RSS must stay flat.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from media.decode import BytePipe, MediaDecoder  # noqa: E402
from media.encode import EncoderSettings, TsSegmentEncoder  # noqa: E402
from media.endpoints import MediaSink, MediaSource  # noqa: E402
from media.manager import STREAMS_KEY  # noqa: E402
from media.stream import Stream, StreamConfig  # noqa: E402
from server.keys import TRICKLE_KEY  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.conftest import start_server, stop_server  # noqa: E402
from tests.media_gen import make_segments, read_frame_id  # noqa: E402
from trickle.client import TricklePublisher, TrickleSubscriber  # noqa: E402

PRESET, TUNE, GOP_SECONDS = "superfast", "zerolatency", 2.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


# -- 1. throughput ------------------------------------------------------------------------------
class BytesSource(MediaSource):
    """Feeds a whole MPEG-TS file through the production BytePipe + MediaDecoder, as fast as it can."""

    name = "file"

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pipe = BytePipe(max_chunks=64)
        self.decoder: MediaDecoder | None = None
        self.task: asyncio.Task | None = None
        self.done = asyncio.Event()

    async def start(self, ingest) -> None:
        loop = asyncio.get_running_loop()
        self.decoder = MediaDecoder(
            self.pipe, ingest, "decode-bench", on_exit=lambda _reason: loop.call_soon_threadsafe(self.done.set)
        )
        self.decoder.start()

        async def feed() -> None:
            for i in range(0, len(self.data), 32 * 1024):
                await self.pipe.write(self.data[i : i + 32 * 1024])
            self.pipe.write_eof()

        self.task = asyncio.create_task(feed())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        if self.decoder:
            self.decoder.stop()
            await asyncio.get_running_loop().run_in_executor(None, self.decoder.join, 5)


class CountingTsSink(MediaSink):
    """The production encoder/segmenter with the network replaced by a byte counter."""

    name = "ts"

    def __init__(self) -> None:
        self.encoder: TsSegmentEncoder | None = None
        self.has_audio = False
        self.bytes = 0

    def configure(self, has_audio: bool) -> None:
        self.has_audio = has_audio

    def begin_segment(self) -> None: ...

    def write(self, data: bytes) -> None:
        self.bytes += len(data)

    def end_segment(self) -> None: ...

    def send_video(self, item) -> None:
        if self.encoder is None:
            settings = EncoderSettings(preset=PRESET, tune=TUNE, gop_seconds=GOP_SECONDS)
            self.encoder = TsSegmentEncoder(self, item.frame.width, item.frame.height, self.has_audio, settings)
        with self.encoder.lock:
            self.encoder.encode_video(item.frame, item.media_time)

    def send_audio(self, item) -> None:
        if self.encoder is not None:
            with self.encoder.lock:
                self.encoder.encode_audio(item.frame, item.media_time)

    async def stop(self) -> None:
        if self.encoder is not None:
            self.encoder.close()


async def ours_fps(data: bytes, frames: int, stages: list | None = None, params: dict | None = None) -> float:
    sink = CountingTsSink()
    source = BytesSource(data)
    stream = Stream(
        "bench",
        source,
        [sink],
        stages or [],
        params or {},
        asyncio.get_running_loop(),
        StreamConfig(video_queue_size=frames + 16),
    )  # no drops: measure throughput
    start = time.perf_counter()
    await stream.start()
    await source.done.wait()
    while stream.frames_out < stream.frames_in:
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - start
    await stream.stop("bench done")
    return stream.frames_out / elapsed


def ffmpeg_fps(path: str, frames: int) -> float:
    cmd = [
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-i",
        path,
        "-map",
        "0:v",
        "-map",
        "0:a",
        "-c:v",
        "libx264",
        "-preset",
        PRESET,
        "-tune",
        TUNE,
        "-bf",
        "0",
        "-g",
        str(int(GOP_SECONDS * 30)),
        "-c:a",
        "libopus",
        "-b:a",
        "96k",
        "-ar",
        "48000",
        "-ac",
        "2",
        "-f",
        "mpegts",
        os.devnull,
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return frames / (time.perf_counter() - start)


async def bench_throughput(seconds: float, repeats: int) -> None:
    rows = []
    for width, height in ((512, 512), (1280, 720)):
        data = b"".join(make_segments(seconds, width, height, fps=30))
        frames = round(seconds * 30)
        with tempfile.NamedTemporaryFile(suffix=".ts") as tmp:
            tmp.write(data)
            tmp.flush()
            ffmpeg_runs, ours_runs = [], []
            for _ in range(repeats):  # interleaved, so both see the same machine state
                ffmpeg_runs.append(ffmpeg_fps(tmp.name, frames))
                ours_runs.append(await ours_fps(data, frames))
        ff, ours = statistics.median(ffmpeg_runs), statistics.median(ours_runs)
        rows.append(
            [f"{width}x{height}", f"{ours:.1f}", f"{ff:.1f}", f"{ours / ff:.2f}", ">= 0.90" if width == 512 else "-"]
        )
    table(
        f"Throughput: decode → overlay → x264 {PRESET}/{TUNE} + Opus → TS segments ({seconds:.0f} s input, "
        f"median of {repeats})",
        ["size", "streamlens fps", "ffmpeg CLI fps", "ratio", "goal"],
        rows,
    )


async def bench_vision_cost(seconds: float, repeats: int) -> None:
    """Worker fps with the vision stage on (embedded tagger, one sample every 0.5 s) vs off."""
    from inference.vision.stage import VisionBackends, VisionStage

    backends = VisionBackends()
    data = b"".join(make_segments(seconds, 512, 512, fps=30))
    frames = round(seconds * 30)
    params = {"vision": {"enabled": True, "interval": 0.5, "backend": "embedded"}}
    off_runs, on_runs = [], []
    for _ in range(repeats):
        off_runs.append(await ours_fps(data, frames))
        on_runs.append(await ours_fps(data, frames, [VisionStage(backends)], params))
    await backends.close()
    off, on = statistics.median(off_runs), statistics.median(on_runs)
    table(
        "Vision cost: worker fps at 512x512 with the vision stage on (embedded, every 0.5 s) vs off",
        ["vision off fps", "vision on fps", "ratio", "goal"],
        [[f"{off:.1f}", f"{on:.1f}", f"{on / off:.2f}", ">= 0.95"]],
    )


# -- 2. real-time latency over trickle ----------------------------------------------------------
def packet_ends(data: bytes) -> list[tuple[int, int]]:
    """(frame id, byte offset where the frame's data ends) for every video frame in a TS chunk.
    A frame's bytes end where the next packet (of any track) starts."""
    out: list[tuple[int, int]] = []
    with av.open(io.BytesIO(data), format="mpegts") as container:
        video = container.streams.video[0]
        pending: list[av.Packet] = []
        positions: list[tuple[int, av.Packet]] = []
        for packet in container.demux():
            if packet.pos is not None and packet.pos >= 0:
                positions.append((packet.pos, packet))
        for index, (_pos, packet) in enumerate(positions):
            if packet.stream is not video or packet.size == 0:
                continue
            end = positions[index + 1][0] if index + 1 < len(positions) else len(data)
            pending.append(packet)
            for frame in packet.decode():
                out.append((read_frame_id(frame), end))
    return out


async def bench_latency(seconds: float) -> dict:
    server = await start_server(Settings(host="127.0.0.1", port=0))
    loop = asyncio.get_running_loop()
    trickle = server.app[TRICKLE_KEY]
    trickle.create_channel("lat")
    trickle.create_channel("lat-out")
    segments = make_segments(seconds, 512, 512, fps=30)
    input_written: dict[int, float] = {}  # frame id → time its last byte was written
    segment_posted: dict[int, float] = {}  # frame id → time its segment's POST started
    chunks: list[tuple[int, float]] = []  # output byte offset where a chunk ends, arrival time
    out_bytes = bytearray()
    first_post: list[float] = []

    resp = await server.session.post(
        server.url("/stream/start"),
        json={"subscribe_url": server.trickle_url("lat"), "publish_url": server.trickle_url("lat-out")},
    )
    manifest_id = (await resp.json())["manifest_id"]

    async def collect() -> None:
        sub = TrickleSubscriber(server.trickle_url("lat-out"))
        try:
            while (segment := await sub.next_segment()) is not None:
                while data := await segment.read():
                    out_bytes.extend(data)
                    chunks.append((len(out_bytes), loop.time()))
                await segment.close()
        finally:
            await sub.close()

    async def publish() -> None:
        publisher = TricklePublisher(server.trickle_url("lat"))
        start = loop.time()
        for index, segment in enumerate(segments):
            await asyncio.sleep(max(0.0, start + index - loop.time()))
            ends = packet_ends(segment)
            writer = await publisher.next_segment()
            posted = loop.time()
            first_post.append(posted) if not first_post else None
            for frame_id, _ in ends:
                segment_posted[frame_id] = posted
            # stream the bytes in real time: each frame's data is written when the frame is "live"
            offset = 0
            for n, (frame_id, end) in enumerate(ends):
                await asyncio.sleep(max(0.0, posted + n / 30 - loop.time()))
                await writer.write(segment[offset:end])
                offset = end
                input_written[frame_id] = loop.time()
            if offset < len(segment):
                await writer.write(segment[offset:])
            await writer.close()
        await publisher.close(delete_channel=False)

    collector = asyncio.create_task(collect())
    await publish()
    stream = server.app[STREAMS_KEY].get(manifest_id)
    await asyncio.sleep(2.0)
    pipeline = stream.latency.summary_ms()
    status = stream.status()
    await stream.stop("bench done")
    await asyncio.wait_for(collector, 10)
    await stop_server(server)

    arrival: dict[int, float] = {}
    chunk_index = 0
    for frame_id, end in packet_ends(bytes(out_bytes)):
        while chunk_index < len(chunks) and chunks[chunk_index][0] < end:
            chunk_index += 1
        if chunk_index < len(chunks):
            arrival.setdefault(frame_id, chunks[chunk_index][1])
    frame_latency = [arrival[i] - input_written[i] for i in arrival if i in input_written]
    segment_latency = [arrival[i] - segment_posted[i] for i in arrival if i in segment_posted]
    first_output = min(arrival.values()) - first_post[0] if arrival else float("nan")
    return {
        "frames_in": status["frames_in"],
        "frames_out": status["frames_out"],
        "dropped": status["frames_dropped"],
        "pipeline_p50": pipeline["p50"],
        "pipeline_p95": pipeline["p95"],
        "frame_p50": pct(frame_latency, 50) * 1000,
        "frame_p95": pct(frame_latency, 95) * 1000,
        "segment_p50": pct(segment_latency, 50) * 1000,
        "segment_p95": pct(segment_latency, 95) * 1000,
        "first_output": first_output * 1000,
        "matched": len(frame_latency),
        "by_frame": {i: arrival[i] - input_written[i] for i in arrival if i in input_written},
    }


# -- 3. memory under overload -------------------------------------------------------------------
async def bench_overload(seconds: float) -> dict:
    server = await start_server(Settings(host="127.0.0.1", port=0, debug_frame_delay_ms=50))
    trickle = server.app[TRICKLE_KEY]
    trickle.create_channel("ovl")
    trickle.create_channel("ovl-out")
    resp = await server.session.post(
        server.url("/stream/start"),
        json={"subscribe_url": server.trickle_url("ovl"), "publish_url": server.trickle_url("ovl-out")},
    )
    manifest_id = (await resp.json())["manifest_id"]
    process = psutil.Process()
    samples: list[tuple[float, float]] = []
    loop = asyncio.get_running_loop()
    segment = make_segments(1, 512, 512, fps=30)

    async def drain() -> None:  # a consumer on the output, as the gateway would be
        sub = TrickleSubscriber(server.trickle_url("ovl-out"))
        try:
            while (seg := await sub.next_segment()) is not None:
                while await seg.read():
                    pass
                await seg.close()
        finally:
            await sub.close()

    async def publish() -> None:
        publisher = TricklePublisher(server.trickle_url("ovl"))
        start = loop.time()
        for index in range(int(seconds)):
            await asyncio.sleep(max(0.0, start + index - loop.time()))
            # a fresh segment each second with running timestamps (1 s of 30 fps video)
            data = make_segments(1, 512, 512, fps=30, first_frame=index * 30)[0]
            writer = await publisher.next_segment()
            for i in range(0, len(data), 8192):
                await writer.write(data[i : i + 8192])
            await writer.close()
            samples.append((loop.time() - start, process.memory_info().rss / 2**20))
        await publisher.close(delete_channel=False)

    del segment
    drainer = asyncio.create_task(drain())
    await publish()
    stream = server.app[STREAMS_KEY].get(manifest_id)
    status = stream.status()
    await stream.stop("bench done")
    await asyncio.wait_for(drainer, 10)
    await stop_server(server)
    settled = [rss for t, rss in samples if t >= 10]
    return {
        "frames_in": status["frames_in"],
        "frames_out": status["frames_out"],
        "dropped": status["frames_dropped"],
        "rss_10s": settled[0],
        "rss_peak": max(settled),
        "rss_end": settled[-1],
        "growth": max(settled) - settled[0],
    }


async def main(quick: bool) -> None:
    if shutil.which("ffmpeg") is None:
        print("ffmpeg CLI not found: run `make bench` (it installs Debian's ffmpeg)")
        return
    await bench_throughput(seconds=5 if quick else 10, repeats=1 if quick else 3)
    await bench_vision_cost(seconds=5 if quick else 10, repeats=1 if quick else 3)
    lat = await bench_latency(seconds=10 if quick else 30)
    table(
        "Latency at 512x512, 30 fps, 1 s input segments, real time over loopback trickle",
        ["measure", "p50 ms", "p95 ms", "goal"],
        [
            ["pipeline (decoded → encoded)", f"{lat['pipeline_p50']:.1f}", f"{lat['pipeline_p95']:.1f}", "p95 <= 50"],
            [
                "end to end (frame's bytes published → frame received)",
                f"{lat['frame_p50']:.0f}",
                f"{lat['frame_p95']:.0f}",
                "-",
            ],
            [
                "end to end (frame's segment POST started → frame received)",
                f"{lat['segment_p50']:.0f}",
                f"{lat['segment_p95']:.0f}",
                "p50 <= 1200",
            ],
        ],
    )
    print(
        f"first output frame {lat['first_output']:.0f} ms after the first input POST "
        f"(pytrickle's passthrough example: about 2 s on the same kind of input); frames in/out/dropped "
        f"{lat['frames_in']}/{lat['frames_out']}/{lat['dropped']}; {lat['matched']} frames matched by id"
    )
    ovl = await bench_overload(seconds=20 if quick else 60)
    table(
        f"Overload: 30 fps in, worker slowed to 20 fps, {20 if quick else 60} s",
        ["measure", "value", "goal"],
        [
            [
                "frames in / out / dropped",
                f"{ovl['frames_in']} / {ovl['frames_out']} / {ovl['dropped']}",
                "drops counted",
            ],
            [
                "RSS at 10 s / peak / end (MiB)",
                f"{ovl['rss_10s']:.0f} / {ovl['rss_peak']:.0f} / {ovl['rss_end']:.0f}",
                "-",
            ],
            ["RSS growth after 10 s (MiB)", f"{ovl['growth']:.1f}", "<= 30"],
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (for a smoke check)")
    asyncio.run(main(parser.parse_args().quick))
