"""Per-stream outputs benchmarks: RTMP in → RTMP out added latency, HLS live-edge latency, and CPU
per stream with each output on, at 1 and 4 concurrent streams.

    .venv/bin/python -m bench.bench_outputs [--quick]

Prints tables with the goals beside the figures; never passes or fails. Needs ffmpeg and nginx
with Debian's libnginx-mod-rtmp (the platform the outputs push to, as in the tests).

1. **RTMP → RTMP latency**: a publisher (a child process, PyAV) sends 320x180 frames in real time
   over RTMP, each frame's number stamped into its pixels, and prints when it sent each one; a
   reader (another child, PyAV) plays the stream back from nginx and prints when each stamped
   frame arrived. Latency = arrival − send, per frame, p50/p95. Reference: the same publisher
   straight to nginx (no streamlens) in the same process; the difference is what streamlens adds
   (ingest, decode, overlay, re-encode with CEA-608, the push).
2. **HLS live edge** (same run): the video playlist polled every 50 ms; when a segment is listed,
   its last frame's stamp gives how long ago that frame was sent (wall clock, p50/p95; the goal's
   figure), and its first frame's how old the oldest picture in the newest segment is.
3. **CPU per stream**: N FFmpeg publishers (320x180@15, `-re`) into the RTMP ingest, captions on
   (the speech stage runs; caption finals are also put on each stream's bus so burn-in and 608
   have text), outputs none / RTMP / HLS / both, N = 1 and 4: CPU seconds of the server (this
   process and its pushing FFmpeg children) per stream-second, and the share of input frames
   each output sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RTMP_PORT", "0")

WIDTH, HEIGHT, FPS = 320, 180, 15
AUDIO_RATE = 48000
GOALS = {"rtmp_added_p95": 1.0, "hls_edge": 4.0, "frames_out": 0.90}
CAPTION_WORDS = ("HELLO WORLD", "LIVE CAPTIONS", "STREAM LENS")
THIS = str(Path(__file__).resolve())


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    rows = [row + [""] * (len(header) - len(row)) for row in rows]  # short rows: blank cells
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)))


# -- child processes: a stamping publisher and a stamp reader (PyAV, each in its own process) ----
def child_publish(url: str, seconds: float) -> None:
    """Publish stamped frames + a tone over RTMP in real time; print `S <frame> <monotonic>`."""
    from tests.media_gen import synthetic_picture, tone

    container = av.open(url, "w", format="flv", options={"flvflags": "no_duration_filesize"})
    video = container.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "tune": "zerolatency"})
    video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    video.codec_context.gop_size = FPS
    video.codec_context.max_b_frames = 0
    audio = container.add_stream("aac", rate=AUDIO_RATE)
    audio.layout = "stereo"
    samples = AUDIO_RATE // FPS
    print("READY", flush=True)
    start = time.monotonic()
    for number in range(round(seconds * FPS)):
        delay = start + number / FPS - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        frame = av.VideoFrame.from_ndarray(synthetic_picture(WIDTH, HEIGHT, number), format="yuv420p")
        frame.pts, frame.time_base = number, Fraction(1, FPS)
        container.mux(video.encode(frame))
        pcm = av.AudioFrame.from_ndarray(tone(number * samples, samples), format="s16", layout="stereo")
        pcm.sample_rate, pcm.pts, pcm.time_base = AUDIO_RATE, number * samples, Fraction(1, AUDIO_RATE)
        container.mux(audio.encode(pcm))
        print(f"S {number} {time.monotonic():.6f}", flush=True)
    container.close()


def child_read(url: str, seconds: float) -> None:
    """Play `url` and print `R <stamp> <monotonic>` for every decoded frame."""
    from tests.media_gen import read_frame_id

    options = {"fflags": "nobuffer", "flags": "low_delay", "analyzeduration": "2000000"}
    container = av.open(url, "r", options=options, timeout=(15, 10))
    deadline = time.monotonic() + seconds
    for frame in container.decode(video=0):
        print(f"R {read_frame_id(frame)} {time.monotonic():.6f}", flush=True)
        if time.monotonic() > deadline:
            break
    container.close()


class Child:
    """A child process of this file; its `S`/`R` lines collected as {frame: monotonic time}."""

    def __init__(self, mode: str, url: str, seconds: float) -> None:
        self.args = [sys.executable, THIS, f"--{mode}", url, "--child-seconds", str(seconds)]
        self.times: dict[int, float] = {}
        self.ready = asyncio.Event()
        self.proc: asyncio.subprocess.Process | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Child:
        self.proc = await asyncio.create_subprocess_exec(*self.args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            parts = raw.decode().split()
            if parts == ["READY"]:
                self.ready.set()
            elif len(parts) == 3:
                self.times.setdefault(int(parts[1]), float(parts[2]))
                self.ready.set()

    async def finish(self, timeout: float) -> None:
        assert self.proc is not None and self.task is not None
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        await asyncio.gather(self.task, return_exceptions=True)


def latencies(sent: dict[int, float], received: dict[int, float], skip_s: float = 2.0) -> list[float]:
    """Arrival − send of every frame both saw, after the reader's first `skip_s` (its start-up)."""
    if not received:
        return []
    settled = min(received.values()) + skip_s
    return [received[n] - sent[n] for n in received if n in sent and received[n] > settled]


# -- the server and its streams -------------------------------------------------------------------
async def start_bench_server():
    from rtmp.settings import RtmpSettings
    from server.settings import Settings
    from tests.conftest import start_server

    return await start_server(Settings(host="127.0.0.1", port=0, rtmp=RtmpSettings(port=-1)))


def outputs_for(kind: str, platform_url: str) -> list[dict[str, Any]]:
    rtmp = {"type": "rtmp", "id": "platform", "url": platform_url, "captions": "both"}
    hls = {"type": "hls", "id": "hls"}
    return {"none": [], "rtmp": [rtmp], "hls": [hls], "both": [rtmp, hls]}[kind]


async def declare(server, outputs: list[dict[str, Any]], captions: bool) -> dict[str, Any]:
    resp = await server.session.post(
        server.url("/stream/start"),
        json={"source": {"type": "rtmp"}, "params": {"captions": {"enabled": captions}, "outputs": outputs}},
    )
    body = await resp.json()
    if resp.status != 200:
        raise RuntimeError(f"start refused: {body}")
    return body


async def status_of(server, manifest_id: str) -> dict[str, Any]:
    resp = await server.session.get(server.url(f"/stream/{manifest_id}/status"))
    return await resp.json()


async def wait_for(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return False


async def outputs_live(server, manifest_ids: list[str], names: list[str]) -> bool:
    for manifest_id in manifest_ids:
        outputs = (await status_of(server, manifest_id)).get("outputs", {})
        if any(outputs.get(name, {}).get("state") != "live" for name in names):
            return False
    return True


async def captions_forever(server, manifest_id: str) -> None:
    """Finals on the stream's bus, as its caption stage publishes them (burn-in and 608 get text)."""
    from media.events import CaptionEvent
    from server.keys import STREAM_SERVICE_KEY

    stream = server.app[STREAM_SERVICE_KEY].manager.get(manifest_id)
    n = 0
    while stream is not None and stream.active:
        text = CAPTION_WORDS[n % len(CAPTION_WORDS)]
        stream.events.publish(CaptionEvent(text=text, final=True, lang="en", start=n * 0.7, end=n * 0.7 + 0.6))
        n += 1
        await asyncio.sleep(0.7)


async def delete(server, manifest_ids: list[str]) -> None:
    for manifest_id in manifest_ids:
        await server.session.delete(server.url(f"/stream/{manifest_id}"))


# -- 1 + 2: latency -------------------------------------------------------------------------------
@dataclass
class LatencyRun:
    rtmp: list[float] = field(default_factory=list)
    hls: list[float] = field(default_factory=list)  # newest listed frame's age at listing
    hls_first: list[float] = field(default_factory=list)  # the same segment's first frame's age
    frames_sent: int = 0
    frames_read: int = 0


async def hls_edges(
    server, manifest_id: str, sent: dict[int, float], stop: asyncio.Event, oldest: list[float]
) -> list[float]:
    """Poll the video playlist; for each newly listed segment, listing time − its last frame's send
    time (returned) and − its first frame's (appended to `oldest`)."""
    from tests.media_gen import read_frame_id

    base = server.url(f"/stream/{manifest_id}/hls")
    seen: set[str] = set()
    edges: list[float] = []
    baseline = True

    def stamps(data: bytes) -> tuple[int, int] | None:
        ids = []
        with av.open(io.BytesIO(data), "r", format="mpegts") as container:
            for frame in container.decode(video=0):
                ids.append(read_frame_id(frame))
        return (ids[0], ids[-1]) if ids else None

    while not stop.is_set():
        resp = await server.session.get(f"{base}/video.m3u8")
        if resp.status == 200:
            listed_at = time.monotonic()
            text = await resp.text()
            listed = [line for line in text.splitlines() if line and not line.startswith("#")]
            if baseline:  # listed before the poll began: when is unknown
                seen.update(listed)
                baseline = False
            for uri in listed:
                if uri in seen:
                    continue
                seen.add(uri)
                segment = await server.session.get(f"{base}/{uri}")
                found = await asyncio.to_thread(stamps, await segment.read())
                if found is not None and found[0] in sent and found[1] in sent:
                    oldest.append(listed_at - sent[found[0]])
                    edges.append(listed_at - sent[found[1]])
        else:
            resp.release()
        await asyncio.sleep(0.05)
    return edges


async def latency_reference(platform, seconds: float) -> LatencyRun:
    """The publisher straight to nginx, read back from nginx: no streamlens."""
    publisher = await Child("publish", platform.url("ref"), seconds + 4).start()
    await asyncio.wait_for(publisher.ready.wait(), 15)
    await asyncio.sleep(1.0)  # nginx has the stream
    reader = await Child("read", platform.url("ref"), seconds).start()
    await reader.finish(seconds + 20)
    await publisher.finish(10)
    return LatencyRun(latencies(publisher.times, reader.times), [], [], len(publisher.times), len(reader.times))


async def latency_streamlens(server, platform, seconds: float) -> LatencyRun:
    """The publisher into streamlens' RTMP ingest, an RTMP output to nginx (608 + burn-in) and HLS."""
    body = await declare(server, outputs_for("both", platform.url("out")), captions=True)
    manifest_id = body["manifest_id"]
    publisher = await Child("publish", f"{body['ingest_url']}/{body['stream_key']}", seconds + 8).start()
    captions = asyncio.create_task(captions_forever(server, manifest_id))
    stop = asyncio.Event()
    oldest: list[float] = []
    edges: asyncio.Task[list[float]] | None = None
    try:
        await asyncio.wait_for(publisher.ready.wait(), 15)
        if not await wait_for(lambda: outputs_live(server, [manifest_id], ["platform", "hls"]), 30):
            raise RuntimeError(f"outputs not live: {(await status_of(server, manifest_id)).get('outputs')}")
        edges = asyncio.create_task(hls_edges(server, manifest_id, publisher.times, stop, oldest))
        reader = await Child("read", platform.url("out"), seconds).start()
        await reader.finish(seconds + 20)
    finally:
        stop.set()
        hls = await edges if edges is not None else []
        captions.cancel()
        await delete(server, [manifest_id])
        await publisher.finish(10)
    return LatencyRun(latencies(publisher.times, reader.times), hls, oldest, len(publisher.times), len(reader.times))


# -- 3: CPU per stream ----------------------------------------------------------------------------
def publish_command(url: str, seconds: float) -> list[str]:
    return [
        shutil.which("ffmpeg") or "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
        "-re", "-f", "lavfi", "-i", f"testsrc=size={WIDTH}x{HEIGHT}:rate={FPS}",
        "-re", "-f", "lavfi", "-i", "sine=f=440:r=44100",
        "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
        "-g", str(FPS), "-pix_fmt", "yuv420p", "-c:a", "aac", "-ar", "44100", "-f", "flv", url,
    ]  # fmt: skip


def server_cpu() -> dict[int, float]:
    """CPU seconds of this process (the server) and of each of its pushing FFmpeg children."""
    me = psutil.Process()
    times = me.cpu_times()
    cpu = {me.pid: times.user + times.system}
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "pipe:0" in child.cmdline():  # an output's FFmpeg (publishers and readers are not the server)
                t = child.cpu_times()
                cpu[child.pid] = t.user + t.system
    return cpu


@dataclass
class CpuRun:
    streams: int
    outputs: str
    cpu_per_stream: float  # CPU seconds per stream-second
    frames_out: dict[str, float]  # output → share of input frames it sent
    drops: int


async def cpu_run(server, platform, streams: int, kind: str, warm: float, seconds: float) -> CpuRun:
    bodies = [await declare(server, outputs_for(kind, platform.url(f"cpu-{kind}-{i}")), True) for i in range(streams)]
    ids = [b["manifest_id"] for b in bodies]
    procs = [
        await asyncio.create_subprocess_exec(
            *publish_command(f"{b['ingest_url']}/{b['stream_key']}", warm + seconds + 30),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for b in bodies
    ]
    captions = [asyncio.create_task(captions_forever(server, m)) for m in ids]
    names = [o["id"] for o in outputs_for(kind, "")]
    try:
        await wait_for(lambda: outputs_live(server, ids, names), 30)
        await asyncio.sleep(warm)
        before = [await status_of(server, m) for m in ids]
        cpu0, t0 = server_cpu(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, elapsed = server_cpu(), time.monotonic() - t0
        after = [await status_of(server, m) for m in ids]
    finally:
        for task in captions:
            task.cancel()
        await delete(server, ids)
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
        await asyncio.gather(*(p.wait() for p in procs), *captions, return_exceptions=True)
    used = sum(cpu1[pid] - cpu0.get(pid, 0.0) for pid in cpu1)
    shares: dict[str, float] = {}
    drops = 0
    for name in names:
        sent = sum(
            a["outputs"][name]["frames"] - b["outputs"][name]["frames"] for a, b in zip(after, before, strict=True)
        )
        came = sum(a["frames_in"] - b["frames_in"] for a, b in zip(after, before, strict=True))
        shares[name] = sent / came if came else 0.0
        drops += sum(a["outputs"][name]["drops"] for a in after)
    return CpuRun(streams, kind, used / (streams * elapsed), shares, drops)


# -- main -----------------------------------------------------------------------------------------
async def main_async(args: argparse.Namespace) -> None:
    from tests.conftest import stop_server
    from tests.rtmp_platform import RtmpPlatform, available

    if not available() or shutil.which("ffmpeg") is None:
        print("needs ffmpeg and nginx with libnginx-mod-rtmp: nothing measured")
        return
    platform = await RtmpPlatform().start()
    server = await start_bench_server()
    try:
        print(f"RTMP → RTMP latency and HLS live edge: {args.latency_seconds:.0f} s of {WIDTH}x{HEIGHT}@{FPS}")
        reference = await latency_reference(platform, args.latency_seconds)
        ours = await latency_streamlens(server, platform, args.latency_seconds)
        rows = []
        for label, run in (("publisher → nginx (reference)", reference), ("→ streamlens → nginx", ours)):
            p50, p95 = (pct(run.rtmp, 50), pct(run.rtmp, 95)) if run.rtmp else (float("nan"),) * 2
            rows.append([label, f"{p50:.3f}", f"{p95:.3f}", str(len(run.rtmp)), f"{run.frames_read}/{run.frames_sent}"])
        if reference.rtmp and ours.rtmp:
            added50 = pct(ours.rtmp, 50) - pct(reference.rtmp, 50)
            added95 = pct(ours.rtmp, 95) - pct(reference.rtmp, 95)
            ratio = statistics.median(ours.rtmp) / max(1e-6, statistics.median(reference.rtmp))
            rows.append(
                [f"added by streamlens (×{ratio:.1f} ref p50)", f"{added50:.3f}", f"{added95:.3f}", "", ""]
                + [
                    f"goal p95 ≤ {GOALS['rtmp_added_p95']:.1f} s: {'met' if added95 <= GOALS['rtmp_added_p95'] else 'MISSED'}"
                ]
            )
        table(
            "RTMP in → RTMP out latency (s, frame stamps)", ["path", "p50", "p95", "frames", "read/sent", "goal"], rows
        )
        if ours.hls:
            p95 = pct(ours.hls, 95)
            verdict = "met" if p95 <= GOALS["hls_edge"] else "MISSED"
            table(
                "HLS live edge (s, when a segment is listed: age of its last frame, and of its first)",
                ["frame", "segments", "p50", "p95", "max", "goal"],
                [
                    ["last", str(len(ours.hls)), f"{pct(ours.hls, 50):.3f}", f"{p95:.3f}", f"{max(ours.hls):.3f}"]
                    + [f"p95 ≤ {GOALS['hls_edge']:.0f} s: {verdict}"],
                    ["first", str(len(ours.hls_first)), f"{pct(ours.hls_first, 50):.3f}"]
                    + [f"{pct(ours.hls_first, 95):.3f}", f"{max(ours.hls_first):.3f}"],
                ],
            )
        else:
            print("\nHLS live edge: no segment measured")

        print("CPU: warm-up run (1 stream, no outputs; not reported)", flush=True)
        await cpu_run(server, platform, 1, "none", args.warm, args.cpu_seconds / 2)  # first-use costs out of the table
        runs = []
        for streams in args.streams:
            for kind in ("none", "rtmp", "hls", "both"):
                print(f"CPU: {streams} stream(s), outputs {kind} ...", flush=True)
                runs.append(await cpu_run(server, platform, streams, kind, args.warm, args.cpu_seconds))
        base = {r.streams: r.cpu_per_stream for r in runs if r.outputs == "none"}
        rows = []
        for cpu in runs:
            low = min(cpu.frames_out.values()) if cpu.frames_out else None
            goal = "" if low is None else ("met" if low >= GOALS["frames_out"] else "MISSED")
            rows.append(
                [
                    str(cpu.streams),
                    cpu.outputs,
                    f"{cpu.cpu_per_stream:.3f}",
                    f"×{cpu.cpu_per_stream / max(1e-6, base[cpu.streams]):.2f}",
                    " ".join(f"{k} {v:.0%}" for k, v in cpu.frames_out.items()) or "-",
                    str(cpu.drops),
                    goal,
                ]
            )
        table(
            f"CPU per stream (CPU s per stream-second over {args.cpu_seconds:.0f} s; captions on; ratio vs no outputs)",
            ["streams", "outputs", "cpu/stream", "vs none", "frames out", "drops", "goal ≥ 90 % out"],
            rows,
        )
    finally:
        await stop_server(server)
        await platform.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--publish", help=argparse.SUPPRESS)
    parser.add_argument("--read", help=argparse.SUPPRESS)
    parser.add_argument("--child-seconds", type=float, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--streams", default="1,4", help="concurrent stream counts for the CPU table")
    args = parser.parse_args()
    if args.publish:
        child_publish(args.publish, args.child_seconds)
        return 0
    if args.read:
        child_read(args.read, args.child_seconds)
        return 0
    args.streams = [int(n) for n in args.streams.split(",") if n.strip()]
    args.latency_seconds = 12.0 if args.quick else 30.0
    args.warm = 3.0 if args.quick else 5.0
    args.cpu_seconds = 6.0 if args.quick else 20.0
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
