"""Real aiortc peers playing a browser (`/offer`), OBS (WHIP) and a WHEP viewer over loopback.

Video frames carry the frame-id blocks of `tests.media_gen` in their middle rows, so a test can
tell which input frame came back and compare the overlay's header region with the input picture.

Run as a script, this module is a peer in another process that a test can kill abruptly:
`python -m tests.webrtc_helpers <base_url> <token> <whep_manifest_id> <whip_stream_key>` views one
stream over WHEP, publishes another over WHIP, prints `READY` and waits to be killed.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import aiohttp
import av
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from tests.media_gen import read_frame_id, synthetic_picture, tone

VIDEO_RATE = 90000
AUDIO_RATE = 48000
ID_MODULO = 1 << 16

# Debian's Chromium, headless, with the flags WebRTC on loopback needs
CHROMIUM = "/usr/bin/chromium"
BASE_FLAGS = [
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def enter_token(page, token: str | None) -> None:
    """Type `token` into a demo page's token field as a user does: open its <details>, fill it in
    (it goes into the Authorization header only). Nothing in open mode."""
    if token:
        await page.click("details:has(#token) > summary")
        await page.fill("#token", token)


def loopback_settings(**overrides) -> dict:
    """Server settings for loopback tests: ICE on 127.0.0.1 only, quick reaping."""
    settings = {"webrtc_host_addresses": "127.0.0.1", "webrtc_media_timeout": 3.0, "webrtc_connect_timeout": 15.0}
    settings.update(overrides)
    return settings


def header_region(luma: np.ndarray) -> np.ndarray:
    """Where the server's overlay draws its header (stream id + clock): the top-left rows."""
    width = luma.shape[1]
    return luma[2:14, 4 : max(8, int(width * 0.8))]


class IdVideoTrack(MediaStreamTrack):
    """A paced camera stand-in: moving gradients plus the frame id, `fps` frames per second."""

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: int = 30) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.count = 0
        self._start: float | None = None
        self.sent_at: dict[int, float] = {}

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            delay = self._start + self.count / self.fps - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        frame_id = self.count % ID_MODULO
        frame = av.VideoFrame.from_ndarray(synthetic_picture(self.width, self.height, frame_id), format="yuv420p")
        frame.pts = round(self.count * VIDEO_RATE / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_RATE)
        if len(self.sent_at) > 4096:
            self.sent_at.clear()
        self.sent_at[frame_id] = time.monotonic()
        self.count += 1
        return frame


class PacedAudioTrack(MediaStreamTrack):
    """A paced microphone stand-in: 20 ms 48 kHz stereo frames, sent in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None
        self._sent = 0

    def samples(self, start: int, count: int) -> np.ndarray:
        """Interleaved stereo int16 of shape (1, 2 * count) from sample `start` on."""
        raise NotImplementedError

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            delay = self._start + self._sent / AUDIO_RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        frame = av.AudioFrame.from_ndarray(self.samples(self._sent, 960), format="s16", layout="stereo")
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._sent += 960
        return frame


class ToneTrack(PacedAudioTrack):
    """A 440 Hz tone."""

    def samples(self, start: int, count: int) -> np.ndarray:
        return tone(start, count)


class SpeechTrack(PacedAudioTrack):
    """`mono48k` (int16 at 48 kHz, e.g. `tests.speech.to_48k_int16` of speech), then silence."""

    def __init__(self, mono48k: np.ndarray) -> None:
        super().__init__()
        self.mono = mono48k

    def samples(self, start: int, count: int) -> np.ndarray:
        chunk = np.zeros(count, np.int16)
        piece = self.mono[start : start + count]
        chunk[: len(piece)] = piece
        return np.repeat(chunk, 2).reshape(1, -1)


@dataclass
class ReceivedVideo:
    frame_id: int
    width: int
    height: int
    header_mean: float
    header_max: int
    input_header_mean: float
    received_at: float


@dataclass
class MediaCollector:
    """Consumes a remote track and keeps a bounded record of what arrived."""

    video: deque[ReceivedVideo] = field(default_factory=lambda: deque(maxlen=2000))
    audio_frames: int = 0
    audio_peak: int = 0
    tasks: list[asyncio.Task] = field(default_factory=list)

    def consume(self, track: MediaStreamTrack) -> None:
        self.tasks.append(asyncio.create_task(self._run(track)))

    async def _run(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self._on_video(frame)
                else:
                    self.audio_frames += 1
                    if self.audio_frames % 10 == 0:
                        self.audio_peak = max(self.audio_peak, int(np.abs(frame.to_ndarray()).max()))
        except (MediaStreamError, asyncio.CancelledError):
            pass

    def _on_video(self, frame: av.VideoFrame) -> None:
        luma = frame.to_ndarray(format="yuv420p")[: frame.height]
        frame_id = read_frame_id(frame)
        header = header_region(luma)
        expected = header_region(synthetic_picture(frame.width, frame.height, frame_id)[: frame.height])
        self.video.append(
            ReceivedVideo(
                frame_id,
                frame.width,
                frame.height,
                float(header.mean()),
                int(header.max()),
                float(expected.mean()),
                time.monotonic(),
            )
        )

    def overlaid_frames(self) -> list[ReceivedVideo]:
        """Frames whose header region is darkened with bright text, unlike the input picture."""
        return [v for v in self.video if v.header_mean < 0.7 * v.input_header_mean and v.header_max > 180]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def codec_capabilities(kind: str, mime: str, profile: str | None = None) -> list:
    codecs = RTCRtpSender.getCapabilities(kind).codecs
    chosen = [
        c
        for c in codecs
        if c.mimeType.lower() == mime.lower() and (profile is None or c.parameters.get("profile-level-id") == profile)
    ]
    assert chosen, f"aiortc has no {mime} codec"
    return chosen


def strip_candidates(sdp: str) -> str:
    """What OBS >= 30.2 sends: no candidates at all (it gathers after the answer, never PATCHes)."""
    lines = [line for line in sdp.splitlines() if not line.startswith(("a=candidate:", "a=end-of-candidates"))]
    return "\r\n".join(lines) + "\r\n"


SESSION_LEVEL = ("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:", "a=setup:", "a=ice-options:")


def obs_style_offer(sdp: str) -> str:
    """Reshape an aiortc offer like OBS's libdatachannel one: no candidates, ICE/DTLS attributes
    once at session level, `a=group:LS`, `a=ice-options:ice2,trickle`."""
    lines = strip_candidates(sdp).strip().split("\r\n")
    first_media = next(i for i, line in enumerate(lines) if line.startswith("m="))
    session_attrs: list[str] = []
    body: list[str] = []
    for index, line in enumerate(lines):
        if index >= first_media and line.startswith(SESSION_LEVEL):
            if line not in session_attrs:
                session_attrs.append(line)
            continue
        body.append(line)
    body[first_media:first_media] = session_attrs + ["a=group:LS 0 1", "a=ice-options:ice2,trickle"]
    return "\r\n".join(body) + "\r\n"


class BrowserPeer:
    """Plays the demo page: camera + mic sendrecv, an `events` data channel, POST /offer."""

    def __init__(self, width: int = 320, height: int = 240, video_codec: str | None = None) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.video_source = IdVideoTrack(width, height)
        self.audio_source = ToneTrack()
        self.received = MediaCollector()
        self.messages: deque[dict] = deque(maxlen=1000)
        self.channel = self.pc.createDataChannel("events")
        self.channel.on("message", lambda data: self.messages.append(json.loads(data)))
        video = self.pc.addTransceiver(self.video_source, direction="sendrecv")
        if video_codec:
            video.setCodecPreferences(codec_capabilities("video", f"video/{video_codec}"))
        self.pc.addTransceiver(self.audio_source, direction="sendrecv")
        self.pc.on("track", self.received.consume)
        self.manifest_id: str | None = None
        self.session_id: str | None = None
        self.answer_sdp: str | None = None

    async def connect(
        self, session: aiohttp.ClientSession, base_url: str, params: dict | None = None, headers: dict | None = None
    ) -> dict:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        if params is not None:
            body["params"] = params
        async with session.post(base_url + "/offer", json=body, headers=headers or {}) as resp:
            answer = await resp.json()
            assert resp.status == 200, answer
        self.manifest_id, self.session_id, self.answer_sdp = answer["manifest_id"], answer["session_id"], answer["sdp"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        return answer

    def messages_of(self, kind: str) -> list[dict]:
        return [m for m in list(self.messages) if m.get("type") == kind]

    def send(self, message: dict) -> None:
        self.channel.send(json.dumps(message))

    async def close(self) -> None:
        await self.pc.close()
        await self.received.stop()


class WhipPublisher:
    """Plays OBS: Opus (mid 0) + H.264 42e01f (mid 1) only, sendonly, session-level ICE/DTLS
    attributes, no candidates in the offer, Bearer token."""

    def __init__(self, width: int = 320, height: int = 240) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.video_source = IdVideoTrack(width, height)
        audio = self.pc.addTransceiver(ToneTrack(), direction="sendonly")
        audio.setCodecPreferences(codec_capabilities("audio", "audio/opus"))
        video = self.pc.addTransceiver(self.video_source, direction="sendonly")
        video.setCodecPreferences(codec_capabilities("video", "video/H264", "42e01f"))
        self.location: str | None = None
        self.etag: str | None = None
        self.manifest_id: str | None = None
        self.offer_sdp: str | None = None
        self.answer_sdp: str | None = None

    async def publish(self, session: aiohttp.ClientSession, url: str, token: str | None) -> aiohttp.ClientResponse:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.offer_sdp = obs_style_offer(self.pc.localDescription.sdp)
        headers = {"Content-Type": "application/sdp"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        resp = await session.post(url, data=self.offer_sdp.encode(), headers=headers)
        body = await resp.read()
        if resp.status == 201:
            self.location = resp.headers["Location"]
            self.etag = resp.headers.get("ETag")
            self.manifest_id = resp.headers.get("X-Manifest-Id")
            self.viewer_token = resp.headers.get("X-Viewer-Token")  # opens this stream's WHEP only
            self.answer_sdp = body.decode()
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=self.answer_sdp, type="answer"))
        return resp

    async def close(self) -> None:
        await self.pc.close()


class WhepViewer:
    """A WHEP player: recvonly video + audio (optionally an events data channel)."""

    def __init__(self, data_channel: bool = False) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.received = MediaCollector()
        self.messages: deque[dict] = deque(maxlen=1000)
        self.channel = None
        if data_channel:
            self.channel = self.pc.createDataChannel("events")
            self.channel.on("message", lambda data: self.messages.append(json.loads(data)))
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.on("track", self.received.consume)
        self.location: str | None = None
        self.answer_sdp: str | None = None

    async def view(self, session: aiohttp.ClientSession, url: str, token: str | None) -> aiohttp.ClientResponse:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Content-Type": "application/sdp"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        resp = await session.post(url, data=self.pc.localDescription.sdp.encode(), headers=headers)
        body = await resp.read()
        if resp.status == 201:
            self.location = resp.headers["Location"]
            self.answer_sdp = body.decode()
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=self.answer_sdp, type="answer"))
        return resp

    def messages_of(self, kind: str) -> list[dict]:
        return [m for m in list(self.messages) if m.get("type") == kind]

    async def close(self) -> None:
        await self.pc.close()
        await self.received.stop()


async def _run_doomed_peers(base_url: str, token: str, whep_manifest_id: str, whip_key: str) -> None:
    """The child-process side of the reaping test: view + publish, then wait to be SIGKILLed."""
    from media.ice import use_host_addresses

    use_host_addresses(["127.0.0.1"])
    async with aiohttp.ClientSession() as session:
        viewer = WhepViewer()
        resp = await viewer.view(session, f"{base_url}/whep/{whep_manifest_id}", token)
        assert resp.status == 201, await resp.text()
        publisher = WhipPublisher()
        resp = await publisher.publish(session, f"{base_url}/whip/{whip_key}", token)
        assert resp.status == 201, await resp.text()
        deadline = time.monotonic() + 30
        while not viewer.received.video and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        print("READY", len(viewer.received.video), flush=True)
        await asyncio.sleep(600)


if __name__ == "__main__":
    asyncio.run(_run_doomed_peers(*sys.argv[1:5]))
