"""Recorded-video analysis over real HTTP: uploads and URLs, timed tags from the real embedded
models (OpenCV's face cascade, RapidOCR), jobs in SQLite, SSE progress, cancel, restart, caps.

Videos are generated with PyAV (tests/analysis_media.py): a few seconds of 320x240 frames."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from analysis.store import JobStore
from server.routes_analysis import RUNNER_KEY
from server.settings import Settings
from tests.analysis_media import FileServer, face_between, plain_card, text_between, video_form, wait_job, write_video
from tests.conftest import start_server, stop_server, wait_until
from tests.sse import SseReader


@pytest.fixture
async def analysis_server(monkeypatch, tmp_path):
    """Start servers whose DATA_DIR is this test's tmp dir; env overrides per call."""
    started = []

    async def factory(**env):
        monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        running = await start_server(Settings(host="127.0.0.1", port=0, asr_preload=False))
        started.append(running)
        return running

    yield factory
    for running in started:
        if not getattr(running, "stopped", False):
            await stop_server(running)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("media")
    return {
        "face": write_video(str(folder / "face.mp4"), 12, face_between(4.0, 9.0), fps=10),
        "text": write_video(str(folder / "text.mp4"), 6, text_between(2.0, 4.0, "OPEN SESAME"), fps=10),
        "long": write_video(str(folder / "long.mp4"), 40, text_between(0, 40, "SLOW JOB"), fps=5),
        "plain": write_video(str(folder / "plain.mp4"), 2, lambda t: plain_card(320, 240), fps=10),
    }


def uploads(server) -> Path:
    return Path(server.app[RUNNER_KEY].settings.uploads_dir)


async def submit_upload(server, path: str, **fields) -> dict:
    async with server.session.post(server.url("/v1/analyze"), data=video_form(path, **fields)) as resp:
        body = await resp.json()
        assert resp.status == 202, body
        return body


async def test_face_span_matches_known_times_and_events_end_with_the_result(analysis_server, media):
    server = await analysis_server()
    accepted = await submit_upload(server, media["face"], tag_list="face", frame_interval="0.5")
    assert accepted["status_url"] == f"/v1/jobs/{accepted['job_id']}"
    reader = SseReader(server.session, server.url(accepted["events_url"])).start()
    await asyncio.wait_for(reader.ended.wait(), 60)
    events = [m.event for m in reader.messages]
    assert events[-2:] == ["result", "end"], events
    job = reader.of("result")[0].data
    assert job["status"] == "completed", job
    result = job["result"]
    spans = result["tags"]["face"]
    assert len(spans) == 1, spans
    assert abs(spans[0]["start"] - 4.0) <= 0.5 and abs(spans[0]["end"] - 9.0) <= 0.5, spans
    assert 0 < spans[0]["confidence"] <= 1
    assert result["frames_analysed"] == 24 and result["duration"] == pytest.approx(12.0, abs=0.2)
    times = [f["t"] for f in result["frames"]]
    assert times == sorted(times)
    with_face = [f for f in result["frames"] if f["tags"]]
    assert all(4.0 <= f["t"] < 9.0 for f in with_face) and all(f["tags"][0]["box"] for f in with_face)
    # the upload is gone once the job is done; the row is in the list, newest first
    assert not list(uploads(server).iterdir())
    listing = await (await server.session.get(server.url("/v1/jobs?limit=5"))).json()
    assert listing["jobs"][0]["id"] == accepted["job_id"] and listing["total"] >= 1
    assert "result" not in listing["jobs"][0] or listing["jobs"][0]["result"] is None


async def test_text_tags_carry_the_words(analysis_server, media):
    server = await analysis_server()
    accepted = await submit_upload(
        server, media["text"], tag_list="text", frame_interval="0.5", return_confidence="false"
    )
    job = await wait_job(server.session, server.base_url, accepted["job_id"])
    assert job["status"] == "completed", job
    spans = job["result"]["tags"]["text"]
    assert len(spans) == 1 and abs(spans[0]["start"] - 2.0) <= 0.5 and abs(spans[0]["end"] - 4.0) <= 0.5, spans
    assert "confidence" not in spans[0]
    read = [tag["words"] for f in job["result"]["frames"] for tag in f["tags"]]
    assert read and all("OPEN SESAME" in words.upper() for words in read), read


async def test_url_input_and_bad_inputs_fail_with_clear_messages(analysis_server, media, tmp_path):
    server = await analysis_server()
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video at all " * 100)
    async with FileServer(str(Path(media["plain"]).parent)) as files, FileServer(str(tmp_path)) as junk:
        ok = await (
            await server.session.post(
                server.url("/v1/analyze"),
                json={"video_url": files.url("plain.mp4"), "tag_list": ["face"], "frame_interval": 1.0},
            )
        ).json()
        missing = await (
            await server.session.post(server.url("/v1/analyze"), json={"video_url": files.url("nothing-here.mp4")})
        ).json()
        redirect = await (
            await server.session.post(
                server.url("/v1/analyze"), json={"video_url": f"http://127.0.0.1:{files.port}/redirect"}
            )
        ).json()
        not_video = await (
            await server.session.post(server.url("/v1/analyze"), json={"video_url": junk.url("junk.mp4")})
        ).json()
        jobs = {
            name: await wait_job(server.session, server.base_url, body["job_id"])
            for name, body in (("ok", ok), ("missing", missing), ("redirect", redirect), ("junk", not_video))
        }
    assert jobs["ok"]["status"] == "completed" and jobs["ok"]["result"]["tags"] == {}, jobs["ok"]
    assert jobs["missing"]["status"] == "failed" and "HTTP 404" in jobs["missing"]["error"]
    assert jobs["redirect"]["status"] == "failed" and "redirect" in jobs["redirect"]["error"]
    assert jobs["junk"]["status"] == "failed" and "not a video" in jobs["junk"]["error"], jobs["junk"]
    # no temp file survives any of them
    assert not list(uploads(server).iterdir())
    # bad requests are 400s in the one error shape
    for body in (
        {"video_url": "file:///etc/passwd"},
        {"video_url": "http://x/v.mp4", "frame_interval": 0},
        {"video_url": "http://x/v.mp4", "backend": "nope"},
    ):
        resp = await server.session.post(server.url("/v1/analyze"), json=body)
        assert resp.status == 400 and "message" in (await resp.json())["error"]
    resp = await server.session.post(server.url("/v1/analyze"), data=video_form(media["plain"], tag_list="unicorn"))
    job = await wait_job(server.session, server.base_url, (await resp.json())["job_id"])
    assert job["status"] == "failed" and "cannot tag unicorn" in job["error"]


async def test_upload_over_the_cap_is_413_and_leaves_nothing(analysis_server, media):
    server = await analysis_server(ANALYSIS_MAX_BYTES=4096)
    resp = await server.session.post(server.url("/v1/analyze"), data=video_form(media["face"], tag_list="face"))
    body = await resp.json()
    assert resp.status == 413, body
    assert "ANALYSIS_MAX_BYTES" in body["error"]["message"]
    assert not list(uploads(server).iterdir())
    assert (await (await server.session.get(server.url("/v1/jobs"))).json())["total"] == 0


async def test_cancel_within_a_second_and_a_bounded_queue(analysis_server, media):
    server = await analysis_server(ANALYSIS_MAX_QUEUED=1)
    slow = dict(tag_list="text", frame_interval="0.2")  # OCR on 200 frames: many seconds
    first = await submit_upload(server, media["long"], **slow)
    deadline = time.monotonic() + 30
    while (job := await wait_job(server.session, server.base_url, first["job_id"], timeout=0))["progress"][
        "frames_done"
    ] < 2:
        assert time.monotonic() < deadline and job["status"] in ("queued", "running"), job
        await asyncio.sleep(0.1)
    second = await submit_upload(server, media["long"], **slow)  # waits in the queue
    resp = await server.session.post(server.url("/v1/analyze"), data=video_form(media["long"], **slow))
    assert resp.status == 503 and "ANALYSIS_MAX_QUEUED" in (await resp.json())["error"]["message"]
    resp = await server.session.delete(server.url(f"/v1/jobs/{first['job_id']}"))
    assert resp.status == 200 and (await resp.json())["status"] == "cancelled"
    job = await wait_job(server.session, server.base_url, first["job_id"], timeout=0)
    assert job["status"] == "cancelled" and job["progress"]["frames_done"] < 200
    # the queued one starts; cancel it too, then delete both rows
    assert (await (await server.session.delete(server.url(f"/v1/jobs/{second['job_id']}"))).json())[
        "status"
    ] == "cancelled"
    for job_id in (first["job_id"], second["job_id"]):
        assert (await (await server.session.delete(server.url(f"/v1/jobs/{job_id}"))).json())["status"] == "deleted"
        assert (await server.session.get(server.url(f"/v1/jobs/{job_id}"))).status == 404
    assert await wait_until(lambda: not list(uploads(server).iterdir()), timeout=5)


async def test_restart_keeps_results_marks_running_interrupted_and_retry_runs_it(analysis_server, media, tmp_path):
    async with FileServer(str(Path(media["face"]).parent)) as files:
        server = await analysis_server()
        done = await (
            await server.session.post(
                server.url("/v1/analyze"), json={"video_url": files.url("plain.mp4"), "tag_list": ["face"]}
            )
        ).json()
        assert (await wait_job(server.session, server.base_url, done["job_id"]))["status"] == "completed"
        await stop_server(server)
        server.stopped = True
        # a process that died mid-job leaves its row "running"
        store = JobStore(tmp_path / "data" / "analysis.sqlite3")
        await store.open()
        await store.insert(
            {
                "id": "job_deadbeef00000000",
                "kind": "analyze",
                "status": "running",
                "created_at": time.time(),
                "started_at": time.time(),
                "progress": 0.4,
                "frames_done": 9,
                "request": {"video_url": files.url("face.mp4"), "tag_list": ["face"], "frame_interval": 1.0},
            }
        )
        await store.close()

        server = await analysis_server()
        kept = await wait_job(server.session, server.base_url, done["job_id"], timeout=0)
        assert kept["status"] == "completed" and kept["result"]["frames_analysed"] > 0
        dead = await wait_job(server.session, server.base_url, "job_deadbeef00000000", timeout=0)
        assert dead["status"] == "interrupted" and "retry" in dead["error"]
        resp = await server.session.post(server.url("/v1/jobs/job_deadbeef00000000/retry"))
        assert resp.status == 202, await resp.json()
        job = await wait_job(server.session, server.base_url, "job_deadbeef00000000")
        assert job["status"] == "completed" and job["attempts"] == 1, job
        assert abs(job["result"]["tags"]["face"][0]["start"] - 4.0) <= 1.0
        resp = await server.session.post(server.url(f"/v1/jobs/{done['job_id']}/retry"))
        assert resp.status == 409


async def test_health_routes_and_capability_answers_with_a_job_when_out_of_time(analysis_server, media):
    server = await analysis_server()
    basic = await (await server.session.get(server.url("/v1/health"))).json()
    assert basic["status"] in ("IDLE", "OK") and basic["version"]
    detailed = await (await server.session.get(server.url("/v1/health/detailed"))).json()
    assert "embedded" in detailed["models"]["vision"] and detailed["jobs"]["workers"] == 1
    assert "available" in detailed["gpu"]
    caps = await (await server.session.get(server.url("/process/capabilities"))).json()
    assert "video-inference" in str(caps) and "'analyze'" in str(caps).replace('"', "'")
    async with FileServer(str(Path(media["face"]).parent)) as files:
        from tests.test_feature_capabilities import livepeer_header

        resp = await server.session.post(
            server.url("/process/request/analyze"),
            json={"video_url": files.url("face.mp4"), "tag_list": ["face"]},
            headers={"Livepeer": livepeer_header("analyze", timeout=60)},
        )
        body = await resp.json()
        assert resp.status == 200 and body["status"] == "completed" and body["tags"]["face"], body
        resp = await server.session.post(
            server.url("/process/request/analyze"),
            json={"video_url": files.url("long.mp4"), "tag_list": ["text"]},
            headers={"Livepeer": livepeer_header("analyze", timeout=1)},
        )
        body = await resp.json()
        assert resp.status == 202 and body["status_url"] == f"/v1/jobs/{body['job_id']}", body
        await server.session.delete(server.url(body["status_url"]))


async def test_retention_and_row_cap_remove_old_finished_jobs(analysis_server, media):
    server = await analysis_server(ANALYSIS_RETENTION_DAYS="0.00002", ANALYSIS_MAX_JOBS="10")  # ~1.7 s
    runner = server.app[RUNNER_KEY]
    accepted = await submit_upload(server, media["plain"], tag_list="face")
    assert (await wait_job(server.session, server.base_url, accepted["job_id"]))["status"] == "completed"
    assert await runner.sweep() == 0  # not old yet
    await asyncio.sleep(2.0)  # kept: the job must age past its retention (the age is the behaviour)
    assert await runner.sweep() == 1
    assert (await server.session.get(server.url(f"/v1/jobs/{accepted['job_id']}"))).status == 404


async def test_denied_video_url_fails_without_a_connection(monkeypatch, tmp_path, media):
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    server = await start_server(
        Settings(host="127.0.0.1", port=0, asr_preload=False, outbound_deny="127.0.0.2/32,169.254.0.0/16")
    )
    try:
        # a real origin on the denied address: reachable, so only the policy keeps the server away
        async with FileServer(str(Path(media["plain"]).parent), host="127.0.0.2") as files:
            resp = await server.session.post(server.url("/v1/analyze"), json={"video_url": files.url("plain.mp4")})
            job = await wait_job(server.session, server.base_url, (await resp.json())["job_id"])
            assert job["status"] == "failed" and "outbound policy" in job["error"], job
            assert files.requests == 0
    finally:
        await stop_server(server)


async def test_inputs_on_disk_have_a_budget(analysis_server, media):
    server = await analysis_server(ANALYSIS_DISK_BUDGET=str(1024 * 1024))
    # as if queued jobs' uploads already held the budget
    (uploads(server) / "job_waiting.input").write_bytes(b"\0" * (1024 * 1024 - 512))
    resp = await server.session.post(server.url("/v1/analyze"), data=video_form(media["plain"], tag_list="face"))
    body = await resp.json()
    assert resp.status == 507 and "ANALYSIS_DISK_BUDGET" in body["error"]["message"], body
    assert sorted(p.name for p in uploads(server).iterdir()) == ["job_waiting.input"]
    (uploads(server) / "job_waiting.input").unlink()
    resp = await server.session.post(server.url("/v1/analyze"), data=video_form(media["plain"], tag_list="face"))
    assert resp.status == 202
