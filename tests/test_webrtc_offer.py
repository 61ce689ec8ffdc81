"""Browser-style WebRTC over loopback: `POST /offer` with a real aiortc peer as the browser.

The peer sends frames stamped with frame ids and a tone; the server runs them through the stream
pipeline (overlay) and sends them back on the same connection; the `events` data channel carries
status messages and stream events and accepts `params` control messages.
"""

from __future__ import annotations

import json

import aiohttp
import av
from aiortc import (
    RTCCertificate,
    RTCDtlsTransport,
    RTCIceGatherer,
    RTCIceTransport,
    RTCRtpSender,
)
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket

from media.events import CaptionEvent
from media.frames import VideoItem
from media.manager import STREAMS_KEY
from media.webrtc_sdp import negotiated_codec
from media.webrtc_sink import (
    WebRTCEncoderConfig,
    WebRTCOutput,
    forward_keyframe_requests,
)
from server.webrtc_service import WEBRTC_KEY
from tests.conftest import wait_until
from tests.media_gen import synthetic_picture
from tests.webrtc_helpers import BrowserPeer, loopback_settings


async def test_offer_round_trip_processed_media_and_events(make_server):
    server = await make_server(**loopback_settings())
    peer = BrowserPeer()
    try:
        answer = await peer.connect(
            server.session, server.base_url, params={"note": "kept", "captions": {"lang": "en"}}
        )
        assert answer["type"] == "answer" and answer["sdp"].startswith("v=0")
        assert negotiated_codec(answer["sdp"], "video") == "VP8"  # the default preference
        manifest_id = peer.manifest_id

        # processed frames come back: the overlay header is drawn over the input picture
        assert await wait_until(lambda: len(peer.received.overlaid_frames()) >= 30, timeout=30)
        frames = list(peer.received.video)
        sent = peer.video_source.count
        ids = [f.frame_id for f in frames]
        assert all(0 <= i < sent for i in ids), "frame ids that were never sent came back"
        assert ids == sorted(ids)  # never out of order (stale frames are dropped, not queued)
        assert len(peer.received.overlaid_frames()) >= 0.9 * len(frames)
        # and the microphone comes back on the same connection
        assert await wait_until(lambda: peer.received.audio_frames > 25 and peer.received.audio_peak > 1000, timeout=15)

        # a normal manifest stream
        listing = await (await server.session.get(server.url("/streams"))).json()
        assert [s["manifest_id"] for s in listing["streams"]] == [manifest_id]
        assert listing["streams"][0]["metadata"]["transport"] == "webrtc"
        status = await (await server.session.get(server.url(f"/stream/{manifest_id}/status"))).json()
        assert status["source"]["peer"] == "browser" and status["source"]["video_frames"] > 30
        assert status["sinks"]["webrtc"]["video_encoders"]["VP8"]["consumers"] == 1
        metrics = await (await server.session.get(server.url("/metrics"))).text()
        assert 'streamlens_webrtc_sessions{kind="browser"} 1.0' in metrics

        # the data channel: periodic status messages ...
        assert await wait_until(lambda: len(peer.messages_of("status")) >= 2, timeout=15)
        status_msg = peer.messages_of("status")[-1]
        assert status_msg["manifest_id"] == manifest_id
        assert status_msg["state"] in ("LOADING", "ONLINE", "DEGRADED_INPUT", "DEGRADED_INFERENCE")
        assert {"fps_in", "fps_out", "frames_dropped", "latency_ms"} <= set(status_msg)
        assert set(status_msg["latency_ms"]) == {"p50", "p95"}
        # ... every event of the stream's bus ...
        stream = server.app[STREAMS_KEY].get_active(manifest_id)
        stream.events.publish(CaptionEvent(text="hello from the bus", final=True, start=1.0, end=2.0))
        assert await wait_until(lambda: peer.messages_of("caption"), timeout=10)
        caption = peer.messages_of("caption")[0]
        assert caption["text"] == "hello from the bus" and caption["final"] is True and caption["kind"] == "caption"

        # ... and control messages: params merge into the stream's params
        peer.send(
            {"type": "params", "id": 7, "captions": {"enabled": True, "lang": "es"}, "vision": {"enabled": False}}
        )
        assert await wait_until(lambda: peer.messages_of("params_applied"), timeout=10)
        assert peer.messages_of("params_applied")[0]["id"] == 7
        assert stream.params["captions"] == {"enabled": True, "lang": "es"}
        assert stream.params["vision"] == {"enabled": False} and stream.params["note"] == "kept"
        # errors are answered on the channel
        peer.send({"type": "params", "params": "not an object"})
        peer.channel.send("{broken json")
        peer.send({"type": "launch"})
        assert await wait_until(lambda: len(peer.messages_of("error")) >= 3, timeout=10)
        codes = [m.get("code") for m in peer.messages_of("error")]
        assert {"bad_params", "bad_json", "unknown_type"} <= set(codes)
        assert all(len(json.dumps(m)) < 64 * 1024 for m in peer.messages)

        # closing the peer connection ends the stream and frees everything
        await peer.close()
        assert await wait_until(lambda: not server.app[STREAMS_KEY].active(), timeout=20)
        assert await wait_until(lambda: not server.app[WEBRTC_KEY].sessions, timeout=10)
        assert stream.status()["state"] == "STOPPED"
        assert stream.status()["sinks"]["webrtc"]["tracks"] == 0
    finally:
        await peer.close()


async def test_delete_stream_closes_the_peer_h264(make_server):
    """H.264 preferred by the server; DELETE /stream/{id} closes the peer connection."""
    server = await make_server(**loopback_settings(webrtc_video_codec="H264"))
    peer = BrowserPeer()
    try:
        answer = await peer.connect(server.session, server.base_url)
        assert negotiated_codec(answer["sdp"], "video") == "H264"
        assert await wait_until(lambda: len(peer.received.overlaid_frames()) >= 15, timeout=30)

        resp = await server.session.delete(server.url(f"/stream/{peer.manifest_id}"))
        assert resp.status == 200
        assert (await resp.json())["status"] == "STOPPED"
        assert await wait_until(lambda: peer.pc.connectionState in ("closed", "failed"), timeout=20)
        assert not server.app[WEBRTC_KEY].sessions
        listing = await (await server.session.get(server.url("/streams"))).json()
        assert listing["count"] == 0
    finally:
        await peer.close()


async def test_offer_rejections(make_server):
    server = await make_server(**loopback_settings(max_streams=1))
    offer_url = server.url("/offer")
    resp = await server.session.post(offer_url, data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400 and "error" in await resp.json()
    resp = await server.session.post(offer_url, json={"sdp": "v=0\r\n", "type": "answer"})
    assert resp.status == 400
    resp = await server.session.post(offer_url, json={"sdp": "this is not sdp", "type": "offer"})
    body = await resp.json()
    assert resp.status == 400 and "SDP" in body["error"]["message"]

    first = BrowserPeer()
    second = BrowserPeer()
    try:
        await first.connect(server.session, server.base_url)
        await second.pc.setLocalDescription(await second.pc.createOffer())
        resp = await server.session.post(offer_url, json={"sdp": second.pc.localDescription.sdp, "type": "offer"})
        assert resp.status == 503  # one stream at a time
        assert (await resp.json())["error"]["code"] == "at_capacity"
        assert len(server.app[WEBRTC_KEY].sessions) == 1  # the refused peer left nothing behind
    finally:
        await first.close()
        await second.close()

    guarded = await make_server(**loopback_settings(api_token="t0ken"))
    peer = BrowserPeer()
    try:
        await peer.pc.setLocalDescription(await peer.pc.createOffer())
        async with aiohttp.ClientSession() as bare:  # not guarded.session: in token mode it adds the token
            resp = await bare.post(guarded.url("/offer"), json={"sdp": peer.pc.localDescription.sdp, "type": "offer"})
        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        assert not guarded.app[WEBRTC_KEY].sessions
    finally:
        await peer.close()


async def test_slow_pipeline_drops_stale_frames_and_counts_them(make_server):
    """Processing slower than the camera (100 ms per frame vs 33 ms): the stream keeps only the
    newest frames, counts the drops, and what comes back stays fresh instead of lagging more and
    more (a 30-frame queue would hold a second of stale video)."""
    server = await make_server(**loopback_settings(debug_frame_delay_ms=100))
    peer = BrowserPeer()
    try:
        await peer.connect(server.session, server.base_url)
        stream = server.app[STREAMS_KEY].get_active(peer.manifest_id)
        assert await wait_until(lambda: len(peer.received.video) >= 50, timeout=40)
        status = stream.status()
        assert status["frames_dropped"] > 0 and status["frames_out"] < status["frames_in"]
        assert await wait_until(
            lambda: peer.messages_of("status") and peer.messages_of("status")[-1]["frames_dropped"] > 0, timeout=10
        )
        sent_at = peer.video_source.sent_at
        recent = list(peer.received.video)[-20:]
        lags = sorted(v.received_at - sent_at[v.frame_id] for v in recent if v.frame_id in sent_at)
        assert lags and lags[len(lags) // 2] < 1.0, lags
    finally:
        await peer.close()


async def test_a_peers_pli_makes_the_shared_encoder_send_a_keyframe():
    """aiortc answers PLI by flagging its own encoder, which pre-encoded packets bypass; the
    output forwards it to the shared encoder (real RTCRtpSender, real RTCP PLI packet)."""
    output = WebRTCOutput("pli-test", WebRTCEncoderConfig(min_keyframe_gap=0.0, keyframe_interval=60))
    await output.start(None)
    track = output.video_track("VP8")
    encoder = track.encoder
    transport = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
    sender = RTCRtpSender(track, transport)
    forward_keyframe_requests(sender, track)

    def send_frame(index: int) -> None:
        frame = av.VideoFrame.from_ndarray(synthetic_picture(160, 128, index), format="yuv420p")
        output.send_video(VideoItem(frame, media_time=index / 30))

    try:
        for index in range(3):
            send_frame(index)
            assert await wait_until(lambda i=index: encoder.frames_encoded == i + 1, timeout=10)
        first = await track.recv()
        assert first.is_keyframe and encoder.keyframes == 1  # a new peer starts on a keyframe
        requests = encoder.keyframe_requests
        await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=sender._ssrc))
        assert encoder.keyframe_requests == requests + 1 and track.keyframe_requests == 1
        send_frame(3)
        assert await wait_until(lambda: encoder.frames_encoded == 4, timeout=10)
        assert encoder.keyframes == 2
        packets = [await track.recv() for _ in range(3)]
        assert [p.is_keyframe for p in packets] == [False, False, True]
    finally:
        await output.stop()
