"""A slow output never stalls the input: a real loopback trickle server that reads slowly.

The stream's output channel is served by a small aiohttp server (its own socket, tiny receive
buffer) that takes a segment POST's body a few KiB at a time. Decoding, audio and the video worker
must keep the input's rate; the trickle sink drops frames before encoding (counted) and the stream
reports DEGRADED_INFERENCE naming the output, never DEGRADED_INPUT."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from media.manager import STREAMS_KEY
from server.keys import TRICKLE_KEY
from tests.conftest import wait_until
from tests.media_gen import decode_ts, make_segments
from tests.trickle_helpers import publish_realtime

SECONDS = 8


class SlowTrickleServer:
    """Accepts trickle POSTs on `/{channel}/{seq}` and reads each body at `bytes_per_second`."""

    def __init__(self, bytes_per_second: int = 12_000, piece: int = 1024) -> None:
        self.delay = piece / bytes_per_second
        self.piece = piece
        self.received: dict[int, bytearray] = {}
        self.posts = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _post(self, request: web.Request) -> web.Response:
        seq = int(request.match_info["seq"])
        self.posts += 1
        buf = self.received.setdefault(seq, bytearray())
        while chunk := await request.content.read(self.piece):
            buf += chunk
            if len(self.received) > 64:  # bounded: the test only looks at the first segments
                break
            await asyncio.sleep(self.delay)
        return web.Response(text="ok")

    async def _other(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")  # DELETE of the channel at stream stop

    async def start(self) -> SlowTrickleServer:
        app = web.Application()
        app.router.add_post("/out/{seq}", self._post)
        app.router.add_route("*", "/out", self._other)
        self.runner = web.AppRunner(app, shutdown_timeout=1)
        await self.runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no big kernel buffer to hide in
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(self.runner, sock)
        await site.start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/out"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def test_slow_output_drops_frames_and_never_stalls_decoding(server):
    slow = await SlowTrickleServer().start()
    try:
        trickle = server.app[TRICKLE_KEY]
        trickle.create_channel("slow-in")
        resp = await server.session.post(
            server.url("/stream/start"),
            json={
                "subscribe_url": server.trickle_url("slow-in"),
                "publish_url": slow.url,
                "params": {"captions": {"enabled": True, "language": "en"}},
            },
        )
        body = await resp.json()
        assert resp.status == 200, body
        stream = server.app[STREAMS_KEY].get_active(body["manifest_id"])
        segments = make_segments(SECONDS, 640, 480, fps=30, segment_seconds=1.0)

        states: list[tuple[str, str | None]] = []
        loop = asyncio.get_running_loop()

        async def watch() -> None:
            # the steady part only: the rate meters need a couple of seconds of frames to judge
            first_output = None
            while True:
                await asyncio.sleep(0.25)
                if stream.frames_out and first_output is None:
                    first_output = loop.time()
                if first_output is not None and loop.time() - first_output > 2.5:
                    status = stream.status()
                    states.append((status["state"], status["degraded_reason"]))

        watcher = asyncio.create_task(watch())
        try:
            await publish_realtime(server.trickle_url("slow-in"), segments, token=server.token("trickle"))
            watcher.cancel()  # the input has ended: from here on DEGRADED_INPUT would be right
            # the input was decoded at its own rate: every frame and all the audio arrived
            assert await wait_until(lambda: stream.frames_in >= SECONDS * 30 - 3, timeout=5)
            assert stream.audio_frames_in >= 0.9 * SECONDS * 48000 / 1024
            # ASR was fed all of it, while it was happening
            captions = stream.status()["stages"]["captions"]
            assert captions["audio_seconds"] >= 0.9 * SECONDS and captions["dropped_audio_seconds"] == 0
            # the video worker kept up too (its queue only drops when *it* is slow)
            assert stream.frames_out + stream.frames_dropped >= stream.frames_in - 2
            assert stream.frames_out >= 0.9 * stream.frames_in
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

        sink = stream.status()["sinks"]["trickle"]
        # the slow output dropped (and counted) frames instead of holding the decoder back
        assert sink["frames_dropped_slow_output"] > 0
        assert sink["frames_encoded"] + sink["frames_dropped_slow_output"] >= 0.9 * stream.frames_in
        assert sink["failed"] is None  # slow is not broken: the output keeps going
        seen = {state for state, _ in states}
        assert "DEGRADED_INPUT" not in seen, states
        lagging = [reason for state, reason in states if state == "DEGRADED_INFERENCE"]
        assert lagging and any("slower than the stream" in (r or "") for r in lagging), states
        # what did get out is a valid stream
        first = bytes(slow.received.get(0, b""))
        frames, _ = decode_ts(first)
        assert frames and frames[0].width == 640
    finally:
        await slow.stop()
