"""Recorded-video analysis holds its shared budgets against callers that misbehave, over real sockets:

- job event streams whose clients leave at once give their place back (ANALYSIS_MAX_SUBSCRIBERS);
- uploads that stall or drip give their disk budget back (ANALYSIS_UPLOAD_IDLE_TIMEOUT / _TIMEOUT, 408);
- the jobs database stays small: bounded requests and errors, a row cap, a byte budget, summaries in lists.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from analysis.store import JobStore
from server.routes_analysis import RUNNER_KEY
from server.settings import Settings
from tests.analysis_media import FileServer, plain_card, video_form, wait_job, write_video
from tests.conftest import start_server, stop_server, wait_until
from tests.sse import SseReader

BOUNDARY = "streamlens-test-boundary"


@pytest.fixture
async def analysis_server(monkeypatch, tmp_path):
    """Servers whose DATA_DIR is this test's tmp dir; ANALYSIS_* overrides per call."""
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
        await stop_server(running)


@pytest.fixture(scope="module")
def plain_video(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("budget-media")
    return write_video(str(folder / "plain.mp4"), 2, lambda t: plain_card(320, 240), fps=5)


class StalledOrigin:
    """A video_url origin that never answers until released: its job stays live ("downloading")."""

    def __init__(self) -> None:
        self.requests = 0
        self.release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> StalledOrigin:
        async def stall(_request: web.Request) -> web.Response:
            self.requests += 1
            await self.release.wait()
            return web.Response(status=404)

        app = web.Application()
        app.router.add_get("/video.mp4", stall)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.release.set()
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video.mp4"


def _header_lines(server, path: str, method: str = "GET", extra: dict[str, str] | None = None) -> bytes:
    host = server.base_url.removeprefix("http://")
    headers = {"Host": host, **server.auth_headers("api"), **(extra or {})}
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


async def _raw_connect(server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(server.base_url.rsplit(":", 1)[1])
    return await asyncio.open_connection("127.0.0.1", port)


async def _live_job(server, origin: StalledOrigin) -> str:
    resp = await server.session.post(server.url("/v1/analyze"), json={"video_url": origin.url, "tag_list": ["face"]})
    body = await resp.json()
    assert resp.status == 202, body
    assert await wait_until(lambda: origin.requests >= 1, timeout=10), "the job never started downloading"
    return body["job_id"]


# -- item 4: event streams that close at once ------------------------------------------------------------


async def test_event_streams_closed_at_once_give_their_place_back(analysis_server):
    server = await analysis_server(ANALYSIS_MAX_SUBSCRIBERS=4)
    runner = server.app[RUNNER_KEY]
    async with StalledOrigin() as origin:
        job_id = await _live_job(server, origin)
        path = f"/v1/jobs/{job_id}/events"

        # raw sockets: the request, then close (FIN) or abort (RST) before reading anything
        for index in range(12):
            _reader, writer = await _raw_connect(server)
            writer.write(_header_lines(server, path))
            await writer.drain()
            if index % 2:
                writer.transport.abort()
            else:
                writer.close()
                await writer.wait_closed()

        # aiohttp requests cancelled as soon as their headers are on the wire
        sent = asyncio.Event()

        async def on_sent(_session, _ctx, _params) -> None:
            sent.set()

        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(on_sent)
        async with aiohttp.ClientSession(trace_configs=[trace], headers=server.auth_headers("api")) as session:
            for _ in range(12):
                sent.clear()
                task = asyncio.ensure_future(session.get(server.url(path)))
                await asyncio.wait_for(sent.wait(), 10)
                task.cancel()
                for outcome in await asyncio.gather(task, return_exceptions=True):
                    if isinstance(outcome, aiohttp.ClientResponse):  # it was answered first after all
                        outcome.close()

        # every place comes back (the check runs each second), and a normal subscriber is served
        assert await wait_until(lambda: runner.subscriber_count == 0, timeout=15), runner.subscriber_count
        reader = SseReader(server.session, server.url(path)).start()
        await asyncio.wait_for(reader.connected.wait(), 10)
        assert await wait_until(lambda: reader.of("progress"), timeout=10), reader.messages
        assert reader.of("progress")[0].data["phase"] == "downloading"
        assert runner.subscriber_count == 1
        # cancelling the job ends the stream with the result; its place is free again
        assert (await server.session.delete(server.url(f"/v1/jobs/{job_id}"))).status == 200
        await asyncio.wait_for(reader.ended.wait(), 10)
        assert [m.event for m in reader.messages][-2:] == ["result", "end"]
        assert reader.of("result")[0].data["status"] == "cancelled"
        assert await wait_until(lambda: runner.subscriber_count == 0, timeout=5)


async def test_an_event_stream_whose_job_row_is_deleted_still_frees_its_place(analysis_server):
    server = await analysis_server(ANALYSIS_MAX_SUBSCRIBERS=2)
    runner = server.app[RUNNER_KEY]
    async with StalledOrigin() as origin:
        job_id = await _live_job(server, origin)
        reader = SseReader(server.session, server.url(f"/v1/jobs/{job_id}/events")).start()
        await asyncio.wait_for(reader.connected.wait(), 10)
        assert await wait_until(lambda: runner.subscriber_count == 1, timeout=5)
        # cancel, then delete the row at once (the runner forgets the job while the stream is open)
        assert (await server.session.delete(server.url(f"/v1/jobs/{job_id}"))).status == 200
        assert (await server.session.delete(server.url(f"/v1/jobs/{job_id}"))).status == 200
        await asyncio.wait_for(reader.ended.wait(), 10)
        assert await wait_until(lambda: runner.subscriber_count == 0, timeout=5), runner.subscriber_count


# -- item 8: uploads that stall ------------------------------------------------------------------------


def _multipart_head(total_length: int) -> tuple[dict[str, str], bytes]:
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "Content-Length": str(total_length)}
    part = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="video"; filename="v.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    return headers, part


async def _stalled_upload(server, path: str = "/v1/analyze", sent: int = 4000):
    """Headers and the start of a multipart body (a declared 500 kB), then nothing."""
    headers, head = _multipart_head(500_000)
    reader, writer = await _raw_connect(server)
    writer.write(_header_lines(server, path, "POST", headers) + head + b"\0" * sent)
    await writer.drain()
    return reader, writer


async def _response_of(reader: asyncio.StreamReader) -> tuple[int, dict]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    body = await asyncio.wait_for(reader.readexactly(length), 15)
    return status, json.loads(body)


def _inputs(server) -> list[str]:
    return sorted(p.name for p in Path(server.app[RUNNER_KEY].settings.uploads_dir).iterdir())


async def test_stalled_uploads_give_the_disk_budget_back(analysis_server, plain_video):
    mib = 1024 * 1024
    server = await analysis_server(ANALYSIS_UPLOAD_IDLE_TIMEOUT=3, ANALYSIS_DISK_BUDGET=4 * mib, ANALYSIS_MAX_BYTES=mib)
    runner = server.app[RUNNER_KEY]
    stalled = [
        await _stalled_upload(server, path)
        for path in ("/v1/analyze", "/v1/transcribe", "/v1/inference/upload", "/v1/analyze")
    ]
    try:
        # four uploads that stopped sending hold the whole budget ...
        assert await wait_until(lambda: runner.reserved_bytes == 4 * mib, timeout=5), runner.reserved_bytes
        resp = await server.session.post(server.url("/v1/analyze"), data=video_form(plain_video, tag_list="face"))
        assert resp.status == 507 and "ANALYSIS_DISK_BUDGET" in (await resp.json())["error"]["message"]
        # ... only until the idle timeout: 408 to each, partial files removed, the budget given back
        for reader, _writer in stalled:
            status, body = await _response_of(reader)
            assert status == 408 and "ANALYSIS_UPLOAD_IDLE_TIMEOUT" in body["error"]["message"], body
        assert await wait_until(lambda: runner.reserved_bytes == 0 and not _inputs(server), timeout=10), (
            runner.reserved_bytes,
            _inputs(server),
        )
    finally:
        for _reader, writer in stalled:
            writer.transport.abort()
    resp = await server.session.post(server.url("/v1/analyze"), data=video_form(plain_video, tag_list="face"))
    assert resp.status == 202, await resp.json()


async def test_a_dripping_upload_ends_at_the_overall_deadline(analysis_server):
    server = await analysis_server(ANALYSIS_UPLOAD_IDLE_TIMEOUT=5, ANALYSIS_UPLOAD_TIMEOUT=1.5)
    runner = server.app[RUNNER_KEY]
    reader, writer = await _stalled_upload(server, sent=100)
    began = time.monotonic()
    try:
        response = asyncio.ensure_future(_response_of(reader))
        for _ in range(100):  # one byte every 0.1 s: never idle, so only the deadline stops it
            if response.done():
                break
            writer.write(b"\0")
            await writer.drain()
            await asyncio.wait([response], timeout=0.1)
        status, body = await response
    finally:
        writer.transport.abort()
    assert status == 408 and "ANALYSIS_UPLOAD_TIMEOUT" in body["error"]["message"], body
    assert 1.4 <= time.monotonic() - began < 5
    assert await wait_until(lambda: runner.reserved_bytes == 0 and not _inputs(server), timeout=5)


async def test_an_upload_whose_client_leaves_gives_the_budget_back(analysis_server):
    server = await analysis_server(ANALYSIS_UPLOAD_IDLE_TIMEOUT=60)
    runner = server.app[RUNNER_KEY]
    _reader, writer = await _stalled_upload(server)
    assert await wait_until(lambda: runner.reserved_bytes > 0 and _inputs(server), timeout=5)
    writer.transport.abort()
    assert await wait_until(lambda: runner.reserved_bytes == 0 and not _inputs(server), timeout=5), (
        runner.reserved_bytes,
        _inputs(server),
    )


# -- item 9: the jobs database ---------------------------------------------------------------------------


def _db_bytes(server) -> int:
    path = Path(server.app[RUNNER_KEY].settings.db_path)
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


async def test_failed_jobs_with_large_requests_keep_the_database_and_the_list_small(analysis_server, plain_video):
    server = await analysis_server(ANALYSIS_MAX_JOBS=10, ANALYSIS_MAX_REQUEST_BYTES=4096)
    async with FileServer(str(Path(plain_video).parent)) as files:
        url = files.url("plain.mp4")
        # the reviewer's request: ~1 MB of tag names (60 x 16,000 characters) is refused with a 400
        resp = await server.session.post(
            server.url("/v1/analyze"), json={"video_url": url, "tag_list": ["x" * 16_000] * 60}
        )
        body = await resp.json()
        assert resp.status == 400 and "tag_list" in body["error"]["message"], body
        # valid items, but more options than ANALYSIS_MAX_REQUEST_BYTES: 413 at submission
        resp = await server.session.post(
            server.url("/v1/analyze"), json={"video_url": url, "tag_list": ["y" * 128] * 40}
        )
        body = await resp.json()
        assert resp.status == 413 and "ANALYSIS_MAX_REQUEST_BYTES" in body["error"]["message"], body
        assert (await (await server.session.get(server.url("/v1/jobs"))).json())["total"] == 0

        # 20 jobs just under the cap, each failing with an error that quotes its 25 unknown tags
        ids = []
        for index in range(20):
            tags = [f"{index:02d}-{n:02d}-" + "z" * 122 for n in range(25)]
            resp = await server.session.post(server.url("/v1/analyze"), json={"video_url": url, "tag_list": tags})
            body = await resp.json()
            assert resp.status == 202, body
            job = await wait_job(server.session, server.base_url, body["job_id"])
            assert job["status"] == "failed" and "cannot tag" in job["error"], job
            assert len(job["error"]) <= 2000
            ids.append(body["job_id"])

    # the oldest are gone, the newest ten are kept whole
    for job_id in ids[:10]:
        assert (await server.session.get(server.url(f"/v1/jobs/{job_id}"))).status == 404
    newest = await (await server.session.get(server.url(f"/v1/jobs/{ids[-1]}"))).json()
    assert len(newest["request"]["tag_list"]) == 25 and len(newest["request"]["tag_list"][0]) == 128
    # the list: summaries, no results, a small answer
    resp = await server.session.get(server.url("/v1/jobs?limit=100"))
    raw = await resp.read()
    listing = json.loads(raw)
    assert listing["total"] == 10 and [j["id"] for j in listing["jobs"]] == ids[::-1][:10]
    assert len(raw) < 64 * 1024, len(raw)
    first = listing["jobs"][0]
    assert first["request_truncated"] is True and len(first["request"]["tag_list"]) < 25
    assert first.get("result") is None
    # the file: ten small rows, the WAL checkpointed
    assert _db_bytes(server) < 1024 * 1024, _db_bytes(server)


async def test_the_store_prunes_to_its_byte_budget_and_gives_the_pages_back(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    await store.open()
    try:
        now = time.time()
        big = {"frames": ["f" * 1000] * 200}  # ~200 kB each
        for index in range(30):
            await store.insert(
                {
                    "id": f"job_{index:02d}",
                    "kind": "analyze",
                    "status": "completed",
                    "created_at": now + index,
                    "finished_at": now + index,
                    "request": {"n": index},
                    "result": big,
                }
            )
        await store.insert(
            {"id": "job_running", "kind": "analyze", "status": "running", "created_at": now - 10, "request": {"n": -1}}
        )
        assert await store.file_bytes() > 5 * 1024 * 1024
        removed = await store.prune(max_rows=1000, max_bytes=1024 * 1024, keep=("job_00",))
        gone = {row["id"] for row in removed}
        # oldest finished first, never the running one nor the one kept
        assert "job_running" not in gone and "job_00" not in gone and "job_01" in gone and "job_29" not in gone
        kept, total = await store.list(100, 0)
        assert total == 31 - len(gone) and len(kept) == total
        assert await store.file_bytes() < 1.5 * 1024 * 1024, await store.file_bytes()
        # the row cap: finished rows past the newest 5 go (the running one stays)
        await store.prune(max_rows=5, max_bytes=1024**3)
        _, total = await store.list(100, 0)
        assert total <= 6
    finally:
        await store.close()


async def test_an_older_database_file_is_converted_to_incremental_vacuum(tmp_path):
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, "
        "created_at REAL NOT NULL, started_at REAL, finished_at REAL, progress REAL NOT NULL DEFAULT 0, "
        "frames_done INTEGER NOT NULL DEFAULT 0, frames_planned INTEGER, eta_seconds REAL, phase TEXT, "
        "request TEXT NOT NULL, result TEXT, error TEXT, input_path TEXT, input_name TEXT, "
        "attempts INTEGER NOT NULL DEFAULT 0)"
    )
    conn.commit()
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()
    store = JobStore(path)
    await store.open()
    await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    finally:
        conn.close()
