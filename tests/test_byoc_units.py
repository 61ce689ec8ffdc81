"""Small parts of the Livepeer layer on their own: newest-wins params, the `Livepeer` header,
update-body normalisation, the ai-runner status of a real stream, control message parsing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

import pytest

from byoc.control_channel import ControlReader
from byoc.data_channel import MAX_LINE_BYTES, event_line
from byoc.livepeer_header import LivepeerHeaderError, encode_livepeer_header, parse_livepeer_header
from byoc.params import ParamsApplier, normalize_params_body
from byoc.status import StreamStatusTracker
from media.events import CaptionEvent, Tag, VisionEvent
from media.stream import Stream, StreamState
from tests.conftest import wait_until


async def test_params_applier_applies_only_the_newest_pending_update():
    applied: list[dict] = []
    errors: list[str] = []
    gate = asyncio.Event()

    async def slow_apply(params):
        applied.append(params)
        if params["n"] == 1:
            await gate.wait()  # the first update takes a while to apply (e.g. a model reload)
        if params["n"] == 99:
            raise ValueError("changing 'width' mid-stream is not supported")

    applier = ParamsApplier(slow_apply, errors.append, "t")
    applier.start()
    applier.submit({"n": 1})
    assert await wait_until(lambda: applied == [{"n": 1}], timeout=5)  # n=1 is being applied
    for n in (2, 3, 4):  # arrive while n=1 is being applied
        applier.submit({"n": n})
    gate.set()
    assert await wait_until(lambda: applier.applied == 2, timeout=5)
    assert applied == [{"n": 1}, {"n": 4}]
    assert applier.stats() == {"received": 4, "applied": 2, "failed": 0, "superseded": 2}
    applier.submit({"n": 99})
    assert await wait_until(lambda: applier.failed, timeout=5)
    assert errors == ["params rejected: changing 'width' mid-stream is not supported"]
    await applier.close()


def test_normalize_params_body():
    assert normalize_params_body({"prompt": "a", "stream_id": "s", "manifest_id": "m"}) == {"prompt": "a"}
    assert normalize_params_body({"params": {"prompt": "b"}, "other": 1}) == {"prompt": "b"}
    assert normalize_params_body({"params": '{"prompt": "c"}'}) == {"prompt": "c"}
    assert normalize_params_body({"params": ""}) == {}
    for bad in ({"params": 3}, {"params": "[1]"}, {"params": "{nope"}):
        with pytest.raises(ValueError):
            normalize_params_body(bad)


def test_livepeer_header_decoding():
    assert parse_livepeer_header(None) is None and parse_livepeer_header("  ") is None
    value = encode_livepeer_header(
        {
            "request": {"stream_id": "s"},
            "parameters": {"enable_video_ingress": True},
            "capability": "cap",
            "timeout_seconds": 12,
            "id": "job-1",
            "sig": "0xabc",
        }
    )
    header = parse_livepeer_header(value)
    assert header.request == {"stream_id": "s"} and header.parameters == {"enable_video_ingress": True}
    assert header.capability == "cap" and header.timeout_seconds == 12.0 and header.id == "job-1"
    assert "sig" not in header.to_dict()
    # URL-safe alphabet and stripped padding are tolerated
    raw = json.dumps({"capability": "c", "request": '{"q": "??>>"}'}).encode()
    assert parse_livepeer_header(base64.urlsafe_b64encode(raw).decode().rstrip("=")).request == {"q": "??>>"}
    for bad in (
        "***",
        base64.b64encode(b"\xff\xfe").decode(),
        base64.b64encode(b'"s"').decode(),
        encode_livepeer_header({"timeout_seconds": "10"}),
        encode_livepeer_header({"timeout_seconds": True}),
        encode_livepeer_header({"capability": 5}),
        "A" * 70_000,
    ):
        with pytest.raises(LivepeerHeaderError):
            parse_livepeer_header(bad)


def test_data_lines_are_single_json_lines():
    event = VisionEvent(tags=[Tag("face", 0.9, (1, 2, 3, 4))], text="line one\nline two", frame_size=(640, 480))
    line = event_line(event)
    assert b"\n" not in line and len(line) <= MAX_LINE_BYTES
    decoded = json.loads(line)
    assert decoded["type"] == "tags" and decoded["tags"][0]["box"] == [1, 2, 3, 4]
    assert decoded["text"] == "line one\nline two"
    assert json.loads(event_line(CaptionEvent(text="ñ ü 字")))["text"] == "ñ ü 字"


async def test_status_of_a_real_stream():
    stream = Stream("unit-1", source=None, sinks=[], stages=[], params={"prompt": "a"}, loop=asyncio.get_running_loop())
    tracker = StreamStatusTracker(stream, "streamlens")
    first = tracker.snapshot(clear_transient=True)
    assert first["state"] == "LOADING" and first["inference_status"]["last_params"] == {"prompt": "a"}
    assert first["last_status_timestamp"] == first["start_time"]
    assert first["input_status"] == {"last_input_time": None, "fps": 0.0}
    second = tracker.snapshot(clear_transient=True)
    assert second["inference_status"]["last_params"] is None  # sent once, then cleared
    assert second["inference_status"]["last_params_hash"] == hashlib.md5(b'{"prompt": "a"}').hexdigest()
    assert second["last_status_timestamp"] == first["timestamp"]
    stream.in_meter.mark()
    stream.report_error("bad frame")
    third = tracker.snapshot()
    assert third["input_status"]["last_input_time"] >= first["timestamp"] - 1
    assert third["inference_status"]["last_error"] == "bad frame"
    assert isinstance(third["inference_status"]["last_error_time"], int)
    await stream.stop("done")
    assert tracker.snapshot()["state"] == "OFFLINE"


async def test_control_messages():
    submitted: list[dict] = []

    class Recorder:
        def submit(self, params):
            submitted.append(params)

    reader = ControlReader("http://unused", "t", Recorder())
    for raw in (b'{"keep":"alive"}', b"", b"not json", b"[1]", b'{"params": 4}', b'{"prompt": "x"}'):
        reader.handle_message(raw)
    assert submitted == [{"prompt": "x"}]
    assert (reader.keepalives, reader.invalid, reader.messages) == (1, 3, 1)


async def test_state_thresholds_follow_ai_runner():
    """As ai-runner's process guardian: no output yet → ERROR only after 10 s; output stalled > 5 s and
    over 1 s longer than input → ERROR; output ending with input is not an error."""
    stream = Stream("unit-2", source=None, sinks=[], stages=[], params={}, loop=asyncio.get_running_loop())
    t0 = stream._created_mono

    def feed(meter, start: float, end: float, fps: int = 30) -> None:
        for i in range(int((end - start) * fps)):
            meter.mark(start + i / fps)

    feed(stream.in_meter, t0, t0 + 11)
    stream.frames_in = 330
    assert stream.evaluate_state(t0 + 8) == StreamState.LOADING  # input flows, first output still coming
    assert stream.evaluate_state(t0 + 11) == StreamState.ERROR  # 10 s without any output

    stream.frames_out = 200
    feed(stream.out_meter, t0 + 1, t0 + 5)  # output stopped at t0+5, input went on to t0+11
    assert stream.evaluate_state(t0 + 11) == StreamState.ERROR
    assert stream.evaluate_state(t0 + 14) == StreamState.ERROR  # input idle 3 s, output idle 9 s

    healthy = Stream("unit-3", source=None, sinks=[], stages=[], params={}, loop=asyncio.get_running_loop())
    h0 = healthy._created_mono
    feed(healthy.in_meter, h0, h0 + 6)
    feed(healthy.out_meter, h0 + 0.05, h0 + 6.05)
    healthy.frames_in, healthy.frames_out = 180, 180
    assert healthy.evaluate_state(h0 + 6.1) == StreamState.ONLINE
    assert healthy.evaluate_state(h0 + 9) == StreamState.DEGRADED_INPUT  # the input ended, output with it
    await stream.stop("done")
    await healthy.stop("done")
