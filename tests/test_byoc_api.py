"""Livepeer routes over loopback: auth, errors, capacity, data-only streams, side channels with
short intervals, `/stream/status`, `/hardware/*`, and the ai-runner `/live-video-to-video` alias."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from media.events import CaptionEvent, StatusEvent
from media.manager import STREAMS_KEY
from server.keys import TRICKLE_KEY
from tests.conftest import wait_until
from tests.interop.gateway import LivepeerGateway
from tests.media_gen import decode_ts, make_segments
from tests.trickle_helpers import OutputCollector, publish_realtime

TOKEN = "byoc-api-token"
FAST = dict(events_interval=0.5, data_flush_interval=0.1, data_keepalive_interval=1.0, events_error_min_interval=1.0)


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def assert_json_error(resp, status: int, text: str | None = None) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"]["message"] == body["detail"]["msg"]  # both shapes carry the message
    if text is not None:
        assert text in body["detail"]["msg"], body
    return body


async def test_livepeer_routes_need_the_bearer_token(make_server):
    server = await make_server(auth_token=TOKEN)
    gateway = LivepeerGateway(server, "auth-1", video_in=False, video_out=False)
    calls = [
        ("POST", "/stream/start", gateway.body),
        ("POST", "/stream/params", {"prompt": "x"}),
        ("POST", "/stream/stop", {}),
        ("GET", "/stream/status", None),
        ("POST", "/live-video-to-video", {"subscribe_url": "http://a/b", "publish_url": "http://a/c"}),
        ("POST", "/process/request/text-reversal", {"text": "abc"}),
        ("POST", "/text-reversal", {"text": "abc"}),
        ("GET", "/process/capabilities", None),
    ]
    async with aiohttp.ClientSession() as bare:  # not server.session: in token mode it adds the token
        for headers in (
            {"X-Stream-Id": "auth-1"},
            {"X-Stream-Id": "auth-1", **bearer("wrong")},
            {"X-Stream-Id": "auth-1", "Authorization": TOKEN},
        ):  # raw token, not Bearer
            for method, path, body in calls:
                resp = await bare.request(method, server.url(path), json=body, headers=headers)
                assert resp.status == 401, (method, path, resp.status)
                assert (await resp.json())["detail"]["msg"], (method, path)
        assert not server.app[STREAMS_KEY].active()
        # ai-runner's exact wording on its own route
        resp = await bare.post(server.url("/live-video-to-video"), json={})
        assert (await resp.json())["detail"]["msg"] == "Invalid bearer token."
    # open routes stay open
    for path in ("/health", "/version", "/hardware/info", "/hardware/stats"):
        assert (await server.session.get(server.url(path))).status == 200, path


async def test_malformed_bodies_capacity_and_stop_lookup(make_server):
    server = await make_server(auth_token=TOKEN, max_streams=1, **FAST)
    headers = {"X-Stream-Id": "cap-1", **bearer()}
    for raw in (b"{not json", b"[1, 2]", b""):
        resp = await server.session.post(
            server.url("/stream/start"), data=raw, headers={**headers, "Content-Type": "application/json"}
        )
        await assert_json_error(resp, 400)
    # a JSON route takes only JSON: a text/plain body (a cross-site form post) is refused
    resp = await server.session.post(
        server.url("/stream/start"),
        data=b'{"gateway_request_id": "x"}',
        headers={**headers, "Content-Type": "text/plain"},
    )
    await assert_json_error(resp, 415)
    resp = await server.session.post(
        server.url("/stream/start"), headers=headers, json={"gateway_request_id": "cap-1", "events_url": "ftp://nope"}
    )
    await assert_json_error(resp, 400, "events_url")

    # a data-only stream (no video channels) fills the only slot ...
    first = LivepeerGateway(server, "cap-1", video_in=False, video_out=False).start_collectors()
    resp = await server.session.post(server.url("/stream/start"), json=first.body, headers=headers)
    assert resp.status == 200, await resp.text()
    # ... so the next start is refused with 503 (BYOC orchestrators do not cap load themselves)
    second = LivepeerGateway(server, "cap-2", video_in=False, video_out=False)
    resp = await server.session.post(
        server.url("/stream/start"), json=second.body, headers={"X-Stream-Id": "cap-2", **bearer()}
    )
    await assert_json_error(resp, 503)
    health = await (await server.session.get(server.url("/health"))).json()
    assert health["status"] == "OK"  # never IDLE while a stream runs

    # params: bad bodies are 400, unknown ids 404; the body's `params` object is applied
    for raw in (b"", b"nope", b"[]", b'{"params": 5}'):
        resp = await server.session.post(
            server.url("/stream/params"), data=raw, headers={**headers, "Content-Type": "application/json"}
        )
        await assert_json_error(resp, 400)
    resp = await server.session.post(
        server.url("/stream/params"), json={"prompt": "x"}, headers={"X-Stream-Id": "nobody", **bearer()}
    )
    await assert_json_error(resp, 404, "nobody")
    resp = await server.session.post(
        server.url("/stream/params"),
        headers=bearer(),  # id in the body
        json={"stream_id": "cap-1", "params": json.dumps({"prompt": "from-string"})},
    )
    assert resp.status == 200, await resp.text()
    assert server.app[STREAMS_KEY].get("cap-1").params == {"prompt": "from-string"}
    resp = await server.session.post(server.url("/stream/params"), headers=bearer(), json={"prompt": "only one"})
    assert resp.status == 200  # no id: the only running stream
    assert server.app[STREAMS_KEY].get("cap-1").params == {"prompt": "only one"}

    # stop: empty body, no id → the only running stream; a repeated stop is harmless
    resp = await server.session.post(server.url("/stream/stop"), headers=bearer())
    assert resp.status == 200 and (await resp.json())["manifest_id"] == "cap-1"
    resp = await server.session.post(
        server.url("/stream/stop"), data=b"\x00\xffnot json", headers={"X-Stream-Id": "cap-1", **bearer()}
    )
    assert resp.status == 200 and (await resp.json())["message"] == "Stream already stopped"
    resp = await server.session.post(server.url("/stream/stop"), headers=bearer())
    await assert_json_error(resp, 400, "No active stream")
    resp = await server.session.post(server.url("/stream/params"), headers=bearer(), json={"a": 1})
    await assert_json_error(resp, 400, "No active stream")
    assert (await (await server.session.get(server.url("/health"))).json())["status"] == "IDLE"
    await first.close()
    await second.close()


async def test_data_only_stream_events_and_data_lines(make_server):
    server = await make_server(**FAST)
    mid = "data-only-1"
    gateway = LivepeerGateway(server, mid, video_in=False, video_out=False).start_collectors()
    # no X-Stream-Id: the body's gateway_request_id names the stream
    resp = await server.session.post(server.url("/stream/start"), json=dict(gateway.body, params={"prompt": "a"}))
    assert resp.status == 200, await resp.text()
    stream = server.app[STREAMS_KEY].get(mid)
    assert stream is not None and stream.source is None
    assert not any(sink.name == "trickle" for sink in stream.sinks)

    # events published on the stream's bus come out as JSON lines of the data channel
    stream.events.publish(CaptionEvent(text="hello world", final=True, start=1.0, end=2.0))
    stream.events.publish(StatusEvent(state="ONLINE", detail={"note": "n"}))
    stream.events.publish(CaptionEvent(text="x" * 70_000, final=True))  # over the 64 KB line limit
    resp = await server.session.post(server.url("/stream/params"), json={"prompt": "b"}, headers={"X-Stream-Id": mid})
    assert resp.status == 200
    lines = gateway.data.values
    assert await wait_until(lambda: any(d.get("type") == "dropped" for d in lines()), timeout=5)
    assert await wait_until(lambda: any(d.get("detail", {}).get("reason") == "params_updated" for d in lines()), 5)
    caption = next(d for d in lines() if d["type"] == "caption")
    assert caption["text"] == "hello world" and caption["final"] is True and caption["kind"] == "caption"
    assert any(d["type"] == "status" and d["detail"] == {"note": "n"} for d in lines())
    dropped = next(d for d in lines() if d["type"] == "dropped")
    assert dropped["kind"] == "caption" and dropped["bytes"] > 65535
    assert all(len(seg.split(b"\n")[0]) <= 65535 for seg in gateway.data.raw_segments)
    assert all(seg.endswith(b"\n") for seg in gateway.data.raw_segments)
    # with nothing to say, a keepalive line keeps the data channel alive
    assert await wait_until(lambda: any(d["type"] == "keepalive" for d in lines()), timeout=4)

    # status events come every `events_interval`; transient fields are sent once, then cleared
    assert await wait_until(lambda: len(gateway.events.events("status")) >= 3, timeout=5)
    statuses = gateway.events.events("status")
    assert statuses[0]["inference_status"]["last_params"] == {"prompt": "a"}
    with_b = [s for s in statuses if s["inference_status"]["last_params"] == {"prompt": "b"}]
    assert len(with_b) == 1
    later = statuses[statuses.index(with_b[0]) + 1 :]
    assert later and all(s["inference_status"]["last_params"] is None for s in later)
    assert all(
        s["inference_status"]["last_params_hash"] == with_b[0]["inference_status"]["last_params_hash"] for s in later
    )

    # errors: reported as error events, at most one per second, the newest winning
    for n in range(5):
        stream.report_error(f"boom-{n}")
    assert await wait_until(lambda: any(e["message"] == "boom-4" for e in gateway.events.events("error")), 5)
    errors = gateway.events.events("error")
    assert len(errors) <= 2 and errors[0]["message"] in ("boom-0", "boom-4")
    assert set(errors[-1]) == {"type", "pipeline", "message", "time", "timestamp"}
    assert isinstance(errors[-1]["time"], float) and errors[-1]["pipeline"] == "streamlens"

    def last_error() -> str | None:
        return gateway.events.events("status")[-1]["inference_status"]["last_error"]

    assert await wait_until(lambda: last_error() == "boom-4", 3)

    metrics = await (await server.session.get(server.url("/metrics"))).text()
    assert f'streamlens_livepeer_data_lines_total{{manifest_id="{mid}",result="oversize"}} 1.0' in metrics
    assert f'streamlens_livepeer_events_total{{manifest_id="{mid}",result="sent"}}' in metrics

    # stop: a final status, and the data/events channels are closed (DELETE)
    resp = await server.session.post(server.url("/stream/stop"), headers={"X-Stream-Id": mid})
    assert resp.status == 200
    assert gateway.events.events("status")[-1]["state"] == "OFFLINE" or await wait_until(
        lambda: gateway.events.events("status")[-1]["state"] == "OFFLINE", 3
    )
    await asyncio.wait_for(gateway.data.ended.wait(), 5)
    await asyncio.wait_for(gateway.events.ended.wait(), 5)
    trickle = server.app[TRICKLE_KEY]
    assert not trickle.has_channel(f"{mid}-data") and not trickle.has_channel(f"{mid}-events")
    await gateway.close()


async def test_control_channel_end_stops_the_stream(make_server):
    server = await make_server(**FAST)
    gateway = LivepeerGateway(server, "ctl-end", video_in=False, video_out=False, data=False).start_collectors()
    resp = await server.session.post(server.url("/stream/start"), json=gateway.body, headers=gateway.headers())
    assert resp.status == 200
    stream = server.app[STREAMS_KEY].get("ctl-end")
    await gateway.send_control({"prompt": "p", "params": {"prompt": "inner"}})  # a `params` object wins
    assert await wait_until(lambda: stream.params == {"prompt": "inner"}, timeout=5)
    await server.app[TRICKLE_KEY].close_channel("ctl-end-control")  # the orchestrator tore it down
    assert await wait_until(lambda: stream.stopped.is_set(), timeout=10)
    assert "control channel ended" in stream.end_reason
    await gateway.close()


async def test_stream_status_route(make_server):
    server = await make_server(**FAST)
    resp = await server.session.get(server.url("/stream/status"))
    idle = await resp.json()
    assert resp.status == 200 and idle["state"] == "OFFLINE" and idle["client_active"] is False
    gateway = LivepeerGateway(server, "st-1", video_in=False, video_out=False, data=False)
    await server.session.post(
        server.url("/stream/start"), json=dict(gateway.body, params={"k": 1}), headers=gateway.headers()
    )
    status = await (await server.session.get(server.url("/stream/status"))).json()
    assert status["type"] == "status" and status["client_active"] is True and status["manifest_id"] == "st-1"
    assert status["stream"]["params"] == {"k": 1} and status["channels"]["events"]["url"].endswith("st-1-events")
    resp = await server.session.get(server.url("/stream/status"), headers={"X-Stream-Id": "missing"})
    assert resp.status == 404
    await server.session.post(server.url("/stream/stop"), headers=gateway.headers())
    await gateway.close()


async def test_hardware_routes_have_the_ai_runner_shape(server):
    info = await (await server.session.get(server.url("/hardware/info"))).json()
    assert info["pipeline"] == "streamlens" and info["model_id"] == "streamlens"
    assert isinstance(info["gpu_info"], dict)
    stats = await (await server.session.get(server.url("/hardware/stats"))).json()
    assert isinstance(stats["gpu_stats"], dict) and stats["cpu"]["count"] >= 1
    if not info["gpu_info"]:  # this machine: no GPU, said plainly
        assert info["gpu_note"]


async def test_live_video_to_video_ai_runner_body(make_server, orch_trickle):
    server = await make_server(auth_token=TOKEN, **FAST)
    mid = "lv2v-1"
    gateway = LivepeerGateway(server, mid, data=False, trickle_host=orch_trickle).start_collectors()
    base = {k: v for k, v in gateway.body.items() if k != "gateway_request_id"}
    ai_runner_body = dict(
        base,
        model_id="streamlens",
        manifest_id=mid,
        stream_id="str-9",
        gateway_request_id="gw-req-7",
        params={"width": 256, "height": 256},
    )

    resp = await server.session.post(
        server.url("/live-video-to-video"), headers=bearer(), json=dict(ai_runner_body, model_id="other-model")
    )
    await assert_json_error(resp, 400, "pipeline configured with streamlens but called with other-model.")
    resp = await server.session.post(
        server.url("/live-video-to-video"),
        headers=bearer(),
        json={k: v for k, v in ai_runner_body.items() if k != "publish_url"},
    )
    await assert_json_error(resp, 400, "publish_url")
    assert not server.app[STREAMS_KEY].active()

    out = OutputCollector(orch_trickle.trickle_url(f"{mid}-out")).start()
    resp = await server.session.post(server.url("/live-video-to-video"), json=ai_runner_body, headers=bearer())
    reply = await resp.json()
    assert resp.status == 200, reply
    assert {"publish_url", "subscribe_url", "control_url"} <= set(reply)  # ai-runner's (unused) reply keys
    assert reply["manifest_id"] == mid  # channels are named after the manifest id
    await publish_realtime(orch_trickle.trickle_url(mid), make_segments(2, 256, 256))
    stream = server.app[STREAMS_KEY].get(mid)
    assert await wait_until(lambda: stream.frames_out > 30, timeout=10)
    assert gateway.events.events("status")
    assert {"runner_receive_stream_request", "runner_receive_first_ingest_segment"} <= {
        t["type"] for t in gateway.events.events(queue="stream_trace")
    }

    # a new start for the same manifest replaces the running stream, as ai-runner does
    resp = await server.session.post(server.url("/live-video-to-video/"), json=ai_runner_body, headers=bearer())
    assert resp.status == 200, await resp.text()
    assert stream.stopped.is_set() and "replaced" in stream.end_reason
    assert server.app[STREAMS_KEY].get_active(mid) is not stream
    await asyncio.wait_for(out.ended.wait(), 10)
    frames, _ = decode_ts(out.data())
    assert len(frames) > 30
    await server.session.delete(server.url(f"/stream/{mid}"))
    await gateway.close()
    await out.stop()


async def test_output_only_stream_starts_and_stops(make_server):
    """enable_video_egress without ingress: no subscribe_url; the output channel is still owned."""
    server = await make_server(**FAST)
    gateway = LivepeerGateway(server, "out-only", video_in=False, data=False).start_collectors()
    assert "subscribe_url" not in gateway.body and "publish_url" in gateway.body
    resp = await server.session.post(server.url("/stream/start"), json=gateway.body, headers=gateway.headers())
    assert resp.status == 200, await resp.text()
    stream = server.app[STREAMS_KEY].get("out-only")
    assert stream.source is None and any(sink.name == "trickle" for sink in stream.sinks)
    assert await wait_until(lambda: gateway.events.events("status"), timeout=5)
    resp = await server.session.post(server.url("/stream/stop"), headers=gateway.headers(), data=b"")
    assert resp.status == 200 and (await resp.json())["state"] == "STOPPED"
    assert not server.app[TRICKLE_KEY].has_channel("out-only-out")  # closed on stop
    await gateway.close()
