"""Status routes of a stream that stopped answer its final status (or 404), never 500: the stopped
stream is kept as a small summary (media/manager.py StoppedStream), which has no meters or channels."""

from __future__ import annotations

import asyncio

import aiohttp

from media.manager import STREAMS_KEY
from tests.conftest import wait_until

MID = "stopped-status"


async def start_and_stop(server, orch_trickle, manifest_id: str) -> str:
    """Start a stream with an events channel (its input on the orchestrator's trickle server, nothing
    published), stop it; its viewer token."""
    trickle = orch_trickle.trickle
    trickle.create_channel(manifest_id)
    trickle.create_channel(f"{manifest_id}-events", "application/json")
    resp = await server.session.post(
        server.url("/stream/start"),
        headers={"X-Stream-Id": manifest_id},
        json={
            "subscribe_url": orch_trickle.trickle_url(manifest_id),
            "events_url": orch_trickle.trickle_url(f"{manifest_id}-events"),
            "params": {"k": 1},
        },
    )
    assert resp.status == 200, await resp.text()
    token = (await resp.json())["viewer_token"]
    resp = await server.session.delete(server.url(f"/stream/{manifest_id}"))
    assert resp.status == 200, await resp.text()
    assert await wait_until(lambda: not server.app[STREAMS_KEY].get(manifest_id).active, timeout=10)
    return token


async def test_byoc_status_of_a_stopped_stream(orch_trickle, server):
    await start_and_stop(server, orch_trickle, MID)
    # named: the stopped stream's final status in ai-runner's shape (OFFLINE)
    for kwargs in ({"headers": {"X-Stream-Id": MID}}, {"params": {"stream_id": MID}}):
        resp = await server.session.get(server.url("/stream/status"), **kwargs)
        body = await resp.json()
        assert resp.status == 200, body
        assert body["type"] == "status" and body["state"] == "OFFLINE"
        assert body["client_active"] is False and body["manifest_id"] == MID
        assert body["stream"]["state"] == "STOPPED" and body["stream"]["end_reason"] == "stopped by DELETE"
        assert body["inference_status"]["last_params"] == {"k": 1}
    # not named, nothing running: the idle answer
    resp = await server.session.get(server.url("/stream/status"))
    body = await resp.json()
    assert resp.status == 200 and body["state"] == "OFFLINE" and body["manifest_id"] is None


async def test_byoc_stream_routes_on_a_stopped_stream(orch_trickle, server):
    await start_and_stop(server, orch_trickle, MID)
    headers = {"X-Stream-Id": MID}
    resp = await server.session.post(server.url("/stream/params"), headers=headers, json={"k": 2})
    assert resp.status == 404 and "not running" in (await resp.json())["error"]["message"]
    resp = await server.session.post(server.url("/stream/stop"), headers=headers)
    body = await resp.json()
    assert resp.status == 200 and body["message"] == "Stream already stopped" and body["state"] == "STOPPED"


async def test_api_status_of_a_stopped_stream(orch_trickle, server):
    await start_and_stop(server, orch_trickle, MID)
    resp = await server.session.get(server.url(f"/stream/{MID}/status"))
    body = await resp.json()
    assert resp.status == 200, body
    assert body["state"] == "STOPPED" and body["end_reason"] == "stopped by DELETE" and body["params"] == {"k": 1}
    resp = await server.session.delete(server.url(f"/stream/{MID}"))
    assert resp.status == 404  # nothing running to stop
    listing = await (await server.session.get(server.url("/streams"))).json()
    assert listing["count"] == 0
    resp = await server.session.get(server.url("/stream/never-started/status"))
    assert resp.status == 404 and "error" in await resp.json()


async def test_viewer_routes_of_a_stopped_stream(orch_trickle, server):
    token = await start_and_stop(server, orch_trickle, MID)
    async with aiohttp.ClientSession() as viewer:
        for route in ("events", "captions"):
            async with viewer.get(server.url(f"/stream/{MID}/{route}"), params={"token": token}) as resp:
                assert resp.status == 200
                text = await asyncio.wait_for(resp.text(), 10)  # the stream ended: the answer ends too
                assert "event: end" in text and "stopped by DELETE" in text
        async with viewer.get(server.url(f"/stream/{MID}/captions.vtt"), params={"token": token}) as resp:
            assert resp.status == 200 and (await resp.text()).startswith("WEBVTT")
