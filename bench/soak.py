"""Soak: three live streams for a long time; is the server flat?

    .venv/bin/python bench/soak.py --minutes 60 [--sample-seconds 60] [--size 320x240]

Starts `streamlens serve` as its own process on a loopback port (so what is measured is the
server alone) and drives, from this process:

- two trickle streams with captions and vision on: real-time MPEG-TS segments with synthetic
  speech (espeak-ng) and a moving picture, published for the whole run (continuous timestamps),
  their outputs read and discarded by a trickle subscriber each;
- one WebRTC stream: an aiortc peer (camera + microphone stand-ins) on `POST /offer` that plays
  its processed video back.

Every `--sample-seconds` it samples the server process (RSS, open file descriptors, threads)
and each stream (state, fps in/out, latency p95 of the stream's recent frames, drops) and prints
a row. At the end it checks the goals: RSS growth after the warm-up (the first 5 minutes, or the
first third of a shorter run) at most 20 MiB; fds and threads constant after the warm-up;
latency p95 of the last 10 minutes (last third) within 10 % of the first 10 (first third).
Prints tables; never passes or fails (the goals are reported as met / not met).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from tests.media_gen import make_segments  # noqa: E402
from tests.speech import DEFAULT_PHRASES, build_track, speech_tools_available  # noqa: E402
from tests.webrtc_helpers import BrowserPeer  # noqa: E402
from trickle.client import TricklePublisher, TrickleSubscriber  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LOOP_SECONDS = 20  # seconds in one pass of the speech track, published over and over (the stream re-bases the
# timestamps at each pass, as it does when a publisher restarts)
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def speech_48k(seconds: int) -> np.ndarray | None:
    """`seconds` of phrases with pauses (48 kHz mono int16), or None without espeak-ng/sox."""
    if not speech_tools_available():
        return None
    track = build_track(DEFAULT_PHRASES[:3], pause_seconds=1.5, lead_seconds=0.5, tail_seconds=1.0)
    audio = np.zeros(seconds * 16000, np.float32)
    audio[: min(len(audio), len(track.audio))] = track.audio[: len(audio)]
    x = np.arange(len(audio) * 3) / 3.0
    return (np.clip(np.interp(x, np.arange(len(audio)), audio), -1, 1) * 32767).astype(np.int16)


class TrickleLoad:
    """Publishes real-time segments to `{base}/ai/trickle/{name}` until stopped; reads the output."""

    def __init__(
        self, base: str, name: str, width: int, height: int, audio: np.ndarray | None, session: aiohttp.ClientSession
    ) -> None:
        self.base, self.name, self.width, self.height, self.audio = base, name, width, height, audio
        self.session = session
        self.segments_sent = 0
        self.output_bytes = 0
        self.errors = 0
        self._tasks: list[asyncio.Task] = []

    def url(self, suffix: str = "") -> str:
        return f"{self.base}/ai/trickle/{self.name}{suffix}"

    async def publish(self, started: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        segments = await asyncio.to_thread(
            make_segments, LOOP_SECONDS, self.width, self.height, 30, 1.0, audio_samples=self.audio
        )
        publisher = TricklePublisher(self.url(), session=self.session)
        start = loop.time()
        try:
            for loop_index in range(10_000):  # bounded: 10 000 passes of 20 s is two days
                for index, segment in enumerate(segments):
                    number = loop_index * len(segments) + index
                    await asyncio.sleep(max(0.0, start + number - loop.time()))
                    writer = await publisher.next_segment()
                    for offset in range(0, len(segment), 16 * 1024):
                        await writer.write(segment[offset : offset + 16 * 1024])
                    await writer.close()
                    self.segments_sent += 1
                    started.set()
        finally:
            await publisher.close(delete_channel=False)

    async def read_output(self) -> None:
        for _ in range(100_000):  # re-subscribe if the channel is not there yet or ends
            subscriber = TrickleSubscriber(self.url("-out"), session=self.session, max_retries=3)
            try:
                while (segment := await subscriber.next_segment()) is not None:
                    while data := await segment.read():
                        self.output_bytes += len(data)
            except Exception:
                self.errors += 1
            finally:
                await subscriber.close()
            await asyncio.sleep(0.5)

    def start(self, started: asyncio.Event) -> None:
        self._tasks = [asyncio.create_task(self.publish(started)), asyncio.create_task(self.read_output())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class Sample:
    minute: float
    rss_mib: float
    fds: int
    threads: int
    streams: dict[str, dict] = field(default_factory=dict)


def p95_of(status: dict) -> float | None:
    latency = status.get("latency_ms") or {}
    return latency.get("p95")


def summarize(samples: list[Sample], total_minutes: float, sample_seconds: float) -> list[str]:
    warmup = min(5.0, total_minutes / 3)
    compare = min(10.0, total_minutes / 3)
    per_window = max(1, round(compare * 60 / sample_seconds))  # samples in a comparison window
    after = [s for s in samples if s.minute >= warmup - 1e-6] or samples[-1:]
    lines = []
    rss_growth = after[-1].rss_mib - after[0].rss_mib
    lines.append(
        f"RSS growth after the first {warmup:.1f} min: {rss_growth:+.1f} MiB "
        f"({'met' if rss_growth <= 20 else 'NOT met'}: goal <= 20 MiB)"
    )
    for name in ("fds", "threads"):
        values = [getattr(s, name) for s in after]
        # a socket or worker thread caught mid-request is not growth; a trend is
        drift = values[-1] - values[0]
        lines.append(
            f"{name} after warm-up: first {values[0]}, last {values[-1]}, min {min(values)}, max {max(values)} "
            f"({'met' if drift <= 2 else 'NOT met'}: goal constant, no upward drift)"
        )
    for stream in samples[-1].streams:
        early = [p95_of(s.streams.get(stream, {})) for s in samples[:per_window]]
        late = [p95_of(s.streams.get(stream, {})) for s in samples[-per_window:]]
        early = [v for v in early if v is not None]
        late = [v for v in late if v is not None]
        if not early or not late:
            lines.append(f"latency p95 {stream}: not enough samples")
            continue
        a, b = statistics.median(early), statistics.median(late)
        ratio = b / a if a else float("inf")
        lines.append(
            f"latency p95 {stream}: first {compare:.1f} min {a:.1f} ms, last {compare:.1f} min {b:.1f} ms, "
            f"ratio {ratio:.2f} ({'met' if ratio <= 1.10 else 'NOT met'}: goal <= 1.10)"
        )
    return lines


def print_row(sample: Sample) -> None:
    cells = [f"{sample.minute:6.1f}", f"{sample.rss_mib:8.1f}", f"{sample.fds:5d}", f"{sample.threads:7d}"]
    for name, status in sample.streams.items():
        p95 = p95_of(status)
        cells.append(
            f"{name}: {status.get('state', '?')[:12]:12s} "
            f"{status.get('input_fps', 0):5.1f}/{status.get('output_fps', 0):5.1f} fps "
            f"p95 {p95 if p95 is not None else float('nan'):6.1f} ms "
            f"drop {status.get('frames_dropped', 0)}"
        )
    print(" | ".join(cells), flush=True)


async def run(args: argparse.Namespace) -> None:
    width, height = (int(v) for v in args.size.split("x"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WEBRTC_HOST_ADDRESSES": "127.0.0.1", "PYTHONPATH": str(REPO)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-streams",
            "4",
            "--log-level",
            "WARNING",
        ],
        cwd=REPO,
        env=env,
    )
    process = psutil.Process(server.pid)
    loads: list[TrickleLoad] = []
    peer: BrowserPeer | None = None
    samples: list[Sample] = []
    # trickle requests are long-lived: no total timeout; one connection per request, as the clients do
    trickle_session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True), timeout=aiohttp.ClientTimeout(total=None, connect=10)
    )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for _ in range(600):
                try:
                    async with session.get(base + "/health") as resp:
                        if resp.status == 200 and (await resp.json()).get("status") != "LOADING":
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
            audio = await asyncio.to_thread(speech_48k, LOOP_SECONDS)
            if audio is None:
                print("espeak-ng/sox missing: the trickle streams carry a tone instead of speech")
            stream_ids: dict[str, str] = {}
            params = {"captions": {"enabled": True, "language": "en"}, "vision": {"enabled": True, "interval": 1.0}}
            for index in range(2):
                load = TrickleLoad(base, f"soak-{index}", width, height, audio, trickle_session)
                started = asyncio.Event()
                load.start(started)  # the first POST creates the input channel
                await asyncio.wait_for(started.wait(), 60)
                async with session.post(
                    base + "/stream/start",
                    json={"subscribe_url": load.url(), "publish_url": load.url("-out"), "params": params},
                ) as resp:
                    body = await resp.json()
                    assert resp.status == 200, body
                stream_ids[f"trickle-{index}"] = body["manifest_id"]
                loads.append(load)
            peer = BrowserPeer(width, height)
            await peer.connect(session, base)
            stream_ids["webrtc"] = peer.manifest_id
            print(
                f"server pid {server.pid} on {base}; streams {stream_ids}; size {args.size}; "
                f"{args.minutes} min, a sample every {args.sample_seconds} s (shared machine: "
                f"{psutil.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})",
                flush=True,
            )
            print("   min |  RSS MiB |   fds | threads | per stream: state in/out fps, latency p95, frames dropped")
            began = time.monotonic()
            deadline = began + args.minutes * 60
            next_sample = began + args.sample_seconds
            while True:
                await asyncio.sleep(max(0.0, min(next_sample, deadline) - time.monotonic()))
                now = time.monotonic()
                sample = Sample(
                    (now - began) / 60, process.memory_info().rss / MIB, process.num_fds(), process.num_threads()
                )
                for name, manifest_id in stream_ids.items():
                    try:
                        async with session.get(f"{base}/stream/{manifest_id}/status") as resp:
                            sample.streams[name] = await resp.json()
                    except (TimeoutError, aiohttp.ClientError) as exc:
                        sample.streams[name] = {"state": f"unreadable: {exc}"}
                samples.append(sample)
                print_row(sample)
                if now >= deadline - 0.5:
                    break
                next_sample += args.sample_seconds
            print()
            for line in summarize(samples, args.minutes, args.sample_seconds):
                print(line)
            for name, status in samples[-1].streams.items():
                if status.get("state") in ("STOPPED", "ERROR"):
                    print(f"{name} ended: {status.get('end_reason')} (last error: {status.get('last_error')})")
            print(
                "trickle loads: "
                + ", ".join(
                    f"{load.name}: {load.segments_sent} segments in, {load.output_bytes / MIB:.1f} MiB out, "
                    f"{load.errors} reader errors"
                    for load in loads
                )
            )
            print(
                f"webrtc peer: {len(peer.received.video)} frames kept of the returned video, "
                f"{peer.received.audio_frames} audio frames"
            )
    finally:
        for load in loads:
            await load.stop()
        if peer is not None:
            await peer.close()
        await trickle_session.close()
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--sample-seconds", type=float, default=60.0)
    parser.add_argument("--size", default="320x240")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
