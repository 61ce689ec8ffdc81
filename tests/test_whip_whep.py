"""WHIP ingest (shaped like OBS 30.2+) and WHEP playback over loopback with real aiortc peers."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from aiortc import RTCConfiguration, RTCPeerConnection

from media.events import CaptionEvent
from media.ice import IceSettings, parse_ice_servers
from media.webrtc_sdp import answer_direction, negotiated_codec
from tests.conftest import wait_until
from tests.webrtc_helpers import WhepViewer, WhipPublisher, loopback_settings

TOKEN = "obs-s3cret"
REPO = Path(__file__).resolve().parent.parent


VIEWER = "whep-viewers-token"
API = "whip-test-api-token"


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_whip_and_whep_refuse_bad_requests(make_server):
    server = await make_server(**loopback_settings(whip_token=TOKEN, whep_token=VIEWER,
                                                   cors_origins="https://studio.example"))
    s = server.session
    resp = await s.get(server.url("/webrtc/ice-servers"), headers=bearer())  # a publisher may read them
    assert await resp.json() == {"iceServers": []}  # none configured: host candidates only
    assert (await s.get(server.url("/webrtc/ice-servers"))).status == 401
    resp = await s.options(server.url("/whip"), headers={"Origin": "https://studio.example"})
    assert resp.status == 204
    assert resp.headers["Accept-Post"] == "application/sdp"
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
    assert "Location" in resp.headers["Access-Control-Expose-Headers"]

    publisher = WhipPublisher()
    try:
        resp = await publisher.publish(s, server.url("/whip/key-1"), None)
        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        resp = await publisher.publish(s, server.url("/whip/key-1"), "wrong")
        assert resp.status == 401
        sdp = publisher.offer_sdp.encode()
    finally:
        await publisher.close()
    resp = await s.post(server.url("/whip"), data=sdp, headers={**bearer(), "Content-Type": "text/plain"})
    assert resp.status == 415
    resp = await s.post(server.url("/whip"), data=b"v=0\r\nnot really sdp", headers={**bearer(), "Content-Type": "application/sdp"})
    assert resp.status == 400
    resp = await s.post(server.url("/whip"), data=b"", headers={**bearer(), "Content-Type": "application/sdp"})
    assert resp.status == 400
    resp = await s.post(server.url("/whip/bad%20key!"), data=sdp, headers={**bearer(), "Content-Type": "application/sdp"})
    assert resp.status == 400

    # two video tracks (e.g. simulcast-like layouts) are refused as a whole
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="sendonly")
        pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        resp = await s.post(server.url("/whip"), data=pc.localDescription.sdp.encode(),
                            headers={**bearer(), "Content-Type": "application/sdp"})
        assert resp.status == 422
    finally:
        await pc.close()

    viewer = WhepViewer()
    try:
        resp = await viewer.view(s, server.url("/whep/no-such-stream"), None)
        assert resp.status == 401  # the viewer role has its own token
        resp = await viewer.view(s, server.url("/whep/no-such-stream"), VIEWER)
        assert resp.status == 404
    finally:
        await viewer.close()
    for method in ("PATCH", "DELETE"):
        resp = await s.request(method, server.url("/whip/sessions/nope"), headers=bearer())
        assert resp.status == 404
    assert not server.app["webrtc"].sessions
    assert not server.app["streams"].active()


async def test_obs_like_publish_is_processed_and_shared_with_whep_viewers(make_server):
    server = await make_server(**loopback_settings(
        whip_token=TOKEN, api_token=API, max_streams=1, whep_max_viewers=2, webrtc_video_codec="H264",
        webrtc_udp_port_min=41000, webrtc_udp_port_max=41999))
    s = server.session
    publisher = WhipPublisher()
    viewers = [WhepViewer(data_channel=True), WhepViewer()]
    extra = WhepViewer()
    try:
        resp = await publisher.publish(s, server.url("/whip/obs-stream-1"), TOKEN)
        assert resp.status == 201, await resp.text()
        assert "a=candidate" not in publisher.offer_sdp  # like OBS >= 30.2
        assert publisher.offer_sdp.index("a=ice-ufrag:") < publisher.offer_sdp.index("m=")  # session-level
        assert resp.headers["Content-Type"] == "application/sdp"  # exactly, no charset
        assert publisher.location.startswith("/whip/sessions/")
        assert resp.headers["ETag"].startswith('"') and resp.headers["ETag"].endswith('"')
        assert publisher.answer_sdp.startswith("v=0")
        assert answer_direction(publisher.answer_sdp, "video") == "recvonly"
        assert answer_direction(publisher.answer_sdp, "audio") == "recvonly"
        ports = [int(line.split()[5]) for line in publisher.answer_sdp.splitlines() if line.startswith("a=candidate:")]
        assert ports and all(41000 <= p <= 41999 for p in ports)  # webrtc_udp_port_min/max
        assert publisher.manifest_id == "obs-stream-1"  # the stream key is the manifest id

        streams = server.app["streams"]
        assert await wait_until(lambda: (st := streams.get_active("obs-stream-1")) is not None and st.frames_out > 15,
                                timeout=30)
        stream = streams.get_active("obs-stream-1")
        listing = await (await s.get(server.url("/streams"), headers=bearer(API))).json()
        assert listing["streams"][0]["metadata"]["transport"] == "whip"

        # a second publisher is refused: capacity is one stream
        second = WhipPublisher()
        try:
            resp = await second.publish(s, server.url("/whip"), TOKEN)
            assert resp.status == 503
        finally:
            await second.close()

        # two WHEP viewers watch the processed output (overlay burned in)
        # the publisher got the stream's own viewer token: it opens this stream's WHEP, nothing else
        stream_viewer_token = publisher.viewer_token
        assert stream_viewer_token
        resp = await extra.view(s, server.url("/whep/obs-stream-1"), None)
        assert resp.status == 401
        for viewer in viewers:
            resp = await viewer.view(s, server.url("/whep/obs-stream-1"), stream_viewer_token)
            assert resp.status == 201, await resp.text()
            assert resp.headers["Content-Type"] == "application/sdp"
            assert answer_direction(viewer.answer_sdp, "video") == "sendonly"
            assert negotiated_codec(viewer.answer_sdp, "video") == "H264"
        resp = await extra.view(s, server.url("/whep/obs-stream-1"), stream_viewer_token)
        assert resp.status == 503  # whep_max_viewers
        assert await wait_until(lambda: all(len(v.received.overlaid_frames()) >= 20 for v in viewers), timeout=30)
        for viewer in viewers:
            ids = [f.frame_id for f in viewer.received.video]
            assert ids == sorted(ids) and max(ids) < publisher.video_source.count
            assert len(viewer.received.overlaid_frames()) >= 0.9 * len(viewer.received.video)
        assert await wait_until(lambda: all(v.received.audio_frames > 20 for v in viewers), timeout=15)

        # several viewers share one encode: one H.264 encoder feeds both, at most one encode per frame
        sink = stream.status()["sinks"]["webrtc"]
        assert list(sink["video_encoders"]) == ["H264"]
        encoder = sink["video_encoders"]["H264"]
        assert encoder["consumers"] == 2
        assert encoder["frames_encoded"] <= stream.frames_out
        assert sink["audio_encoder"]["consumers"] == 2

        # the viewer's data channel carries the stream's events, read-only
        stream.events.publish(CaptionEvent(text="burned in and sent", final=True))
        assert await wait_until(lambda: viewers[0].messages_of("caption") and viewers[0].messages_of("status"), timeout=15)
        viewers[0].channel.send('{"type": "params", "captions": {"enabled": false}}')
        assert await wait_until(lambda: viewers[0].messages_of("error"), timeout=10)
        assert viewers[0].messages_of("error")[0]["code"] == "forbidden"

        # trickle ICE PATCH (RFC 9725 §4.3)
        frag_headers = {**bearer(), "Content-Type": "application/trickle-ice-sdpfrag"}
        ufrag = next(line.split(":", 1)[1] for line in publisher.offer_sdp.splitlines() if line.startswith("a=ice-ufrag:"))
        candidate = "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host"
        frag = f"a=ice-ufrag:{ufrag}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n{candidate}\r\n"
        patch_url = server.url(publisher.location)
        resp = await s.patch(patch_url, data=frag, headers=frag_headers)
        assert resp.status == 428  # no If-Match
        resp = await s.patch(patch_url, data=frag, headers={**frag_headers, "If-Match": '"stale"'})
        assert resp.status == 412
        resp = await s.patch(patch_url, data=frag, headers={**frag_headers, "If-Match": publisher.etag})
        assert resp.status == 204
        restart = frag.replace(ufrag, "newU")
        resp = await s.patch(patch_url, data=restart, headers={**frag_headers, "If-Match": publisher.etag})
        assert resp.status == 422  # ICE restart is not supported
        resp = await s.patch(patch_url, data=frag, headers={**bearer(), "Content-Type": "application/sdp",
                                                             "If-Match": publisher.etag})
        assert resp.status == 415

        # one viewer leaves with DELETE; the stream and the other viewer go on
        resp = await s.delete(server.url(viewers[1].location), headers=bearer(stream_viewer_token))
        assert resp.status == 200
        assert await wait_until(lambda: stream.status()["sinks"]["webrtc"]["video_encoders"]["H264"]["consumers"] == 1,
                                timeout=10)
        assert stream.active

        # the publisher's DELETE ends the stream and every viewer
        resp = await s.delete(patch_url)  # no token
        assert resp.status == 401
        resp = await s.delete(patch_url, headers=bearer())
        assert resp.status == 200
        assert await wait_until(lambda: not streams.active() and not server.app["webrtc"].sessions, timeout=20)
        assert await wait_until(lambda: viewers[0].pc.connectionState in ("closed", "failed"), timeout=20)
        assert stream.status()["state"] == "STOPPED"
    finally:
        for peer in (publisher, *viewers, extra):
            await peer.close()


async def test_vanished_peers_are_reaped(make_server):
    """A viewer and a publisher in another process are SIGKILLed: no DELETE, no DTLS close. The
    server notices the silence (no RTCP / no media for webrtc_media_timeout) and frees both."""
    from tests.webrtc_helpers import BrowserPeer

    server = await make_server(**loopback_settings(api_token=TOKEN, webrtc_media_timeout=2.0))  # every role
    watched = BrowserPeer()
    child = None
    try:
        await watched.connect(server.session, server.base_url, headers=bearer())
        assert await wait_until(lambda: len(watched.received.video) > 5, timeout=30)
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.webrtc_helpers", server.base_url, TOKEN, watched.manifest_id, "doomed-key",
            cwd=REPO, stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        assert line.startswith(b"READY"), line
        sessions = server.app["webrtc"]
        streams = server.app["streams"]
        assert await wait_until(lambda: sessions.count("whep") == 1 and sessions.count("whip") == 1, timeout=10)
        doomed = streams.get_active("doomed-key")
        assert doomed is not None
        assert await wait_until(lambda: doomed.frames_in > 10, timeout=20)

        child.send_signal(signal.SIGKILL)
        await child.wait()
        assert await wait_until(lambda: sessions.count("whep") == 0 and sessions.count("whip") == 0, timeout=20)
        assert await wait_until(lambda: streams.get_active("doomed-key") is None, timeout=10)
        assert "no media" in (doomed.end_reason or "")
        # the watched stream lives on
        assert streams.get_active(watched.manifest_id) is not None and sessions.count("browser") == 1
    finally:
        if child is not None and child.returncode is None:
            child.kill()
            await child.wait()
        await watched.close()


def test_ice_settings_parse_and_advertise():
    assert parse_ice_servers("") == []
    servers = parse_ice_servers("stun:stun.example.net:3478, turn:turn.example.net?transport=udp")
    assert [srv.urls for srv in servers] == ["stun:stun.example.net:3478", "turn:turn.example.net?transport=udp"]
    ice = IceSettings.from_strings('[{"urls": "turn:t.example.net", "username": "u", "credential": "p"}]', "127.0.0.1")
    assert ice.host_addresses == ["127.0.0.1"]
    assert ice.rtc_configuration().iceServers[0].username == "u"
    expected = '<turn:t.example.net>; rel="ice-server"; username="u"; credential="p"; credential-type="password"'
    assert ice.link_headers() == [expected]
    assert IceSettings().rtc_configuration().iceServers == []  # never aiortc's public STUN default
    for bad in ("http://x", '[{"username": "u"}]', "[broken"):
        try:
            parse_ice_servers(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")
