"""Trickle flood benchmark: the server's memory against TRICKLE_MAX_TOTAL_BYTES, and what a real
stream keeps meanwhile.

    .venv/bin/python bench/bench_security.py [--seconds 60] [--budget-mib 64] [--channels 32]

A real `streamlens serve` runs in a child process (so its RSS is the server's alone). In the same
run, one real stream (trickle in → decode → encode → trickle out, 30 fps) is played twice on it:

1. **reference**: the stream alone;
2. **flood**: the same stream while `--channels` publishers each POST `--segment-mib` segments with
   slow bodies (spread over ~2 s each), `--stallers` POSTs send one chunk and then stall (closed
   after TRICKLE_BODY_TIMEOUT), and readers beyond the per-channel cap are refused.

Printed: the server's RSS growth over its level after the reference run (goal: ≤ budget + 64 MiB;
without the budget the rings would hold channels × 5 × segment size), the stream's frames out
under the flood against the reference (goal: ≥ 90 %), and the refusals counted. Never passes or
fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.media_gen import make_segments  # noqa: E402
from tests.trickle_helpers import OutputCollector, publish_realtime  # noqa: E402

MiB = 1 << 20
CHUNK = 256 << 10
PER_CHANNEL_READERS = 16


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """`streamlens serve` on a loopback port, with the trickle budgets given as settings."""

    def __init__(self, budget: int, body_timeout: float) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.settings = {
            "trickle_max_total_bytes": budget,
            "trickle_body_timeout": body_timeout,
            "trickle_max_subscribers_per_channel": PER_CHANNEL_READERS,
            "log_level": "WARNING",
        }
        self.proc: subprocess.Popen | None = None

    async def __aenter__(self) -> ServerProcess:
        argv = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        for name, value in self.settings.items():
            argv += ["--set", f"{name}={value}"]
        # the server's log (one line per refusal under the flood) goes to a file, not the table
        self.log = tempfile.NamedTemporaryFile("w+b", prefix="bench-security-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}; log: {self.log.name}")
                try:
                    async with session.get(self.base + "/health") as response:
                        if response.status == 200 and (await response.json())["status"] != "LOADING":
                            return self
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError("server did not become ready")

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss


async def run_stream(server: ServerProcess, session: aiohttp.ClientSession, name: str, segments: list[bytes]) -> dict:
    """One real stream through the pipeline: publish in real time, collect the output."""
    inp, out = f"{server.base}/ai/trickle/{name}-in", f"{server.base}/ai/trickle/{name}-out"
    for url in (inp, out):
        async with session.post(url) as response:  # create both channels
            response.raise_for_status()
    async with session.post(server.base + "/stream/start", json={"subscribe_url": inp, "publish_url": out}) as r:
        body = await r.json()
        if r.status != 200:
            raise RuntimeError(f"stream start failed: {r.status} {body}")
    manifest_id = body["manifest_id"]
    collector = OutputCollector(out, max_bytes=512 * MiB).start()
    await publish_realtime(inp, segments)
    await asyncio.sleep(2.0)  # the last segment's frames leave the encoder
    async with session.get(f"{server.base}/stream/{manifest_id}/status") as response:
        status = await response.json()
    async with session.delete(f"{server.base}/stream/{manifest_id}") as response:
        await response.read()
    await asyncio.wait_for(collector.ended.wait(), 15)
    await collector.stop()
    return {
        "frames_in": status["frames_in"],
        "frames_out": status["frames_out"],
        "dropped": status["frames_dropped"],
        "out_bytes": collector.total,
    }


class Flood:
    """Slow large POSTs on many channels, stalled bodies, and readers past the per-channel cap."""

    def __init__(self, base: str, channels: int, segment_bytes: int, stallers: int) -> None:
        self.base = base
        self.channels = channels
        self.blob = b"\x47" * segment_bytes
        self.stallers = stallers
        self.stop = asyncio.Event()
        self.statuses: dict[int, int] = {}
        self.bytes_sent = 0
        self.stall_answers: dict[int, int] = {}
        self.reader_refusals = 0

    def count(self, into: dict[int, int], status: int) -> None:
        into[status] = into.get(status, 0) + 1

    async def _body(self):
        pause = 2.0 / max(1, len(self.blob) // CHUNK)  # each segment's body takes ~2 s
        for i in range(0, len(self.blob), CHUNK):
            if self.stop.is_set():
                return
            self.bytes_sent += min(CHUNK, len(self.blob) - i)
            yield self.blob[i : i + CHUNK]
            await asyncio.sleep(pause)

    async def publisher(self, session: aiohttp.ClientSession, channel: int) -> None:
        seq = 0
        while not self.stop.is_set():
            try:
                async with session.post(f"{self.base}/ai/trickle/flood-{channel}/{seq}", data=self._body()) as r:
                    self.count(self.statuses, r.status)
                    await r.read()
            except (aiohttp.ClientError, OSError):
                self.count(self.statuses, -1)
                await asyncio.sleep(0.2)
            seq += 1

    async def staller(self, index: int) -> None:
        host, port = self.base.removeprefix("http://").split(":")
        while not self.stop.is_set():
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                writer.write(
                    f"POST /ai/trickle/stall-{index}/0 HTTP/1.1\r\nHost: x\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n".encode()
                    + b"10000\r\n"
                    + b"\0" * 0x10000
                    + b"\r\n"
                )
                await writer.drain()
                line = await reader.readline()  # nothing more is sent: the server must give up
                parts = line.split()
                self.count(self.stall_answers, int(parts[1]) if len(parts) > 1 else -1)
            except (OSError, ValueError):
                self.count(self.stall_answers, -1)
            finally:
                writer.close()

    async def readers(self, session: aiohttp.ClientSession) -> None:
        """More readers on one channel than it allows: the extra ones get 503."""
        while not self.stop.is_set():

            async def one() -> None:
                try:
                    async with session.get(
                        f"{self.base}/ai/trickle/flood-0/-1", timeout=aiohttp.ClientTimeout(total=3)
                    ) as response:
                        if response.status == 503:
                            self.reader_refusals += 1
                        await response.read()
                except (aiohttp.ClientError, TimeoutError):
                    pass

            await asyncio.gather(*(one() for _ in range(PER_CHANNEL_READERS + 8)))

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            tasks = [asyncio.create_task(self.publisher(session, c)) for c in range(self.channels)]
            tasks += [asyncio.create_task(self.staller(i)) for i in range(self.stallers)]
            tasks.append(asyncio.create_task(self.readers(session)))
            await self.stop.wait()
            await asyncio.sleep(0.5)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def trickle_counters(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with session.get(base + "/metrics") as response:
        text = await response.text() if response.status == 200 else ""
    figures = {}
    for line in text.splitlines():
        if line.startswith("streamlens_trickle_"):
            name, _, value = line.partition(" ")
            figures[name] = float(value)
    return figures


async def main(args: argparse.Namespace) -> None:
    budget = args.budget_mib * MiB
    segments = make_segments(args.seconds, 256, 256, fps=30)
    async with ServerProcess(budget, args.body_timeout) as server, aiohttp.ClientSession() as session:
        reference = await run_stream(server, session, "ref", segments)
        baseline = server.rss()
        peak = baseline
        flood = Flood(server.base, args.channels, args.segment_mib * MiB, args.stallers)
        flooding = asyncio.create_task(flood.run())

        async def sample() -> None:
            nonlocal peak
            while not flood.stop.is_set():
                peak = max(peak, server.rss())
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        flooded = await run_stream(server, session, "flood", segments)
        flood.stop.set()
        await asyncio.gather(flooding, sampler)
        counters = await trickle_counters(session, server.base)

    growth = (peak - baseline) / MiB
    ratio = flooded["frames_out"] / reference["frames_out"] if reference["frames_out"] else float("nan")
    unbounded = args.channels * 5 * args.segment_mib
    table(
        f"Trickle flood, {args.seconds:g} s: {args.channels} channels x {args.segment_mib} MiB slow segments, "
        f"{args.stallers} stalled bodies; TRICKLE_MAX_TOTAL_BYTES = {args.budget_mib} MiB",
        ["figure", "reference", "under flood", "ratio", "goal"],
        [
            ["stream frames out", reference["frames_out"], flooded["frames_out"], f"{ratio:.2f}", ">= 0.90"],
            [
                "stream frames in / dropped",
                f"{reference['frames_in']} / {reference['dropped']}",
                f"{flooded['frames_in']} / {flooded['dropped']}",
                "",
                "",
            ],
            [
                "server RSS (MiB)",
                f"{baseline / MiB:.0f}",
                f"peak {peak / MiB:.0f}",
                f"+{growth:.0f} MiB",
                f"<= {args.budget_mib + 64} MiB growth (unbounded: {unbounded} MiB)",
            ],
        ],
    )
    table(
        "Flood traffic and refusals",
        ["figure", "value"],
        [
            ["flood bytes sent (MiB)", f"{flood.bytes_sent / MiB:.0f}"],
            ["flood POST answers", ", ".join(f"{k}: {v}" for k, v in sorted(flood.statuses.items()))],
            ["stalled POST answers", ", ".join(f"{k}: {v}" for k, v in sorted(flood.stall_answers.items())) or "none"],
            ["readers refused (503)", flood.reader_refusals],
            *[
                [name, f"{value:.0f}"]
                for name, value in counters.items()
                if any(key in name for key in ("rejected", "evicted", "timeouts", "bytes_held", "max_total"))
            ],
        ],
    )
    print(
        f"\nMeasured on this machine; the client flood runs in the bench process, the server in its own "
        f"(its log: {server.log.name})."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each stream run (and of the flood)")
    parser.add_argument("--budget-mib", type=int, default=64, help="TRICKLE_MAX_TOTAL_BYTES of the server, MiB")
    parser.add_argument("--channels", type=int, default=32, help="flooding publishers, one channel each")
    parser.add_argument("--segment-mib", type=int, default=4, help="size of each flood segment, MiB")
    parser.add_argument("--stallers", type=int, default=16, help="POSTs that send one chunk and then stall")
    parser.add_argument("--body-timeout", type=float, default=5.0, help="TRICKLE_BODY_TIMEOUT of the server, s")
    asyncio.run(main(parser.parse_args()))
