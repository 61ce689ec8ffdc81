"""WHIP ingest (shaped like OBS 30.2+, an offer exactly as OBS 30 sends it, Chromium) and WHEP
playback over loopback with real peers. FFmpeg 8's WHIP muxer is in test_whip_ffmpeg.py."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from media.events import CaptionEvent
from media.ice import IceSettings, parse_ice_servers
from media.manager import STREAMS_KEY
from media.webrtc_sdp import answer_direction, negotiated_codec
from server.webrtc_service import WEBRTC_KEY
from tests.conftest import wait_until
from tests.webrtc_helpers import BASE_FLAGS, CHROMIUM, WhepViewer, WhipPublisher, loopback_settings

TOKEN = "obs-s3cret"
REPO = Path(__file__).resolve().parent.parent


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_whip_and_whep_refuse_bad_requests(make_server):
    server = await make_server(**loopback_settings(whip_token=TOKEN, api_token=TOKEN))
    s = server.session
    resp = await s.get(server.url("/webrtc/ice-servers"), headers=bearer())
    assert await resp.json() == {"iceServers": []}  # none configured: host candidates only
    resp = await s.options(server.url("/whip"))
    assert resp.status == 204
    assert resp.headers["Accept-Post"] == "application/sdp"
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]

    publisher = WhipPublisher()
    bare = aiohttp.ClientSession()  # not server.session: in token mode it adds the token
    try:
        resp = await publisher.publish(bare, server.url("/whip/key-1"), None)
        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        resp = await publisher.publish(bare, server.url("/whip/key-1"), "wrong")
        assert resp.status == 401
        sdp = publisher.offer_sdp.encode()
    finally:
        await bare.close()
        await publisher.close()
    resp = await s.post(server.url("/whip"), data=sdp, headers={**bearer(), "Content-Type": "text/plain"})
    assert resp.status == 415
    resp = await s.post(
        server.url("/whip"), data=b"v=0\r\nnot really sdp", headers={**bearer(), "Content-Type": "application/sdp"}
    )
    assert resp.status == 400
    resp = await s.post(server.url("/whip"), data=b"", headers={**bearer(), "Content-Type": "application/sdp"})
    assert resp.status == 400
    resp = await s.post(
        server.url("/whip/bad%20key!"), data=sdp, headers={**bearer(), "Content-Type": "application/sdp"}
    )
    assert resp.status == 400

    # two video tracks (e.g. simulcast-like layouts) are refused as a whole
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="sendonly")
        pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        resp = await s.post(
            server.url("/whip"),
            data=pc.localDescription.sdp.encode(),
            headers={**bearer(), "Content-Type": "application/sdp"},
        )
        assert resp.status == 422
    finally:
        await pc.close()

    viewer = WhepViewer()
    try:
        resp = await viewer.view(s, server.url("/whep/no-such-stream"), TOKEN)
        assert resp.status == 404
    finally:
        await viewer.close()
    for method in ("PATCH", "DELETE"):
        resp = await s.request(method, server.url("/whip/sessions/nope"), headers=bearer())
        assert resp.status == 404
    assert not server.app[WEBRTC_KEY].sessions
    assert not server.app[STREAMS_KEY].active()


async def test_obs_like_publish_is_processed_and_shared_with_whep_viewers(make_server):
    server = await make_server(
        **loopback_settings(
            whip_token=TOKEN,
            api_token=TOKEN,
            max_streams=1,
            whep_max_viewers=2,
            webrtc_video_codec="H264",
            webrtc_udp_port_min=41000,
            webrtc_udp_port_max=41999,
        )
    )
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

        streams = server.app[STREAMS_KEY]
        assert await wait_until(
            lambda: (st := streams.get_active("obs-stream-1")) is not None and st.frames_out > 15, timeout=30
        )
        stream = streams.get_active("obs-stream-1")
        listing = await (await s.get(server.url("/streams"), headers=bearer())).json()
        assert listing["streams"][0]["metadata"]["transport"] == "whip"

        # a second publisher is refused: capacity is one stream
        second = WhipPublisher()
        try:
            resp = await second.publish(s, server.url("/whip"), TOKEN)
            assert resp.status == 503
        finally:
            await second.close()

        # two WHEP viewers watch the processed output (overlay burned in)
        for viewer in viewers:
            resp = await viewer.view(s, server.url("/whep/obs-stream-1"), TOKEN)
            assert resp.status == 201, await resp.text()
            assert resp.headers["Content-Type"] == "application/sdp"
            assert answer_direction(viewer.answer_sdp, "video") == "sendonly"
            assert negotiated_codec(viewer.answer_sdp, "video") == "H264"
        resp = await extra.view(s, server.url("/whep/obs-stream-1"), TOKEN)
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
        assert await wait_until(
            lambda: viewers[0].messages_of("caption") and viewers[0].messages_of("status"), timeout=15
        )
        viewers[0].channel.send('{"type": "params", "captions": {"enabled": false}}')
        assert await wait_until(lambda: viewers[0].messages_of("error"), timeout=10)
        assert viewers[0].messages_of("error")[0]["code"] == "forbidden"

        # trickle ICE PATCH (RFC 9725 §4.3)
        frag_headers = {**bearer(), "Content-Type": "application/trickle-ice-sdpfrag"}
        ufrag = next(
            line.split(":", 1)[1] for line in publisher.offer_sdp.splitlines() if line.startswith("a=ice-ufrag:")
        )
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
        resp = await s.patch(
            patch_url, data=frag, headers={**bearer(), "Content-Type": "application/sdp", "If-Match": publisher.etag}
        )
        assert resp.status == 415

        # one viewer leaves with DELETE; the stream and the other viewer go on
        resp = await s.delete(server.url(viewers[1].location), headers=bearer())
        assert resp.status == 200
        assert await wait_until(
            lambda: stream.status()["sinks"]["webrtc"]["video_encoders"]["H264"]["consumers"] == 1, timeout=10
        )
        assert stream.active

        # the publisher's DELETE ends the stream and every viewer
        async with aiohttp.ClientSession() as bare:  # no token (server.session would add one in token mode)
            resp = await bare.delete(patch_url)
        assert resp.status == 401
        resp = await s.delete(patch_url, headers=bearer())
        assert resp.status == 200
        assert await wait_until(lambda: not streams.active() and not server.app[WEBRTC_KEY].sessions, timeout=20)
        assert await wait_until(lambda: viewers[0].pc.connectionState in ("closed", "failed"), timeout=20)
        assert stream.status()["state"] == "STOPPED"
    finally:
        for peer in (publisher, *viewers, extra):
            await peer.close()


async def test_vanished_peers_are_reaped(make_server):
    """A viewer and a publisher in another process are SIGKILLed: no DELETE, no DTLS close. The
    server notices the silence (no RTCP / no media for webrtc_media_timeout) and frees both."""
    from tests.webrtc_helpers import BrowserPeer

    server = await make_server(**loopback_settings(whip_token=TOKEN, api_token=TOKEN, webrtc_media_timeout=2.0))
    watched = BrowserPeer()
    child = None
    try:
        await watched.connect(server.session, server.base_url, headers=bearer())
        assert await wait_until(lambda: len(watched.received.video) > 5, timeout=30)
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.webrtc_helpers",
            server.base_url,
            TOKEN,
            watched.manifest_id,
            "doomed-key",
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        assert line.startswith(b"READY"), line
        sessions = server.app[WEBRTC_KEY]
        streams = server.app[STREAMS_KEY]
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


# -- real publishers: an offer exactly as OBS 30 sends it, and Chromium --------------------------------


def obs30_offer(aiortc_sdp: str) -> str:
    """The offer OBS 30's WHIP output (libdatachannel) sends, byte for byte in layout: Opus at
    payload type 111 (mid 0) and H.264 at 96 (mid 1) with libdatachannel's default fmtp lines
    (`DEFAULT_OPUS_AUDIO_PROFILE`, `DEFAULT_H264_VIDEO_PROFILE`) and rtcp-fb lines, ICE/DTLS
    attributes at session level, `a=group:LS`, `a=msid-semantic:WMS *`, no candidates, no header
    extensions, no RTX. Only the transport secrets (ufrag, pwd, fingerprint) and SSRCs come from
    the aiortc peer that really sends the media, so the server's answer is what OBS would get."""
    lines = aiortc_sdp.splitlines()

    def first(prefix: str) -> str:
        return next(line for line in lines if line.startswith(prefix))

    ssrcs: list[str] = []
    for index, line in enumerate(lines):
        if line.startswith("m="):
            ssrc_line = next(x for x in lines[index + 1 :] if x.startswith("a=ssrc:"))
            ssrcs.append(ssrc_line.split()[0].split(":")[1])
    audio_ssrc, video_ssrc = ssrcs  # aiortc lists audio first (added first), like OBS
    msid, cname = "ObsStreamId00001", "ObsCname00000001"
    sdp = [
        "v=0",
        "o=rtc 2364541235 0 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=group:LS 0 1",
        "a=msid-semantic:WMS *",
        "a=setup:actpass",
        first("a=ice-ufrag:"),
        first("a=ice-pwd:"),
        "a=ice-options:ice2,trickle",
        first("a=fingerprint:sha-256"),
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        "a=mid:0",
        "a=sendonly",
        f"a=ssrc:{audio_ssrc} cname:{cname}",
        f"a=ssrc:{audio_ssrc} msid:{msid} {msid}-audio",
        f"a=msid:{msid} {msid}-audio",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;maxaveragebitrate=96000;stereo=1;sprop-stereo=1;useinbandfec=1",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "c=IN IP4 0.0.0.0",
        "a=mid:1",
        "a=sendonly",
        f"a=ssrc:{video_ssrc} cname:{cname}",
        f"a=ssrc:{video_ssrc} msid:{msid} {msid}-video",
        f"a=msid:{msid} {msid}-video",
        "a=rtcp-mux",
        "a=rtpmap:96 H264/90000",
        "a=rtcp-fb:96 nack",
        "a=rtcp-fb:96 nack pli",
        "a=rtcp-fb:96 goog-remb",
        "a=fmtp:96 profile-level-id=42e01f;packetization-mode=1;level-asymmetry-allowed=1",
    ]
    return "\r\n".join(sdp) + "\r\n"


async def test_offer_exactly_as_obs30_sends_it_publishes_and_plays_back(make_server):
    from aiortc import RTCSessionDescription

    from tests.webrtc_helpers import WhipPublisher

    server = await make_server(**loopback_settings(whip_token=TOKEN, api_token=TOKEN, webrtc_video_codec="H264"))
    s = server.session
    publisher = WhipPublisher()
    viewer = WhepViewer()
    try:
        await publisher.pc.setLocalDescription(await publisher.pc.createOffer())
        offer = obs30_offer(publisher.pc.localDescription.sdp)
        resp = await s.post(
            server.url("/whip/obs30-key"), data=offer.encode(), headers={**bearer(), "Content-Type": "application/sdp"}
        )
        answer = await resp.text()
        assert resp.status == 201, answer
        viewer_token = resp.headers["X-Viewer-Token"]  # opens this stream's WHEP, nothing else
        # the answer keeps OBS's payload types: OBS sends 111/96 whatever the server prefers
        assert "a=rtpmap:111 opus/48000/2" in answer and "a=rtpmap:96 H264/90000" in answer
        assert answer_direction(answer, "video") == "recvonly"
        await publisher.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        streams = server.app[STREAMS_KEY]
        assert await wait_until(
            lambda: (st := streams.get_active("obs30-key")) is not None and st.frames_in > 20, timeout=30
        )
        stream = streams.get_active("obs30-key")
        assert await wait_until(lambda: stream.audio_frames_in > 20, timeout=15)
        resp = await viewer.view(s, server.url("/whep/obs30-key"), viewer_token)
        assert resp.status == 201, await resp.text()
        assert await wait_until(lambda: len(viewer.received.overlaid_frames()) >= 10, timeout=30)
        ids = [f.frame_id for f in viewer.received.video]
        assert ids == sorted(ids) and max(ids) < publisher.video_source.count  # the publisher's own frames
    finally:
        await publisher.close()
        await viewer.close()


CHROMIUM_WHIP_JS = """async ([url, token]) => {
  const media = await navigator.mediaDevices.getUserMedia({video: {width: 320, height: 240}, audio: true});
  const pc = new RTCPeerConnection({iceServers: []});
  for (const track of media.getTracks()) pc.addTransceiver(track, {direction: "sendonly"});
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && resolve();
    setTimeout(resolve, 3000);
  });
  const resp = await fetch(url, {method: "POST", body: pc.localDescription.sdp,
    headers: {"Content-Type": "application/sdp", "Authorization": "Bearer " + token}});
  const answer = await resp.text();
  if (resp.status !== 201) return {status: resp.status, answer};
  await pc.setRemoteDescription({type: "answer", sdp: answer});
  window.whipPc = pc;
  return {status: resp.status, location: resp.headers.get("Location"),
          viewer_token: resp.headers.get("X-Viewer-Token")};
}"""


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed")
async def test_chromium_publishes_over_whip_and_whep_plays_it_back(make_server):
    from playwright.async_api import async_playwright

    server = await make_server(**loopback_settings(whip_token=TOKEN, api_token=TOKEN))
    viewer = WhepViewer()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=BASE_FLAGS + ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"],
        )
        try:
            page = await browser.new_page()
            await page.goto(server.url("/"))  # same origin: no CORS in the way of the fetch
            result = await page.evaluate(CHROMIUM_WHIP_JS, [server.url("/whip/chromium-key"), TOKEN])
            assert result["status"] == 201, result
            streams = server.app[STREAMS_KEY]
            assert await wait_until(
                lambda: (st := streams.get_active("chromium-key")) is not None and st.frames_in > 20, timeout=30
            )
            stream = streams.get_active("chromium-key")
            assert stream.metadata.get("transport") == "whip"
            assert await wait_until(lambda: stream.audio_frames_in > 20, timeout=15)
            resp = await viewer.view(server.session, server.url("/whep/chromium-key"), result["viewer_token"])
            assert resp.status == 201, await resp.text()
            assert await wait_until(lambda: len(viewer.received.video) >= 10, timeout=30)
            assert {(v.width, v.height) for v in viewer.received.video} == {(320, 240)}
            assert any(v.header_max > 180 for v in viewer.received.video)  # the overlay is burned in
        finally:
            await viewer.close()
            await browser.close()
