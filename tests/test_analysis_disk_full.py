"""Recorded-video inputs when the server runs out of room to store them.

A real `streamlens serve` process runs under a kernel file-size limit (RLIMIT_FSIZE, 512 KiB), so
every write past it fails with EFBIG, as a full disk fails a write with ENOSPC: both reach the same
code path. An upload bigger than the room is refused with 507 in the one error shape and leaves no
partial file; a URL job fails with the same message; the server carries on, and a small video
analyses normally afterwards."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from tests.analysis_media import FileServer, plain_card, video_form, wait_job, write_video

ROOM = 512 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _limit_file_size() -> None:  # runs in the server's process before exec
    resource.setrlimit(resource.RLIMIT_FSIZE, (ROOM, ROOM))


@pytest.fixture
def cramped_server(tmp_path):
    port = _free_port()
    data_dir = tmp_path / "data"
    env = dict(os.environ, ASR_PRELOAD="false", LOG_LEVEL="INFO", DATA_DIR=str(data_dir), OUTBOUND_ALLOW="127.0.0.1/32")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_limit_file_size,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail("streamlens serve exited: " + proc.stderr.read().decode()[-2000:])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("streamlens serve did not start")
    yield base, data_dir
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("disk-full-media")
    rng = np.random.default_rng(7)
    noise = lambda _t: rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)  # noqa: E731 (compresses badly)
    big = write_video(str(folder / "big.mp4"), 3, noise, fps=10, bit_rate=4_000_000)
    small = write_video(str(folder / "small.mp4"), 2, lambda _t: plain_card(320, 240), fps=10)
    assert os.path.getsize(big) > 2 * ROOM and os.path.getsize(small) < ROOM // 4
    return {"big": big, "small": small}


def _inputs(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "analysis-inputs").iterdir())  # AnalysisSettings.uploads_dir


async def test_no_room_for_the_video_is_507_and_leaves_nothing(cramped_server, videos):
    base, data_dir = cramped_server
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/v1/analyze", data=video_form(videos["big"], tag_list="face")) as resp:
            body = await resp.json()
        assert resp.status == 507, body
        assert "no room" in body["error"]["message"] and body["error"]["code"], body
        assert _inputs(data_dir) == []

        async with FileServer(str(Path(videos["big"]).parent)) as files:
            async with session.post(
                f"{base}/v1/analyze", json={"video_url": files.url("big.mp4"), "tag_list": ["face"]}
            ) as resp:
                submitted = await resp.json()
                assert resp.status == 202, submitted
            job = await wait_job(session, base, submitted["job_id"])
        assert job["status"] == "failed" and "no room" in job["error"], job
        assert _inputs(data_dir) == []

        # the server carries on: a video that fits analyses as usual
        async with session.post(
            f"{base}/v1/analyze", data=video_form(videos["small"], tag_list="face", frame_interval="1.0")
        ) as resp:
            submitted = await resp.json()
            assert resp.status == 202, submitted
        job = await wait_job(session, base, submitted["job_id"])
        assert job["status"] == "completed" and job["result"]["frames_analysed"] == 2, job
        async with session.get(f"{base}/health") as resp:
            assert resp.status == 200
