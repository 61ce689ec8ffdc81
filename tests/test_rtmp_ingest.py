"""RTMP ingest with real publishers on loopback: Debian's FFmpeg and FFmpeg 8 push H.264 + AAC in
FLV to the server's listener, as OBS does; raw sockets send what no encoder would."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest

from rtmp import amf0
from rtmp.chunks import VIDEO, Message, control
from rtmp.settings import RtmpSettings
from server.keys import STREAM_SERVICE_KEY
from server.rtmp_service import RTMP_KEY
from tests.conftest import TOKEN_MODE, RunningServer, wait_until
from tests.rtmp_client import RawRtmpClient
from tests.test_whip_ffmpeg import FFMPEG8

DEBIAN_FFMPEG = shutil.which("ffmpeg")
pytestmark = pytest.mark.skipif(DEBIAN_FFMPEG is None or FFMPEG8 is None, reason="needs ffmpeg and FFmpeg 8")


def publish_command(
    binary: str, url: str, seconds: float, audio: Path | None = None, video_codec: str = "libx264"
) -> list[str]:
    audio_input = ["-re", "-i", str(audio)] if audio else ["-re", "-f", "lavfi", "-i", "sine=f=440:r=44100"]
    return [
        binary,
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-re",
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=30",
        *audio_input,
        "-t",
        str(seconds),
        "-c:v",
        video_codec,
        *(["-x265-params", "log-level=error"] if video_codec == "libx265" else []),
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-g",
        "30",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-ar",
        "44100",
        "-f",
        "flv",
        url,
    ]


async def run_publisher(command: list[str], timeout: float = 30.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, err.decode(errors="replace")


@contextlib.asynccontextmanager
async def background_publisher(command: list[str]):
    proc = await asyncio.create_subprocess_exec(*command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def rtmp_server(make_server, **rtmp) -> RunningServer:
    return await make_server(rtmp=RtmpSettings(port=-1, **rtmp))


async def declare(server: RunningServer, **source) -> dict:
    response = await server.session.post(
        server.url("/stream/start"), json={"source": {"type": "rtmp", **source}, "params": {"captions": {}}}
    )
    body = await response.json()
    assert response.status == 200, body
    return body


async def status(server: RunningServer, manifest_id: str) -> dict:
    response = await server.session.get(server.url(f"/stream/{manifest_id}/status"), headers=server.auth_headers("api"))
    assert response.status == 200
    return await response.json()


def rtmp_stats(server: RunningServer) -> dict:
    return server.app[RTMP_KEY].server.stats()


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> Path:
    """One spoken sentence then two seconds of silence (the pause ends the caption)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng")
    folder = tmp_path_factory.mktemp("rtmp-speech")
    raw = folder / "raw.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), "The weather is nice today."], check=True, timeout=30)
    out = folder / "talk.wav"
    subprocess.run(
        [DEBIAN_FFMPEG, "-v", "error", "-y", "-i", str(raw), "-af", "apad=pad_dur=2", "-ar", "44100", str(out)],
        check=True,
        timeout=30,
    )
    return out


async def test_publish_drop_reconnect_and_delete(make_server, speech_wav):
    """A declared stream: Debian's FFmpeg publishes speech (frames and a caption arrive), leaves
    (DEGRADED_INPUT), FFmpeg 8 reconnects with the same key (the same stream resumes), and DELETE
    disconnects it."""
    server = await rtmp_server(make_server)
    body = await declare(server)
    manifest_id, key = body["manifest_id"], body["stream_key"]
    port = server.app[RTMP_KEY].port
    assert body["ingest_url"] == f"rtmp://127.0.0.1:{port}/live"
    assert len(key) >= 16
    url = f"{body['ingest_url']}/{key}"

    rc, err = await run_publisher(publish_command(DEBIAN_FFMPEG, url, 4.5, audio=speech_wav))
    assert rc == 0, err
    first = await status(server, manifest_id)
    assert first["frames_in"] >= 100  # 4.5 s at 30 fps, all of them decoded
    assert first["audio_frames_in"] > 100
    assert first["decode_errors"] == 0
    assert first["source"]["publishes"] == 1
    assert key not in str(first)  # the key is no part of the status

    async def caption() -> bool:
        response = await server.session.get(server.url(f"/stream/{manifest_id}/captions.vtt"))
        return "weather" in (await response.text()).lower()

    assert await wait_until(caption, timeout=20, interval=0.25), "no caption from the RTMP audio"

    async def degraded() -> bool:
        return (await status(server, manifest_id))["state"] == "DEGRADED_INPUT"

    assert await wait_until(degraded, timeout=10, interval=0.2)

    # FFmpeg sends a query after the key as part of the publish name ("key?x=1"): the key still matches
    async with background_publisher(publish_command(FFMPEG8, url + "?x=1", 30)) as proc:

        async def resumed() -> bool:
            current = await status(server, manifest_id)
            return current["source"]["publishes"] == 2 and current["frames_in"] >= first["frames_in"] + 30

        assert await wait_until(resumed, timeout=15, interval=0.2)
        assert (await status(server, manifest_id))["state"] in ("ONLINE", "DEGRADED_INPUT", "LOADING")
        response = await server.session.delete(server.url(f"/stream/{manifest_id}"))
        assert response.status == 200
        # the publisher is disconnected: FFmpeg ends long before its 30 s
        await asyncio.wait_for(proc.wait(), 10)
    stopped = await status(server, manifest_id)
    assert stopped["state"] == "STOPPED"
    assert rtmp_stats(server)["connections_open"] == 0

    # the key died with its stream (in open mode any key may start a new stream of its own)
    if TOKEN_MODE:
        client = await RawRtmpClient.connect(port)
        try:
            await client.handshake()
            assert await client.publish(key) == "NetStream.Publish.BadName"
        finally:
            client.close()


async def test_wrong_key_refused(make_server):
    token = "rtmp-api-token"
    server = await make_server(api_token=token, rtmp=RtmpSettings(port=-1))
    headers = {"Authorization": f"Bearer {token}"}
    response = await server.session.post(
        server.url("/stream/start"), json={"source": {"type": "rtmp"}}, headers=headers
    )
    body = await response.json()
    assert response.status == 200
    url = f"{body['ingest_url']}/not-the-right-key-at-all"
    rc, _ = await run_publisher(publish_command(DEBIAN_FFMPEG, url, 2), timeout=20)
    assert rc != 0
    assert rtmp_stats(server)["refused_by_reason"] == {"unknown_key": 1}
    assert [s.manifest_id for s in server.app[STREAM_SERVICE_KEY].manager.active()] == [body["manifest_id"]]
    assert (await status(server, body["manifest_id"]))["frames_in"] == 0
    # the caller's own key: checked for length and characters
    response = await server.session.post(
        server.url("/stream/start"), json={"source": {"type": "rtmp", "stream_key": "short"}}, headers=headers
    )
    assert response.status == 400
    assert "stream_key" in (await response.json())["error"]["message"]


async def test_rtmp_source_refused_when_ingest_is_off(make_server):
    server = await make_server(rtmp=RtmpSettings(port=0))
    assert RTMP_KEY not in server.app
    response = await server.session.post(server.url("/stream/start"), json={"source": {"type": "rtmp"}})
    assert response.status == 400
    assert "RTMP_PORT=0" in (await response.json())["error"]["message"]
    assert list(server.app[STREAM_SERVICE_KEY].manager.active()) == []


async def test_open_mode_any_key(make_server):
    """No token set: any key starts a stream of that id with captions on (token mode: refused)."""
    server = await rtmp_server(make_server)
    port = server.app[RTMP_KEY].port
    rc, err = await run_publisher(publish_command(FFMPEG8, f"rtmp://127.0.0.1:{port}/live/obs-test", 1.5))
    stream = server.app[STREAM_SERVICE_KEY].manager.get("obs-test")
    if TOKEN_MODE:
        assert rc != 0
        assert stream is None
        assert rtmp_stats(server)["refused_by_reason"] == {"unknown_key": 1}
        return
    assert rc == 0, err
    assert stream is not None
    assert stream.frames_in >= 30
    assert stream.params == {"captions": {}}


async def test_enhanced_rtmp_hevc(make_server):
    """FFmpeg 8 sends HEVC in Enhanced RTMP (FourCC hvc1): it decodes like H.264."""
    server = await rtmp_server(make_server)
    body = await declare(server)
    rc, err = await run_publisher(
        publish_command(FFMPEG8, f"{body['ingest_url']}/{body['stream_key']}", 1.5, video_codec="libx265")
    )
    assert rc == 0, err
    current = await status(server, body["manifest_id"])
    assert current["frames_in"] >= 40
    assert current["decode_errors"] == 0
    assert rtmp_stats(server)["flv_errors"] == 0


async def test_reconnect_window_expires(make_server):
    server = await rtmp_server(make_server, reconnect_seconds=1.0)
    body = await declare(server)
    url = f"{body['ingest_url']}/{body['stream_key']}"
    rc, err = await run_publisher(publish_command(FFMPEG8, url, 1.5))
    assert rc == 0, err

    async def stopped() -> bool:
        return (await status(server, body["manifest_id"]))["state"] == "STOPPED"

    assert await wait_until(stopped, timeout=10, interval=0.2)
    final = await status(server, body["manifest_id"])
    assert final["frames_in"] > 0
    assert "RTMP publisher gone for 1 s" in final["end_reason"]


async def hostile(port: int, attack: str) -> bool:
    """One hostile client; True when the server disconnected it."""
    client = await RawRtmpClient.connect(port)
    try:
        if attack == "bad_version":
            await client.send_raw(bytes([6]) + bytes(1536))
            return await client.closed_by_server()
        await client.handshake()
        if attack == "garbage":
            await client.send_raw(bytes(range(256)) * 64)
        elif attack == "chunk_size_zero":
            await client.send(control(1, 0))
        elif attack == "chunk_size_huge":
            await client.send(control(1, 1 << 31))
        elif attack == "amf_string_bomb":  # a command whose string says 65535 bytes follow; 5 do
            await client.send(Message(20, b"\x02\xff\xffhello", 0, 0, 3))
        elif attack == "amf_long_string":  # a 1 MiB AMF long string inside a message the server takes
            await client.send(Message(20, b"\x0c" + (1 << 20).to_bytes(4, "big") + b"x" * (1 << 20), 0, 0, 3))
        elif attack == "oversized_message":  # a header announcing 16 MiB - 1 (over the 8 MiB cap)
            await client.send_raw(bytes([0x03]) + bytes(3) + (0xFFFFFF).to_bytes(3, "big") + bytes([VIDEO]) + bytes(4))
        elif attack == "busy_key":
            return False
        return await client.closed_by_server()
    finally:
        client.close()


async def test_hostile_clients_disconnected_while_a_stream_carries_on(make_server):
    server = await rtmp_server(make_server)
    body = await declare(server)
    manifest_id, key = body["manifest_id"], body["stream_key"]
    port = server.app[RTMP_KEY].port
    async with background_publisher(publish_command(DEBIAN_FFMPEG, f"{body['ingest_url']}/{key}", 30)):
        assert await wait_until(lambda: rtmp_stats(server)["publishing"] == 1, timeout=10)
        attacks = [
            "bad_version",
            "garbage",
            "chunk_size_zero",
            "chunk_size_huge",
            "amf_string_bomb",
            "amf_long_string",
            "oversized_message",
        ]
        results = await asyncio.gather(*(hostile(port, attack) for attack in attacks))
        assert dict(zip(attacks, results, strict=True)) == dict.fromkeys(attacks, True)
        # a second publisher with the same key is refused; the first one keeps the stream
        second = await RawRtmpClient.connect(port)
        try:
            await second.handshake()
            assert await second.publish(key) == "NetStream.Publish.BadName"
        finally:
            second.close()
        before = (await status(server, manifest_id))["frames_in"]
        assert await wait_until(
            lambda: server.app[STREAM_SERVICE_KEY].manager.get(manifest_id).frames_in >= before + 30, timeout=10
        )

        async def online() -> bool:
            current = await status(server, manifest_id)
            return current["state"] == "ONLINE" and current["source"]["publishing"] is True

        assert await wait_until(online, timeout=10, interval=0.2)
    stats = rtmp_stats(server)
    assert stats["handshake_failed"] == 1
    assert stats["protocol_errors"] == 6
    assert stats["refused_by_reason"] == {"busy": 1}
    response = await server.session.get(server.url("/metrics"))
    text = await response.text()
    assert "streamlens_rtmp_protocol_errors_total 6.0" in text
    assert "streamlens_rtmp_publish_refused_total 1.0" in text


async def test_connection_limit_and_handshake_timeout(make_server):
    server = await rtmp_server(make_server, max_connections=2, handshake_timeout=1.0)
    port = server.app[RTMP_KEY].port
    held = [await RawRtmpClient.connect(port) for _ in range(2)]
    try:
        assert await wait_until(lambda: rtmp_stats(server)["connections_open"] == 2, timeout=5)
        third = await RawRtmpClient.connect(port)
        try:
            assert await third.closed_by_server(timeout=5)
        finally:
            third.close()
        assert rtmp_stats(server)["refused_connection_limit"] == 1
        # the two silent clients are dropped at the handshake deadline
        assert all([await client.closed_by_server(timeout=5) for client in held])
        assert rtmp_stats(server)["timeouts"] == 2
    finally:
        for client in held:
            client.close()
    # the slots are free again: a publish goes through
    body = await declare(server)
    client = await RawRtmpClient.connect(port)
    try:
        await client.handshake()
        assert await client.publish(body["stream_key"]) == "NetStream.Publish.Start"
    finally:
        client.close()


def flv_tags(path: Path) -> list[tuple[int, int, bytes]]:
    """(type, timestamp ms, body) of every tag of an FLV file."""
    data = path.read_bytes()
    assert data[:3] == b"FLV"
    pos, tags = int.from_bytes(data[5:9], "big") + 4, []
    while pos + 11 <= len(data):
        kind, size = data[pos], int.from_bytes(data[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(data[pos + 4 : pos + 7], "big") | data[pos + 7] << 24
        tags.append((kind, ts, data[pos + 11 : pos + 11 + size]))
        pos += 11 + size + 4
    return tags


async def test_obs_command_sequence_with_b_frames(make_server, tmp_path):
    """OBS's publish exactly as librtmp sends it (Set Chunk Size 4096 first, its connect fields,
    releaseStream / FCPublish / createStream / publish, @setDataFrame), carrying x264 with B-frames
    (composition times) and AAC: every video frame is decoded, the reordered tail included."""
    clip = tmp_path / "obs.flv"
    subprocess.run(
        [DEBIAN_FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=30", "-f", "lavfi", "-i"]
        + ["sine=f=440:r=48000", "-t", "2", "-c:v", "libx264", "-bf", "2", "-g", "60", "-pix_fmt", "yuv420p"]
        + ["-c:a", "aac", "-ar", "48000", "-flvflags", "no_metadata", str(clip)],
        check=True,
        timeout=60,
    )
    tags = flv_tags(clip)
    video_frames = sum(1 for kind, _, body in tags if kind == 9 and body[1] == 1)
    assert video_frames == 60
    server = await rtmp_server(make_server)
    body = await declare(server)
    key = body["stream_key"]
    tc_url = body["ingest_url"]
    client = await RawRtmpClient.connect(server.app[RTMP_KEY].port)
    try:
        await client.handshake()
        await client.send(control(1, 4096))
        client.out.chunk_size = 4096
        obs_connect = {"app": "live", "type": "nonprivate", "flashVer": "FMLE/3.0 (compatible; FMSc/1.0)"}
        await client.command("connect", 1, {**obs_connect, "swfUrl": tc_url, "tcUrl": tc_url})
        reply = await client.next_command()
        assert reply[0] == "_result" and reply[3]["code"] == "NetConnection.Connect.Success"
        await client.command("releaseStream", 2, None, key)
        await client.command("FCPublish", 3, None, key)
        await client.command("createStream", 4, None)
        replies = [await client.next_command() for _ in range(3)]
        assert [r[0] for r in replies] == ["_result"] * 3
        assert replies[2][1:] == [4.0, None, 1.0]  # the message stream id publish goes on
        await client.command("publish", 5, None, key, "live", msid=1)
        status_reply = await client.next_command()
        assert status_reply[0] == "onStatus" and status_reply[3]["code"] == "NetStream.Publish.Start"
        meta = amf0.EcmaArray(width=320.0, height=240.0, videocodecid=7.0, audiocodecid=10.0, encoder="obs-output")
        await client.send(Message(18, amf0.encode_all("@setDataFrame", "onMetaData", meta), 0, 1, 4))
        for kind, ts, tag in tags:
            if kind in (8, 9):
                await client.send(Message(kind, tag, ts, 1, 6 if kind == 9 else 4))
        await client.command("FCUnpublish", 6, None, key)
        await client.command("deleteStream", 7, None, 1.0)

        async def all_frames() -> bool:
            return (await status(server, body["manifest_id"]))["source"]["video_frames"] == video_frames

        assert await wait_until(all_frames, timeout=10, interval=0.1)
    finally:
        client.close()
    current = await status(server, body["manifest_id"])
    assert current["frames_in"] == video_frames
    assert current["audio_frames_in"] >= 90  # 2 s of 1024-sample AAC frames at 48 kHz
    assert current["decode_errors"] == 0
    assert current["source"]["last_end_reason"] == "publisher stopped"


async def test_acks_and_ping(make_server):
    """A client that sets a window gets an Ack per window received; a ping gets its pong."""
    server = await rtmp_server(make_server)
    client = await RawRtmpClient.connect(server.app[RTMP_KEY].port)
    try:
        await client.handshake()
        await client.send(control(5, 1000))  # Window Ack Size
        await client.send(Message(18, amf0.encode_all("ignored", "x" * 3000), 0, 0, 5))
        await client.send(Message(4, (6).to_bytes(2, "big") + (1234).to_bytes(4, "big"), 0, 0, 2))
        seen: dict[int, bytes] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not (3 in seen and 4 in seen) and loop.time() < deadline:
            data = await asyncio.wait_for(client.reader.read(65536), 5)
            assert data
            for message in client.chunks.feed(data):
                seen[message.msg_type] = message.payload
        assert int.from_bytes(seen[3], "big") >= 3000  # Ack: bytes received so far
        assert seen[4] == (7).to_bytes(2, "big") + (1234).to_bytes(4, "big")  # PingResponse echoes the time
    finally:
        client.close()
