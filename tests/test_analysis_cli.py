"""`streamlens analyze`: in-process on the embedded models, and against a running server (`--server`),
as real subprocesses (no TTY here, so progress comes as plain lines)."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from server.settings import Settings
from tests.analysis_media import face_between, plain_card, write_video
from tests.conftest import start_server, stop_server
from tests.speech import build_track, speech_tools_available


async def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.cli",
        "analyze",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        raise
    return process.returncode, out.decode(), err.decode()


async def test_in_process_tags_to_json_with_plain_progress_lines(tmp_path):
    video = write_video(str(tmp_path / "face.mp4"), 8, face_between(2.0, 5.0), fps=10)
    code, out, err = await run_cli(video, "--tags", "face", "--interval", "0.5", "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    assert out.startswith("face: 2.0-5.0s"), out
    assert "progress 100%" in err and "\r" not in err, err
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["frames_analysed"] == 16 and result["tags"]["face"][0]["start"] == pytest.approx(2.0, abs=0.5)
    code, out, err = await run_cli(str(tmp_path / "missing.mp4"), "--tags", "face")
    assert code != 0 and "no such file" in err
    code, out, err = await run_cli(video, "--prompt", "hi", env={"VISION_VLM_ENDPOINT": ""})
    assert code != 0 and "VISION_VLM_ENDPOINT" in err


@pytest.mark.skipif(
    not speech_tools_available(), reason="espeak-ng and sox are needed (scripts/install_system_deps.sh)"
)
async def test_against_a_server_with_transcript(monkeypatch, tmp_path):
    track = build_track(["Please send me the report before the end of the week."])
    video = write_video(
        str(tmp_path / "talk.mp4"),
        track.duration,
        lambda t: plain_card(160, 120),
        fps=5,
        width=160,
        height=120,
        audio=track.audio,
    )
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    server = await start_server(Settings(host="127.0.0.1", port=0, asr_preload=False))
    try:
        vtt = tmp_path / "talk.vtt"
        # the token as a user gives it: API_TOKEN in the environment (empty in open mode)
        auth = {"API_TOKEN": server.token("api") or ""}
        code, out, err = await run_cli(
            video, "--tags", "face", "--transcript", str(vtt), "--server", server.base_url, env=auth
        )
        assert code == 0, err
        assert "no tags found" in out and "report" in out.lower(), out
        text = vtt.read_text()
        assert text.startswith("WEBVTT") and "-->" in text and "report" in text.lower()
        jobs = await (await server.session.get(server.url("/v1/jobs"))).json()
        assert jobs["total"] == 1 and jobs["jobs"][0]["status"] == "completed"
        code, out, err = await run_cli(video, "--tags", "unicorn", "--server", server.base_url, env=auth)
        assert code != 0 and "cannot tag unicorn" in err
    finally:
        await stop_server(server)


async def test_progress_is_a_bar_on_a_terminal(tmp_path):
    import pty

    video = write_video(str(tmp_path / "face.mp4"), 4, face_between(1.0, 3.0), fps=10)
    leader, follower = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server.cli",
            "analyze",
            video,
            "--tags",
            "face",
            "--interval",
            "0.5",
            stdout=asyncio.subprocess.PIPE,
            stderr=follower,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        out, _ = await asyncio.wait_for(process.communicate(), 120)
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    terminal = b"".join(chunks).decode(errors="replace")
    assert process.returncode == 0 and out.decode().startswith("face: 1.0-3.0s"), terminal
    assert "\r[" in terminal and "100.0%" in terminal and "#" * 30 in terminal, terminal
