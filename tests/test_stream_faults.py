"""Smaller faults, one test each: stopped streams are kept as small summaries, decode errors are
reported throttled (and all counted), and a full byte pipe parks its writer instead of polling."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import weakref

from media.decode import BytePipe
from media.events import CaptionEvent, ErrorEvent
from media.manager import STREAMS_KEY, StoppedStream, StreamManager
from media.stage import Stage
from media.stream import DECODE_ERROR_REPORT_INTERVAL, Stream
from server.keys import TRICKLE_KEY
from tests.conftest import wait_until
from tests.media_gen import make_segments
from tests.trickle_helpers import publish_realtime


class BigBufferStage(Stage):
    """Holds what a real stage holds (an ASR audio buffer), so a leak would be visible."""

    name = "big"

    def __init__(self) -> None:
        self.buffer = bytearray(8 << 20)


async def test_stopped_streams_are_kept_as_small_summaries():
    loop = asyncio.get_running_loop()
    manager = StreamManager(capacity=4, history=2)
    refs = []
    for index in range(3):
        manifest_id = f"summary-{index}"
        manager.reserve(manifest_id)
        stream = Stream(manifest_id, None, [], [BigBufferStage()], {"n": index}, loop)
        await manager.start(stream)
        stream.events.publish(CaptionEvent(text=f"caption {index}", final=True))
        assert f"caption {index}" in stream.captions.to_webvtt()  # recorded as published, on the loop
        await manager.stop(manifest_id, "test over")
        refs.append(weakref.ref(stream))
        del stream
    gc.collect()
    assert all(ref() is None for ref in refs)  # no stopped Stream (stages, buffers, frames) is kept
    assert manager.get("summary-0") is None  # history is bounded
    kept = manager.get("summary-2")
    assert isinstance(kept, StoppedStream) and not kept.active
    assert kept.status()["state"] == "STOPPED" and kept.status()["end_reason"] == "test over"
    assert kept.status()["params"] == {"n": 2} and kept.summary()["manifest_id"] == "summary-2"
    assert "caption 2" in kept.captions.to_webvtt()  # late readers still get the captions
    assert manager.get_active("summary-2") is None


async def test_stopped_stream_status_and_captions_over_http(server):
    trickle = server.app[TRICKLE_KEY]
    trickle.create_channel("sum-in")
    trickle.create_channel("sum-out")
    resp = await server.session.post(
        server.url("/stream/start"),
        json={"subscribe_url": server.trickle_url("sum-in"), "publish_url": server.trickle_url("sum-out")},
    )
    body = await resp.json()
    manifest_id = body["manifest_id"]
    await publish_realtime(server.trickle_url("sum-in"), make_segments(1, 128, 128), token=server.token("trickle"))
    stream = server.app[STREAMS_KEY].get_active(manifest_id)
    assert await wait_until(lambda: stream.frames_out > 10, timeout=10)  # noqa: F821 - `del stream` comes later
    stream.events.publish(CaptionEvent(text="kept after stop", final=True))
    assert "kept after stop" in stream.captions.to_webvtt()  # noqa: F821 - recorded as published
    resp = await server.session.delete(server.url(f"/stream/{manifest_id}"))
    assert resp.status == 200
    ref = weakref.ref(stream)
    del stream
    status = await (await server.session.get(server.url(f"/stream/{manifest_id}/status"))).json()
    assert status["state"] == "STOPPED" and status["frames_out"] > 10
    vtt = await (await server.session.get(server.url(f"/stream/{manifest_id}/captions.vtt"))).text()
    assert "kept after stop" in vtt
    gc.collect()
    assert isinstance(server.app[STREAMS_KEY].get(manifest_id), StoppedStream)
    assert ref() is None


async def test_decode_errors_are_counted_and_reported_throttled(caplog):
    loop = asyncio.get_running_loop()
    stream = Stream("decode-errors", None, [], [], {}, loop)
    events = stream.events.subscribe(maxsize=1000)
    caplog.set_level(logging.WARNING, logger="media.stream")

    def burst() -> None:  # from the decode thread, as the decoder calls it
        for index in range(500):
            stream.on_decode_error(f"decode error: invalid NAL unit {index}")
        # events from a thread are delivered in order: this one arrives after all the burst's
        stream.events.publish(CaptionEvent(text="end of burst", final=True))

    thread = threading.Thread(target=burst)
    thread.start()
    thread.join()
    assert stream.decode_errors == 500  # every one counted
    warnings = [r for r in caplog.records if "decode error" in r.getMessage()]
    assert len(warnings) == 1  # one log line for the burst, not 500
    errors = []
    for _ in range(1000):
        event = await events.get(timeout=5)
        assert event is not None, "the end-of-burst marker did not arrive"
        if isinstance(event, CaptionEvent):
            break
        errors.append(event)
    assert len([e for e in errors if isinstance(e, ErrorEvent)]) == 1

    # after the interval the next error is reported, saying how many were folded into it
    stream._decode_error_reported_at -= DECODE_ERROR_REPORT_INTERVAL
    stream.on_decode_error("decode error: again")
    assert "499 more decode errors" in stream.last_error
    assert len([r for r in caplog.records if "decode error" in r.getMessage()]) == 2
    stream.events.close()


async def test_full_byte_pipe_parks_the_writer_without_polling():
    pipe = BytePipe(max_chunks=2)
    assert await pipe.write(b"a") and await pipe.write(b"b")
    writer = asyncio.create_task(pipe.write(b"c"))
    # Kept: the check is that nothing wakes the parked writer over an interval (the old pipe
    # polled every 5 ms: ~100 wakeups here); no event marks "no poll happened".
    await asyncio.sleep(0.5)
    assert not writer.done()
    assert pipe.writer_waits == 1 and pipe.writer_wakeups == 0

    chunk = await asyncio.get_running_loop().run_in_executor(None, pipe.read)  # PyAV's IO thread
    assert chunk == b"a"
    assert await asyncio.wait_for(writer, 2) is True  # the read woke it (a poll would show in wakeups)
    assert pipe.writer_wakeups == 1

    # closing wakes a parked writer (the pipe holds b and c: full again), which is refused
    blocked = asyncio.create_task(pipe.write(b"d"))
    assert await wait_until(lambda: pipe.writer_waits == 2, timeout=5)  # parked
    pipe.close()
    assert await asyncio.wait_for(blocked, 2) is False
    assert pipe.read() == b""  # closed: end of file for the reader
