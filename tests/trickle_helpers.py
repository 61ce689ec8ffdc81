"""Play the Livepeer gateway in tests: publish input segments in real time, collect the output."""

from __future__ import annotations

import asyncio

from httpapi.outbound import OutboundPolicy
from trickle.client import TricklePublisher, TrickleSubscriber, set_bearer_source


def token_policy(token: str | None) -> OutboundPolicy | None:
    """A trickle client policy whose requests present `token` as a bearer (None: the default
    policy, no token), as a gateway configured with the server's TRICKLE_TOKEN sends it."""
    if not token:
        return None
    policy = OutboundPolicy()
    set_bearer_source(policy, lambda _url: token)
    return policy


async def publish_realtime(
    url: str,
    segments: list[bytes],
    segment_seconds: float = 1.0,
    chunk: int = 8 * 1024,
    close_channel: bool = False,
    token: str | None = None,
) -> None:
    """Publish each segment as one chunked POST, paced so segment i starts at i × duration.
    The bytes of a segment are spread over its duration, as a live remuxer would send them.
    `token`: the bearer the server's trickle routes need (`server.token("trickle")`)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    publisher = TricklePublisher(url, policy=token_policy(token))
    try:
        for index, segment in enumerate(segments):
            await asyncio.sleep(max(0.0, start + index * segment_seconds - loop.time()))
            writer = await publisher.next_segment()
            pieces = [segment[i : i + chunk] for i in range(0, len(segment), chunk)]
            for n, piece in enumerate(pieces):
                await writer.write(piece)
                # keep to real time: piece n belongs at n/len × duration into the segment
                target = start + (index + (n + 1) / len(pieces)) * segment_seconds * 0.9
                await asyncio.sleep(max(0.0, target - loop.time()))
            await writer.close()
    finally:
        await publisher.close(delete_channel=close_channel)


class OutputCollector:
    """Subscribes to an output channel and keeps every segment's bytes (bounded by `max_bytes`)."""

    def __init__(self, url: str, max_bytes: int = 64 << 20, token: str | None = None) -> None:
        self.url = url
        self.token = token
        self.segments: list[tuple[int, bytes]] = []
        self.first_byte_times: dict[int, float] = {}
        self.max_bytes = max_bytes
        self.total = 0
        self.ended = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.subscriber: TrickleSubscriber | None = None

    def start(self) -> OutputCollector:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self.subscriber = TrickleSubscriber(self.url, policy=token_policy(self.token))
        try:
            while True:
                segment = await self.subscriber.next_segment()
                if segment is None:
                    return
                parts = []
                while data := await segment.read():
                    if not parts:
                        self.first_byte_times[segment.seq] = loop.time()
                    parts.append(data)
                    self.total += len(data)
                    if self.total > self.max_bytes:
                        raise RuntimeError("output larger than the test expects")
                await segment.close()
                self.segments.append((segment.seq, b"".join(parts)))
        finally:
            await self.subscriber.close()
            self.ended.set()

    def data(self) -> bytes:
        return b"".join(data for _, data in self.segments)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
