"""Four streams at once, each fed by FFmpeg over RTMP (as OBS would) and each with two outputs: an
RTMP push to one nginx-rtmp (Debian's libnginx-mod-rtmp) and HLS served by this server. Every
push is read back from nginx, every HLS playlist advances with segments ffprobe accepts, the
platform dying degrades only the RTMP outputs, and DELETE leaves no output thread or FFmpeg."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from rtmp.settings import RtmpSettings
from tests.conftest import RunningServer, wait_until
from tests.rtmp_platform import RtmpPlatform, available

FFMPEG = shutil.which("ffmpeg")
pytestmark = pytest.mark.skipif(
    FFMPEG is None or shutil.which("ffprobe") is None or not available(),
    reason="needs ffmpeg, ffprobe and nginx with libnginx-mod-rtmp",
)

STREAMS = 4
WIDTH, HEIGHT, FPS = 320, 180, 15  # small enough for four encoders per output on two cores
PUBLISH_SECONDS = 90  # the publishers are killed long before: a bound, not a duration
LIVE_TIMEOUT_S = 30.0  # generous: four publishers, eight encoders and nginx share two cores


def publish_command(url: str) -> list[str]:
    """FFmpeg publishing in real time (`-re`) over RTMP: H.264 + AAC in FLV, as OBS sends it."""
    return [
        str(FFMPEG), "-hide_banner", "-loglevel", "error", "-nostdin",
        "-re", "-f", "lavfi", "-i", f"testsrc=size={WIDTH}x{HEIGHT}:rate={FPS}",
        "-re", "-f", "lavfi", "-i", "sine=f=440:r=44100",
        "-t", str(PUBLISH_SECONDS), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
        "-g", str(FPS), "-pix_fmt", "yuv420p", "-c:a", "aac", "-ar", "44100", "-f", "flv", url,
    ]  # fmt: skip


@pytest.fixture
async def platform() -> AsyncIterator[RtmpPlatform]:
    running = await RtmpPlatform().start()
    try:
        yield running
    finally:
        await running.stop()


@contextlib.asynccontextmanager
async def publishers(urls: list[str]) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    procs = [
        await asyncio.create_subprocess_exec(
            *publish_command(url), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for url in urls
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
        await asyncio.gather(*(proc.wait() for proc in procs))


async def status_of(server: RunningServer, manifest_id: str) -> dict:
    resp = await server.session.get(server.url(f"/stream/{manifest_id}/status"))
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def get_text(server: RunningServer, url: str) -> str:
    async with server.session.get(url) as resp:
        text = await resp.text()
        assert resp.status == 200, (url, resp.status, text)
        return text


def uris(playlist: str) -> list[str]:
    return [line for line in playlist.splitlines() if line and not line.startswith("#")]


def media_sequence(playlist: str) -> int:
    found = re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", playlist)
    assert found, playlist
    return int(found.group(1))


async def ffprobe(path: Path) -> dict[str, dict]:
    """ffprobe's streams of a file by codec type (run off the loop)."""
    command = ["ffprobe", "-v", "error", "-show_streams", "-count_frames", "-of", "json", str(path)]
    out = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (path, out.stderr)
    return {s["codec_type"]: s for s in json.loads(out.stdout)["streams"]}


class Hls:
    """One stream's HLS as a player reads it: master → video playlist → segments."""

    def __init__(self, server: RunningServer, manifest_id: str) -> None:
        self.server = server
        self.base = server.url(f"/stream/{manifest_id}/hls")
        self.video_uri = ""

    async def open(self) -> None:
        master = await get_text(self.server, f"{self.base}/master.m3u8")
        assert "#EXT-X-STREAM-INF:" in master, master
        self.video_uri = next(u for u in uris(master) if u.startswith("video.m3u8"))

    async def playlist(self) -> str:
        return await get_text(self.server, f"{self.base}/{self.video_uri}")

    async def sequence(self) -> int:
        return media_sequence(await self.playlist())

    async def newest_segment(self, folder: Path, name: str) -> Path:
        playlist = await self.playlist()
        path = folder / name
        async with self.server.session.get(f"{self.base}/{uris(playlist)[-1]}") as resp:
            assert resp.status == 200 and resp.content_type == "video/mp2t"
            path.write_bytes(await resp.read())
        return path


def output_threads(manifest_ids: list[str]) -> list[str]:
    """Live threads of these streams' outputs (the RTMP workers `rtmp-{id}-…`, the HLS encoders `hls-{id}`)."""
    prefixes = tuple(f"{kind}-{mid}" for mid in manifest_ids for kind in ("rtmp", "hls"))
    return [t.name for t in threading.enumerate() if t.name.startswith(prefixes)]


def output_ffmpegs() -> list[psutil.Process]:
    """FFmpeg children of this process (the server runs in it) that push an output (`-i pipe:0`)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "ffmpeg" in child.name() and "pipe:0" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
    return found


async def test_four_streams_each_with_rtmp_and_hls_outputs(make_server, platform, tmp_path):
    server = await make_server(rtmp=RtmpSettings(port=-1))
    streams: list[dict] = []
    for index in range(STREAMS):
        outputs = [
            {"type": "rtmp", "id": "platform", "url": platform.url(f"out-key-{index}"), "captions": "none"},
            {"type": "hls", "id": "hls"},
        ]
        resp = await server.session.post(
            server.url("/stream/start"),
            json={"source": {"type": "rtmp"}, "params": {"captions": {"enabled": False}, "outputs": outputs}},
        )
        body = await resp.json()
        assert resp.status == 200, body
        streams.append(body)
    ids = [body["manifest_id"] for body in streams]
    assert len(set(ids)) == STREAMS

    async with publishers([f"{body['ingest_url']}/{body['stream_key']}" for body in streams]):

        async def all_live() -> bool:
            for manifest_id in ids:
                outputs = (await status_of(server, manifest_id)).get("outputs", {})
                if any(outputs.get(name, {}).get("state") != "live" for name in ("platform", "hls")):
                    return False
            return True

        assert await wait_until(all_live, LIVE_TIMEOUT_S, interval=0.25), [
            (await status_of(server, m)).get("outputs") for m in ids
        ]

        # every push is readable back from the platform: H.264 + AAC, frames
        recordings = await asyncio.gather(
            *(platform.record(f"out-key-{i}", 2, f"out-{i}.flv", wall_limit=20) for i in range(STREAMS))
        )
        for path in recordings:
            probed = await ffprobe(path)
            assert probed["video"]["codec_name"] == "h264" and probed["audio"]["codec_name"] == "aac", probed
            assert (int(probed["video"]["width"]), int(probed["video"]["height"])) == (WIDTH, HEIGHT)
            assert int(probed["video"]["nb_read_frames"]) > 0

        # every HLS: master → media playlist whose media sequence grows, segments ffprobe accepts
        players = [Hls(server, m) for m in ids]
        for player in players:
            await player.open()
        first = [await player.sequence() for player in players]

        async def advanced(players: list[Hls], since: list[int]) -> bool:
            now = [await player.sequence() for player in players]
            return all(n > s for n, s in zip(now, since, strict=True))

        assert await wait_until(lambda: advanced(players, first), 20, interval=0.25)
        for index, player in enumerate(players):
            segment = await player.newest_segment(tmp_path, f"hls-{index}.ts")
            probed = await ffprobe(segment)
            assert probed["video"]["codec_name"] == "h264" and probed["audio"]["codec_name"] == "aac", probed
            assert int(probed["video"]["nb_read_frames"]) > 0

        # each status: both outputs live, frames counted, no error
        for manifest_id in ids:
            status = await status_of(server, manifest_id)
            assert status["frames_in"] > 0
            for name, type_ in (("platform", "rtmp"), ("hls", "hls")):
                entry = status["outputs"][name]
                assert entry["type"] == type_ and entry["state"] == "live", entry
                assert entry["frames"] > 0 and entry["bytes"] > 0 and entry["last_error"] is None, entry
        metrics = await get_text(server, server.url("/metrics"))
        for manifest_id in ids:
            for name, type_ in (("platform", "rtmp"), ("hls", "hls")):
                labels = f'manifest_id="{manifest_id}",output="{name}",state="live",type="{type_}"'
                assert f"streamlens_output_state{{{labels}}} 1.0" in metrics
        # one pushing FFmpeg per RTMP output (the server's children: it runs in this process)
        assert len(output_ffmpegs()) == STREAMS, [p.cmdline() for p in output_ffmpegs()]

        # the platform dies: the four RTMP outputs retry; the inputs and the HLS outputs go on
        await platform.kill()

        async def rtmp_retrying() -> bool:
            for manifest_id in ids:
                entry = (await status_of(server, manifest_id))["outputs"]["platform"]
                if entry["state"] not in ("retrying", "connecting") or not entry["last_error"]:
                    return False
            return True

        assert await wait_until(rtmp_retrying, 20, interval=0.25)
        before = {m: (await status_of(server, m))["frames_in"] for m in ids}
        since = [await player.sequence() for player in players]

        async def inputs_flowing() -> bool:
            now = {m: (await status_of(server, m))["frames_in"] for m in ids}
            return all(now[m] >= before[m] + 2 * FPS for m in ids)

        assert await wait_until(inputs_flowing, 20, interval=0.25)
        assert await wait_until(lambda: advanced(players, since), 20, interval=0.25)
        for manifest_id in ids:
            status = await status_of(server, manifest_id)
            # running (the frames above prove it); 15 fps sits on MIN_INPUT_FPS, so DEGRADED_INPUT may flicker
            assert status["state"] in ("ONLINE", "DEGRADED_INFERENCE", "DEGRADED_INPUT"), status["state"]
            hls = status["outputs"]["hls"]
            assert hls["state"] == "live" and hls["last_error"] is None, hls

        # DELETE all four: every output thread and every pushing FFmpeg is gone
        assert output_threads(ids)
        for manifest_id in ids:
            resp = await server.session.delete(server.url(f"/stream/{manifest_id}"))
            assert resp.status == 200, await resp.text()
        for manifest_id in ids:
            status = await status_of(server, manifest_id)
            assert status["state"] == "STOPPED" and not status.get("outputs"), status
        assert await wait_until(lambda: not output_threads(ids), 20), output_threads(ids)
        assert await wait_until(lambda: not output_ffmpegs(), 20), [p.cmdline() for p in output_ffmpegs()]
        metrics = await get_text(server, server.url("/metrics"))
        assert not any(f'manifest_id="{m}",output=' in metrics for m in ids)
