"""BYOC streaming end to end over loopback: this test plays the gateway + orchestrator.

The orchestrator pre-creates the channels `{id}`, `{id}-out`, `{id}-control`, `{id}-events`,
`{id}-data` on the server's built-in trickle server and calls `POST /stream/start` with the
gateway body, `X-Stream-Id` and the capability's bearer token. Video flows through real PyAV
codecs; events, control and data are read/written with the project's trickle client.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

from media.manager import STREAMS_KEY
from server.keys import TRICKLE_KEY
from tests.conftest import wait_until
from tests.interop.gateway import LivepeerGateway
from tests.media_gen import decode_ts, make_segments
from tests.trickle_helpers import OutputCollector, publish_realtime

TOKEN = "byoc-test-token"

STATUS_KEYS = {
    "type",
    "pipeline",
    "start_time",
    "state",
    "last_state_update_time",
    "input_status",
    "inference_status",
    "last_status_timestamp",
    "timestamp",
}
INFERENCE_KEYS = {
    "last_output_time",
    "fps",
    "last_params_update_time",
    "last_params",
    "last_params_hash",
    "last_error_time",
    "last_error",
    "last_restart_time",
    "last_restart_logs",
    "restart_count",
}
STATES = {"LOADING", "OFFLINE", "ONLINE", "DEGRADED_INPUT", "DEGRADED_INFERENCE", "ERROR"}


def md5_of(params: dict) -> str:
    return hashlib.md5(json.dumps(params, sort_keys=True).encode()).hexdigest()


def assert_status_shape(event: dict) -> None:
    assert set(event) == STATUS_KEYS, set(event) ^ STATUS_KEYS
    assert event["type"] == "status" and event["pipeline"] == "streamlens"
    assert event["state"] in STATES
    assert set(event["input_status"]) == {"last_input_time", "fps"}
    assert set(event["inference_status"]) == INFERENCE_KEYS
    # times are integer epoch milliseconds
    assert isinstance(event["timestamp"], int) and event["timestamp"] > 1_600_000_000_000
    assert isinstance(event["start_time"], int) and event["start_time"] <= event["timestamp"]
    assert isinstance(event["last_status_timestamp"], int)


async def stream_status(server, mid: str) -> dict:
    resp = await server.session.get(server.url(f"/stream/{mid}/status"), headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200
    return await resp.json()


async def test_byoc_stream_gateway_flow_at_real_cadence(make_server, orch_trickle):
    """One test at the real 10 s status cadence; the rest use short intervals. The channels live
    on the orchestrator's trickle server, as in production."""
    server = await make_server(auth_token=TOKEN)
    mid = "byoc-e2e-1"
    gateway = LivepeerGateway(server, mid, trickle_host=orch_trickle).start_collectors()
    out = OutputCollector(orch_trickle.trickle_url(f"{mid}-out")).start()
    start_params = {"width": 256, "height": 256, "prompt": "one"}
    body = dict(gateway.body, params=json.dumps(start_params))  # the gateway API carries params as a JSON string
    loop = asyncio.get_running_loop()

    resp = await server.session.post(server.url("/stream/start"), json=body, headers=gateway.headers(TOKEN))
    started_at = loop.time()
    reply = await resp.json()
    assert resp.status == 200, reply
    assert reply["manifest_id"] == mid and reply["request_id"] == mid and reply["status"] == "success"

    publishing = asyncio.create_task(
        publish_realtime(orch_trickle.trickle_url(mid), make_segments(6, 256, 256, fps=30))
    )

    # the first status arrives at once (well within the gateway's 12 s expectation)
    assert await wait_until(lambda: gateway.events.events("status"), timeout=12)
    first_time, first = gateway.events.timed("status")[0]
    assert first_time - started_at < 3
    assert_status_shape(first)
    assert first["inference_status"]["last_params"] == start_params  # start params, once
    assert first["inference_status"]["last_params_hash"] == md5_of(start_params)
    envelope = next(v for v in gateway.events.values() if v["event"]["type"] == "status")
    assert envelope["queue_event_type"] == "ai_stream_events"
    traces = gateway.events.events(queue="stream_trace")
    assert traces[0]["type"] == "runner_receive_stream_request"
    assert isinstance(traces[0]["timestamp"], int)

    # a mid-stream resolution change is refused
    resp = await server.session.post(
        server.url("/stream/params"), headers=gateway.headers(TOKEN), json={"width": 512, "height": 512, "prompt": "x"}
    )
    assert resp.status == 400
    assert "width" in (await resp.json())["error"]["message"]

    # control channel: a keepalive is ignored, a params object is applied
    await gateway.send_control({"keep": "alive"})
    control_params = {"width": 256, "height": 256, "prompt": "two"}
    await gateway.send_control(control_params)
    assert await wait_until(lambda: server.app[STREAMS_KEY].get(mid).params == control_params, timeout=5)
    assert (await stream_status(server, mid))["params"] == control_params

    # BYOC update: POST /stream/params with the client's body verbatim
    http_params = {"width": 256, "height": 256, "prompt": "three"}
    resp = await server.session.post(server.url("/stream/params"), json=http_params, headers=gateway.headers(TOKEN))
    assert resp.status == 200, await resp.text()
    assert (await stream_status(server, mid))["params"] == http_params

    await publishing
    # the next periodic status comes about 10 s after the first, carrying the newest params once
    assert await wait_until(lambda: len(gateway.events.events("status")) >= 2, timeout=14)
    second_time, second = gateway.events.timed("status")[1]
    assert 8.5 <= second_time - first_time <= 12.5, second_time - first_time
    assert_status_shape(second)
    inference = second["inference_status"]
    assert inference["last_params"] == http_params and inference["last_params_hash"] == md5_of(http_params)
    assert isinstance(inference["last_params_update_time"], int)
    assert second["last_status_timestamp"] == first["timestamp"]
    # input and output happened (the publisher finished, so the 2 s fps windows may be empty now)
    assert second["input_status"]["last_input_time"] > first["start_time"]
    assert inference["last_output_time"] >= second["input_status"]["last_input_time"] - 2000
    assert isinstance(inference["fps"], float) and isinstance(second["input_status"]["fps"], float)
    trace_types = [t["type"] for t in gateway.events.events(queue="stream_trace")]
    assert trace_types[:1] == ["runner_receive_stream_request"]
    assert {"runner_receive_first_ingest_segment", "runner_send_first_processed_segment"} <= set(trace_types)

    # params changes are announced on the data channel as JSON lines
    data_lines = gateway.data.values()
    updates = [d for d in data_lines if d["type"] == "status" and d["detail"].get("reason") == "params_updated"]
    assert len(updates) >= 2 and updates[-1]["detail"]["params_hash"] == md5_of(http_params)

    # stop: the body may be a gateway error string, not JSON
    stop_started = loop.time()
    resp = await server.session.post(
        server.url("/stream/stop"), data=b"gateway error: input went away", headers=gateway.headers(TOKEN)
    )
    print(f"POST /stream/stop took {loop.time() - stop_started:.2f} s")
    assert resp.status == 200, await resp.text()
    stopped = await resp.json()
    assert stopped["state"] == "STOPPED" and "gateway error" in stopped["end_reason"]
    await asyncio.wait_for(out.ended.wait(), 10)  # the output channel was closed
    trickle = server.app[TRICKLE_KEY]
    assert not trickle.has_channel(f"{mid}-out")
    assert await wait_until(lambda: gateway.events.events("status")[-1]["state"] == "OFFLINE", timeout=5)
    health = await (await server.session.get(server.url("/health"))).json()
    assert health["status"] == "IDLE"

    frames, _ = decode_ts(out.data())
    assert len(frames) >= 100  # ~180 frames went in
    assert all((f.width, f.height) == (256, 256) for f in frames)
    await gateway.close()
    await out.stop()
