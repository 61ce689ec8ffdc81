"""Analysis inputs are read with media demuxers only (ANALYSIS_INPUT_FORMATS): a caller's concat
script or playlist that names other files under the inputs folder is refused before FFmpeg opens
what it names, over a real server; real containers still work."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from analysis.sampler import FrameSampler, NotAVideo, UnsupportedFormat, open_media
from analysis.settings import INPUT_FORMATS, AnalysisSettings
from analysis.transcript import audio_windows
from server.routes_analysis import RUNNER_KEY
from server.settings import Settings
from tests.analysis_media import FileServer, plain_card, video_form, wait_job, write_video
from tests.conftest import start_server, stop_server

SECRET = "job_0123456789abcdef.input"  # as if another caller's upload, waiting in the queue


@pytest.fixture
async def server(monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    running = await start_server(Settings(host="127.0.0.1", port=0, asr_preload=False))
    try:
        yield running
    finally:
        await stop_server(running)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("input-media")
    card = plain_card(320, 240)
    return {
        "mp4": write_video(str(folder / "plain.mp4"), 3, lambda t: card, fps=5),
        "ts": write_video(str(folder / "plain.ts"), 3, lambda t: card, fps=5, container_format="mpegts"),
    }


def _script_form(text: str, name: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("tag_list", "face")
    form.add_field("frame_interval", "1.0")
    form.add_field("video", text.encode(), filename=name, content_type="application/octet-stream")
    return form


def _place_secret(server, media) -> None:
    inputs = server.app[RUNNER_KEY].settings.uploads_dir
    inputs.mkdir(parents=True, exist_ok=True)
    (inputs / SECRET).write_bytes(Path(media["mp4"]).read_bytes())


async def _failed_unsupported(server, resp: aiohttp.ClientResponse) -> dict:
    body = await resp.json()
    assert resp.status == 202, body
    job = await wait_job(server.session, server.base_url, body["job_id"])
    # read as the 3 s secret video, the job would have completed with its duration
    assert job["status"] == "failed" and job["result"] is None, job
    assert "unsupported input format" in job["error"], job["error"]
    return job


async def test_an_uploaded_concat_script_is_refused_and_the_file_it_names_never_read(server, media):
    _place_secret(server, media)
    script = f"ffconcat version 1.0\nfile '{SECRET}'\n"
    resp = await server.session.post(server.url("/v1/analyze"), data=_script_form(script, "list.ffconcat"))
    await _failed_unsupported(server, resp)
    # the absolute path and the file: protocol are refused the same way
    inputs = server.app[RUNNER_KEY].settings.uploads_dir
    for line in (f"file '{inputs / SECRET}'", f"file 'file:{inputs / SECRET}'"):
        resp = await server.session.post(
            server.url("/v1/analyze"), data=_script_form(f"ffconcat version 1.0\n{line}\n", "x.txt")
        )
        await _failed_unsupported(server, resp)
    assert (inputs / SECRET).is_file()  # the other caller's input is untouched


async def test_a_concat_script_behind_a_video_url_is_refused(server, media, tmp_path):
    _place_secret(server, media)
    folder = tmp_path / "origin"
    folder.mkdir()
    (folder / "clip.mp4").write_text(f"ffconcat version 1.0\nfile '{SECRET}'\n")
    async with FileServer(str(folder)) as files:
        resp = await server.session.post(
            server.url("/v1/analyze"),
            json={"video_url": files.url("clip.mp4"), "tag_list": ["face"], "frame_interval": 1.0},
        )
        await _failed_unsupported(server, resp)


async def test_an_hls_playlist_naming_a_local_file_is_refused(server, media):
    _place_secret(server, media)
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:3.0,\n{SECRET}\n#EXT-X-ENDLIST\n"
    resp = await server.session.post(server.url("/v1/analyze"), data=_script_form(playlist, "list.m3u8"))
    body = await resp.json()
    assert resp.status == 202, body
    job = await wait_job(server.session, server.base_url, body["job_id"])
    assert job["status"] == "failed" and job["result"] is None, job
    assert "unsupported input format" in job["error"] or "not a readable media file" in job["error"], job


async def test_real_containers_still_work(server, media):
    for name in ("mp4", "ts"):
        resp = await server.session.post(
            server.url("/v1/analyze"), data=video_form(media[name], tag_list="face", frame_interval="1.0")
        )
        body = await resp.json()
        assert resp.status == 202, body
        job = await wait_job(server.session, server.base_url, body["job_id"])
        assert job["status"] == "completed", job
        assert job["result"]["duration"] == pytest.approx(3.0, abs=0.3) and job["result"]["tags"] == {}


def test_the_demuxer_allow_list_is_checked_before_the_header_is_read(tmp_path, media):
    secret = tmp_path / "secret.input"
    secret.write_bytes(Path(media["mp4"]).read_bytes())
    script = tmp_path / "script.input"
    script.write_text("ffconcat version 1.0\nfile 'secret.input'\n")
    playlist = tmp_path / "list.m3u8"  # named so FFmpeg would probe it as HLS
    playlist.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:3.0,\nsecret.input\n#EXT-X-ENDLIST\n")
    for path in (script, playlist):
        with pytest.raises(UnsupportedFormat, match="unsupported input format"):
            FrameSampler(str(path))
        with pytest.raises(UnsupportedFormat):  # the transcript's audio reader too
            next(audio_windows(str(path), 30.0))
    # a text file is still "not a readable media file", an MP4 opens as one
    junk = tmp_path / "junk.input"
    junk.write_text("this is not a video at all " * 100)
    with pytest.raises(NotAVideo, match="not a readable media file"):
        FrameSampler(str(junk))
    with open_media(str(secret)) as container:
        assert container.format.name.startswith("mov,mp4")
    # the list is a setting: without mov/mp4 on it an MP4 is refused
    assert AnalysisSettings().input_formats == INPUT_FORMATS
    with pytest.raises(UnsupportedFormat):
        FrameSampler(str(secret), formats=AnalysisSettings(input_formats="mpegts,matroska,webm").input_formats)
