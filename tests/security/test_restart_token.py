"""A repeated `/stream/start` for a running stream (same id, same publish_url) is answered as ai-runner
does, 200 for the same stream with its params merged, but never with the stream's viewer token: only
the start that created the stream hands it out (server/routes_streams.py)."""

from __future__ import annotations

import aiohttp

from media.manager import STREAMS_KEY

API = "restart-api-token"
AUTH = "restart-livepeer-token"
WHEP = "restart-viewer-token"
MID = "restart-1"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_repeated_start_does_not_hand_out_the_viewer_token(orch_trickle, make_server):
    server = await make_server(api_token=API, auth_token=AUTH, whep_token=WHEP)
    orch_trickle.trickle.create_channel(MID)
    orch_trickle.trickle.create_channel(f"{MID}-out")
    body = {
        "subscribe_url": orch_trickle.trickle_url(MID),
        "publish_url": orch_trickle.trickle_url(f"{MID}-out"),
        "params": {"a": 1},
    }
    resp = await server.session.post(
        server.url("/stream/start"), json=body, headers={"X-Stream-Id": MID, **bearer(AUTH)}
    )
    first = await resp.json()
    assert resp.status == 200, first
    token = first["viewer_token"]
    stream = server.app[STREAMS_KEY].get(MID)
    texts = []
    # the caller of the Livepeer routes, or of the API, repeats the start (the BYOC gateway does)
    for caller, headers, params in (
        (AUTH, {"X-Stream-Id": MID}, {"b": 2}),
        (API, {"X-Stream-Id": MID}, {"c": 3}),
        (API, {}, {"d": 4}),
    ):
        again = {**body, "params": params} if headers else {**body, "manifest_id": MID, "params": params}
        resp = await server.session.post(server.url("/stream/start"), json=again, headers={**headers, **bearer(caller)})
        text = await resp.text()
        texts.append(text)
        answer = await resp.json()
        assert resp.status == 200, answer
        assert "viewer_token" not in answer and token not in text
        assert answer["manifest_id"] == MID and answer["success"] is True
        assert server.app[STREAMS_KEY].get(MID) is stream  # the same stream, its params merged
    assert stream.params == {"a": 1, "b": 2, "c": 3, "d": 4}
    # nothing else hands it out either
    for path, headers in (
        ("/stream/status", {"X-Stream-Id": MID, **bearer(AUTH)}),
        (f"/stream/{MID}/status", bearer(API)),
        ("/streams", bearer(API)),
    ):
        resp = await server.session.get(server.url(path), headers=headers)
        assert resp.status == 200 and token not in await resp.text()
    # the token the creator got still opens the stream's viewer routes
    async with (
        aiohttp.ClientSession() as viewer,
        viewer.get(server.url(f"/stream/{MID}/captions.vtt"), params={"token": token}) as resp,
    ):
        assert resp.status == 200
    # a start for the same id with another publish_url is a conflict, not a restart
    resp = await server.session.post(
        server.url("/stream/start"),
        headers={"X-Stream-Id": MID, **bearer(AUTH)},
        json={**body, "publish_url": orch_trickle.trickle_url("elsewhere")},
    )
    answer = await resp.json()
    assert resp.status == 409 and "viewer_token" not in answer and token not in await resp.text()


async def test_a_new_stream_under_a_used_id_gets_a_new_token(orch_trickle, make_server):
    server = await make_server(api_token=API, auth_token=AUTH, whep_token=WHEP)
    orch_trickle.trickle.create_channel(MID)
    body = {"subscribe_url": orch_trickle.trickle_url(MID), "manifest_id": MID}
    resp = await server.session.post(server.url("/stream/start"), json=body, headers=bearer(API))
    old = (await resp.json())["viewer_token"]
    resp = await server.session.delete(server.url(f"/stream/{MID}"), headers=bearer(API))
    assert resp.status == 200
    resp = await server.session.post(server.url("/stream/start"), json=body, headers=bearer(API))
    answer = await resp.json()
    assert resp.status == 200 and answer["viewer_token"] and answer["viewer_token"] != old
    async with (
        aiohttp.ClientSession() as viewer,
        viewer.get(server.url(f"/stream/{MID}/captions.vtt"), params={"token": old}) as resp,
    ):
        assert resp.status == 401  # the old stream's token opens nothing of the new one
