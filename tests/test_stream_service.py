"""The stream service (server/stream_service.py): typed starts and stops, domain errors, one
params check for every entry point (HTTP start, params update, WHIP, /offer, byoc, the Livepeer
control channel)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from byoc.params import ParamsApplier
from httpapi.outbound import OutboundDenied
from media.events import ErrorEvent
from media.manager import STREAMS_KEY, AdmissionError, DuplicateStreamError
from media.spec import StreamSpec
from media.webrtc_sink import WebRTCOutput
from server.keys import METRICS_KEY, STREAM_SERVICE_KEY, TRICKLE_KEY
from server.stream_service import InvalidParams, StartedStream, StreamNotFound, StreamService
from server.webrtc_service import WEBRTC_KEY
from tests.conftest import wait_until

BAD_CAPTIONS = {"captions": {"enabled": "sometimes"}}
BAD_FIELD = "params.captions.enabled"


def service_of(server) -> StreamService:
    return server.app[STREAM_SERVICE_KEY]


def spec(server, manifest_id: str, **params) -> StreamSpec:
    """A native stream reading a channel of the server's own trickle server (it waits for input)."""
    server.app[TRICKLE_KEY].create_channel(f"{manifest_id}-in")
    return StreamSpec(
        manifest_id=manifest_id,
        mode="native",
        subscribe_url=server.trickle_url(f"{manifest_id}-in"),
        publish_url=None,
        params=params,
    )


def counter(server, name: str, **labels: str) -> float:
    """A counter's value as /metrics renders it (0 when never incremented)."""
    for family in text_string_to_metric_families(server.app[METRICS_KEY].render().decode()):
        for sample in family.samples:
            if sample.name == f"{name}_total" and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def test_start_and_stop_are_typed_and_refusals_are_domain_errors(make_server):
    server = await make_server(max_streams=2)
    service = service_of(server)
    started = await service.start(spec(server, "svc-1"))
    assert isinstance(started, StartedStream)
    assert started.created and started.manifest_id == "svc-1" and started.stream.active
    assert started.viewer_token and started.viewer_token == service.viewer_token(started.stream)
    assert service.manager.get_active("svc-1") is started.stream
    # the start hooks ran: every stream gets its WebRTC output (WHEP viewers)
    assert any(isinstance(sink, WebRTCOutput) for sink in started.stream.sinks)
    answer = started.answer()
    assert answer["manifest_id"] == "svc-1" and answer["viewer_token"] == started.viewer_token
    assert counter(server, "streamlens_streams_started") == 1

    with pytest.raises(DuplicateStreamError):
        await service.start(spec(server, "svc-1"))
    await service.start(spec(server, "svc-2"))
    with pytest.raises(AdmissionError):
        await service.start(spec(server, "svc-3"))
    assert counter(server, "streamlens_streams_rejected", reason="capacity") == 1
    assert service.manager.get_active("svc-3") is None and service.manager.load() == 2

    stopped = await service.stop("svc-1", "stopped by the test")
    assert stopped is started.stream and not stopped.active and stopped.end_reason == "stopped by the test"
    with pytest.raises(StreamNotFound):
        await service.stop("svc-1", "again")
    assert counter(server, "streamlens_streams_started") == 2


async def test_outbound_and_params_refusals_hold_nothing(make_server):
    server = await make_server(outbound_deny="127.0.0.2/32")
    service = service_of(server)
    denied = spec(server, "svc-denied")
    denied.subscribe_url = "http://127.0.0.2:9/in"
    with pytest.raises(OutboundDenied, match="127.0.0.2"):
        await service.start(denied)
    with pytest.raises(InvalidParams, match=BAD_FIELD):
        await service.start(spec(server, "svc-bad", **BAD_CAPTIONS))
    with pytest.raises(InvalidParams, match=r"params\.vision\.threshold"):
        await service.start(spec(server, "svc-bad-vision", vision={"threshold": 7}))
    assert service.manager.load() == 0 and service.manager.active() == []
    assert counter(server, "streamlens_streams_rejected", reason="outbound_denied") == 1
    assert counter(server, "streamlens_streams_rejected", reason="bad_request") == 2

    # a running stream's params pass the same check on every update, whichever way it arrives
    stream = (await service.start(spec(server, "svc-ok", captions={"enabled": False}))).stream
    with pytest.raises(InvalidParams, match=BAD_FIELD):
        stream.update_params(BAD_CAPTIONS)
    assert stream.params == {"captions": {"enabled": False}}
    stream.update_params({"captions": {"enabled": True}})
    assert stream.params == {"captions": {"enabled": True}}


async def expect_400(resp, *needles: str) -> str:
    body = await resp.json()
    assert resp.status == 400, body
    message = body["error"]["message"]
    assert body["error"]["code"] == "bad_request" and body["detail"]["msg"] == message
    for needle in needles:
        assert needle in message, message
    return message


async def test_invalid_captions_block_is_a_400_naming_the_field_on_start_and_update(server):
    url = server.url("/stream/start")
    server.app[TRICKLE_KEY].create_channel("cap-in")
    body = {"subscribe_url": server.trickle_url("cap-in"), "manifest_id": "cap-1", "params": BAD_CAPTIONS}
    await expect_400(await server.session.post(url, json=body), BAD_FIELD)
    assert server.app[STREAMS_KEY].active() == []

    body["params"] = {"captions": {"enabled": False}}
    resp = await server.session.post(url, json=body)
    assert resp.status == 200, await resp.json()
    stream = server.app[STREAMS_KEY].get_active("cap-1")

    # BYOC's /stream/params (a merge patch) and a repeated /stream/start of the running stream
    update = await server.session.post(
        server.url("/stream/params"), json=BAD_CAPTIONS, headers={"X-Stream-Id": "cap-1"}
    )
    await expect_400(update, BAD_FIELD)
    await expect_400(await server.session.post(url, json={**body, "params": BAD_CAPTIONS}), BAD_FIELD)
    assert stream.params == {"captions": {"enabled": False}}  # nothing was applied
    assert server.app[STREAMS_KEY].get_active("cap-1") is stream

    update = await server.session.post(
        server.url("/stream/params"), json={"captions": {"translate_to": ["es"]}}, headers={"X-Stream-Id": "cap-1"}
    )
    assert update.status == 200, await update.json()
    assert stream.params == {"captions": {"enabled": False, "translate_to": ["es"]}}


async def test_invalid_params_are_refused_before_a_webrtc_peer_is_made(server):
    # WHIP `?params=` and /offer: refused before the offer is even read as SDP
    whip = await server.session.post(
        server.url("/whip/whip-bad"),
        params={"params": '{"captions": {"enabled": "sometimes"}}'},
        data=b"v=0\r\n",
        headers={"Content-Type": "application/sdp"},
    )
    await expect_400(whip, BAD_FIELD)
    offer = await server.session.post(
        server.url("/offer"), json={"sdp": "v=0\r\n", "type": "offer", "params": {"vision": {"interval": 0}}}
    )
    await expect_400(offer, "params.vision.interval")
    assert server.app[STREAMS_KEY].active() == [] and not server.app[WEBRTC_KEY].sessions


async def test_live_video_to_video_starts_through_the_service(server):
    started_before = counter(server, "streamlens_streams_started")
    server.app[TRICKLE_KEY].create_channel("lv-in")
    body = {
        "subscribe_url": server.trickle_url("lv-in"),
        "publish_url": server.trickle_url("lv-out"),
        "manifest_id": "lv-1",
        "params": {"captions": {"enabled": False}},
    }
    resp = await server.session.post(server.url("/live-video-to-video"), json=body)
    answer = await resp.json()
    assert resp.status == 200, answer
    # ai-runner's fields beside the start answer of the stream service
    assert answer["publish_url"] == answer["subscribe_url"] == answer["control_url"] == ""
    assert answer["manifest_id"] == "lv-1" and answer["success"] is True and answer["viewer_token"]
    stream = server.app[STREAMS_KEY].get_active("lv-1")
    assert stream is not None and stream.params == {"captions": {"enabled": False}}
    assert answer["viewer_token"] == service_of(server).viewer_token(stream)
    assert counter(server, "streamlens_streams_started") == started_before + 1
    streams = await (await server.session.get(server.url("/streams"))).json()
    assert [s["manifest_id"] for s in streams["streams"]] == ["lv-1"]

    # the same one check: an invalid captions block is a 400 here too, and the running stream stays
    body.update(manifest_id="lv-2", params=BAD_CAPTIONS)
    await expect_400(await server.session.post(server.url("/live-video-to-video"), json=body), BAD_FIELD)
    assert server.app[STREAMS_KEY].get_active("lv-2") is None
    assert counter(server, "streamlens_streams_started") == started_before + 1


async def test_control_channel_update_that_fails_the_check_is_logged_and_reported(server):
    """The Livepeer control channel cannot answer: a bad update becomes an error on the stream
    (its events and status) and changes nothing."""
    stream = (await service_of(server).start(spec(server, "ctl-bad", captions={"enabled": False}))).stream
    errors: list[ErrorEvent] = []
    stream.events.add_listener(lambda event: errors.append(event) if isinstance(event, ErrorEvent) else None)
    applier = ParamsApplier(stream.update_params, stream.report_error, "ctl-bad")
    applier.start()
    try:
        applier.submit(BAD_CAPTIONS)
        assert await wait_until(lambda: applier.failed == 1 and errors, timeout=10)
    finally:
        await applier.close()
    assert BAD_FIELD in errors[0].message and BAD_FIELD in (stream.last_error or "")
    assert stream.params == {"captions": {"enabled": False}}


async def test_refusals_are_answered_by_the_one_error_table(make_server):
    """Capacity is a 503 with Retry-After and a running id a 409, over every entry point."""
    server = await make_server(max_streams=1)
    server.app[TRICKLE_KEY].create_channel("full-in")
    body = {"subscribe_url": server.trickle_url("full-in"), "manifest_id": "full-1"}
    assert (await server.session.post(server.url("/stream/start"), json=body)).status == 200
    sdp = {"Content-Type": "application/sdp"}
    # a running id: refused before the offer is read (no peer connection is made)
    duplicate = await server.session.post(server.url("/whip/full-1"), data=b"v=0\r\n", headers=sdp)
    assert duplicate.status == 409 and (await duplicate.json())["error"]["code"] == "conflict"
    for resp in (
        await server.session.post(server.url("/stream/start"), json={**body, "manifest_id": "full-2"}),
        await server.session.post(server.url("/whip/full-3"), data=b"v=0\r\n", headers=sdp),
        await server.session.post(server.url("/offer"), json={"sdp": "v=0\r\n", "type": "offer"}),
    ):
        answer = await resp.json()
        assert resp.status == 503 and resp.headers["Retry-After"] == "5", answer
        assert answer["error"]["code"] == "at_capacity" and "capacity" in answer["error"]["message"]
    assert counter(server, "streamlens_streams_rejected", reason="capacity") == 3
    assert [s.manifest_id for s in server.app[STREAMS_KEY].active()] == ["full-1"]
    assert not server.app[WEBRTC_KEY].sessions


def test_routes_depend_on_services_never_the_reverse():
    """Only the composition root (server/app.py, server/features.py) imports route modules; a route
    module imports no other; byoc reaches the stream service through its protocol (of `server` it
    names only the settings type)."""
    from tests.test_layout import import_graph

    graph = import_graph()
    root = {"server.app", "server.features"}
    for module, imports in graph.items():
        routes = {name for name in imports if name.startswith("server.routes_")}
        if module.startswith("server.routes_") or module not in root:
            assert not routes, f"{module} imports route modules {routes}"
        if module.startswith("byoc"):
            assert {name for name in imports if name.startswith("server")} <= {"server.settings"}, module
