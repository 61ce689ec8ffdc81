"""Runs inside the pytrickle virtualenv (see tests/test_pytrickle_interop.py), never in the project's.

pytrickle is livepeer's own Python trickle library; here its TricklePublisher / TrickleSubscriber
act as clients of streamlens' built-in trickle server and worker. Prints one JSON object on stdout.

  publish URL FILE...              one segment per file, in order, from seq 0
  subscribe URL COUNT START_SEQ    read COUNT segments; print their sizes and sha256
  gateway BASE MID FILE...         play the gateway: publish FILEs to {MID} in real time while
                                   reading {MID}-out and {MID}-events until they end; decode the
                                   output with this venv's PyAV (pytrickle pins av<=14.2)

STREAMLENS_TRICKLE_TOKEN in the environment: the bearer token the server's trickle routes need
(TRICKLE_TOKEN). pytrickle 0.1.6 has no option for one, so its clients here put it in their
session's default headers, as a gateway built on pytrickle would have to.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import sys
import time

from pytrickle import TricklePublisher as PyTricklePublisher
from pytrickle import TrickleSubscriber as PyTrickleSubscriber
from pytrickle.version import __version__ as PYTRICKLE_VERSION

CHUNK = 32 * 1024
TOKEN = os.environ.get("STREAMLENS_TRICKLE_TOKEN") or None  # from the environment: not in `ps` output


class TricklePublisher(PyTricklePublisher):
    async def start(self):
        await super().start()  # a fresh session each time
        if TOKEN:
            self.session.headers["Authorization"] = f"Bearer {TOKEN}"


class TrickleSubscriber(PyTrickleSubscriber):
    async def start(self):
        await super().start()
        if TOKEN:
            self.session.headers["Authorization"] = f"Bearer {TOKEN}"


async def publish(url: str, files: list[str], pace: float = 0.0, mime: str = "video/mp2t") -> list[dict]:
    publisher = TricklePublisher(url, mime)
    await publisher.start()
    sent = []
    started = time.monotonic()
    try:
        for index, path in enumerate(files):
            if pace:
                await asyncio.sleep(max(0.0, started + index * pace - time.monotonic()))
            data = open(path, "rb").read()
            async with await publisher.next() as segment:
                for i in range(0, len(data), CHUNK):
                    await segment.write(data[i : i + CHUNK])
            sent.append({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
            # pytrickle 0.1.6 moves to the next index in a background task; calling next() again
            # before that task ran reuses the same index (an encoder always yields in between)
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # pytrickle's close() cancels POSTs still in flight
    finally:
        await publisher.close()
    return sent


async def read_segments(url: str, count: int | None, start_seq: int, limit_s: float) -> list[bytes]:
    subscriber = TrickleSubscriber(url, start_seq=start_seq)
    await subscriber.start()
    segments: list[bytes] = []
    deadline = time.monotonic() + limit_s
    try:
        while (count is None or len(segments) < count) and time.monotonic() < deadline:
            segment = await asyncio.wait_for(subscriber.next(), max(0.1, deadline - time.monotonic()))
            if segment is None:
                break  # 404 / closed: the stream ended
            parts = []
            while True:
                chunk = await segment.read()
                if not chunk:
                    break
                parts.append(chunk)
            await segment.close()
            segments.append(b"".join(parts))
    except TimeoutError:
        pass
    finally:
        await subscriber.close()
    return segments


def decode_frames(data: bytes) -> int:
    import av

    frames = 0
    with av.open(io.BytesIO(data), format="mpegts") as container:
        for packet in container.demux(container.streams.video[:1]):
            try:
                frames += len(packet.decode())
            except av.error.InvalidDataError:
                continue
    return frames


async def gateway(base: str, mid: str, files: list[str]) -> dict:
    out_task = asyncio.create_task(read_segments(f"{base}/{mid}-out", None, -2, 60))
    events_task = asyncio.create_task(read_segments(f"{base}/{mid}-events", None, -2, 60))
    sent = await publish(f"{base}/{mid}", files, pace=1.0)
    out, events = await asyncio.gather(out_task, events_task)
    output = b"".join(out)
    parsed = [json.loads(e) for e in events if e.strip()]
    return {
        "sent": len(sent),
        "output_segments": len([s for s in out if s]),
        "output_bytes": len(output),
        "decoded_frames": decode_frames(output) if output else 0,
        "first_segment_frames": decode_frames(out[0]) if out and out[0] else 0,
        "events": [
            {
                "queue_event_type": p.get("queue_event_type"),
                "type": p.get("event", {}).get("type"),
                "state": p.get("event", {}).get("state"),
            }
            for p in parsed
        ],
    }


async def main(argv: list[str]) -> dict:
    command = argv[0]
    if command == "publish":
        return {"sent": await publish(argv[1], argv[2:])}
    if command == "subscribe":
        segments = await read_segments(argv[1], int(argv[2]), int(argv[3]), 30)
        return {"received": [{"size": len(s), "sha256": hashlib.sha256(s).hexdigest()} for s in segments]}
    if command == "gateway":
        return await gateway(argv[1], argv[2], argv[3:])
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    result = asyncio.run(main(sys.argv[1:]))
    result["pytrickle_version"] = PYTRICKLE_VERSION
    print(json.dumps(result))
