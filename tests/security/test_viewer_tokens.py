"""Per-stream viewer tokens: `POST /stream/start` hands one out; it opens that stream's SSE, WebVTT
and events routes (header or `?token=`) and nothing else; WHEP_TOKEN opens every stream's."""

from __future__ import annotations

from media.manager import STREAMS_KEY
from server.routes_events import SSE_OPEN_KEY
from tests.conftest import wait_until

API = "api-secret-v"
WHEP = "whep-secret-v"


async def start(server, orch_trickle, manifest_id: str) -> dict:
    orch_trickle.trickle.create_channel(manifest_id)  # the orchestrator's input channel (nothing published)
    body = {"subscribe_url": orch_trickle.trickle_url(manifest_id), "manifest_id": manifest_id}
    resp = await server.session.post(server.url("/stream/start"), json=body, headers={"Authorization": f"Bearer {API}"})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_a_viewer_token_opens_its_own_stream_only(make_server, orch_trickle):
    server = await make_server(api_token=API, whep_token=WHEP)
    one = await start(server, orch_trickle, "view-1")
    two = await start(server, orch_trickle, "view-2")
    token = one["viewer_token"]
    assert token and token != two["viewer_token"] and len(token) >= 24

    def viewer_urls(mid: str) -> list[str]:
        return [f"/stream/{mid}/captions.vtt", f"/stream/{mid}/events", f"/stream/{mid}/captions"]

    for path in viewer_urls("view-1"):
        for kwargs in ({"headers": {"Authorization": f"Bearer {token}"}}, {"params": {"token": token}}):
            async with server.session.get(server.url(path), **kwargs) as resp:
                assert resp.status == 200, (path, kwargs)
                if path.endswith(".vtt"):
                    assert (await resp.text()).startswith("WEBVTT")
                else:
                    assert resp.content_type == "text/event-stream"
                    assert (await resp.content.readline()).startswith(b":")
    for path in viewer_urls("view-2"):  # another stream's routes stay closed
        for kwargs in ({"headers": {"Authorization": f"Bearer {token}"}}, {"params": {"token": token}}):
            assert (await server.session.get(server.url(path), **kwargs)).status == 401, path
    # nothing but viewer routes: not the api, not the stream's own status or stop
    for method, path in (
        ("GET", "/streams"),
        ("GET", "/stream/view-1/status"),
        ("DELETE", "/stream/view-1"),
        ("GET", "/metrics"),
        ("POST", "/stream/stop"),
    ):
        resp = await server.session.request(method, server.url(path), headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 401, (method, path)
    assert server.app[STREAMS_KEY].get_active("view-1") is not None
    # WHEP_TOKEN is the viewer role's own token: every stream's viewer routes
    for mid in ("view-1", "view-2"):
        resp = await server.session.get(
            server.url(f"/stream/{mid}/captions.vtt"), headers={"Authorization": f"Bearer {WHEP}"}
        )
        assert resp.status == 200
    # the token is not listed anywhere a caller with the api token can read
    listing = await (
        await server.session.get(server.url("/streams"), headers={"Authorization": f"Bearer {API}"})
    ).text()
    status = await (
        await server.session.get(server.url("/stream/view-1/status"), headers={"Authorization": f"Bearer {API}"})
    ).text()
    assert token not in listing and token not in status
    # once stopped, the stream is kept as a small summary: its captions stay readable with its token
    resp = await server.session.delete(server.url("/stream/view-1"), headers={"Authorization": f"Bearer {API}"})
    assert resp.status == 200
    resp = await server.session.get(server.url("/stream/view-1/captions.vtt"), params={"token": token})
    assert resp.status == 200 and (await resp.text()).startswith("WEBVTT")
    resp = await server.session.get(server.url("/stream/view-2/captions.vtt"), params={"token": token})
    assert resp.status == 401


async def test_sse_connections_per_stream_are_capped(make_server, orch_trickle):
    server = await make_server(api_token=API, sse_max_per_stream=2)
    token = (await start(server, orch_trickle, "sse-cap"))["viewer_token"]
    url = server.url("/stream/sse-cap/events")
    opened = [await server.session.get(url, params={"token": token}) for _ in range(2)]
    assert all(r.status == 200 for r in opened)
    refused = await server.session.get(url, params={"token": token})
    assert refused.status == 503 and "maximum of 2" in (await refused.json())["error"]["message"]
    for resp in opened:
        resp.close()
    # a closed connection frees its place
    assert await wait_until(lambda: not server.app[SSE_OPEN_KEY].get("sse-cap"), timeout=10)
    again = await server.session.get(url, params={"token": token})
    assert again.status == 200
    again.close()
