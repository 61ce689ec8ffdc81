"""Stopping a stream is prompt whatever its remote trickle server does: a server that went away
(connections refused) or one that hangs (accepts, never answers) must not hold the DELETE for
the long read/response timeouts (cleanup runs on every exit path)."""

from __future__ import annotations

import asyncio

from tests.conftest import wait_until
from tests.interop.gateway import OrchestratorTrickle

# A behaviour bound (the stop ends on its own, not after a 30-60 s network timeout), not a speed goal.
STOP_BOUND_S = 8.0


async def _start_on(server, orch: OrchestratorTrickle, mid: str) -> None:
    orch.trickle.create_channel(mid)
    orch.trickle.create_channel(f"{mid}-out")
    resp = await server.session.post(
        server.url("/stream/start"),
        json={
            "manifest_id": mid,
            "subscribe_url": orch.trickle_url(mid),
            "publish_url": orch.trickle_url(f"{mid}-out"),
        },
    )
    assert resp.status == 200, await resp.text()
    # the subscriber's preconnected GET is on the remote server before it goes away
    assert await wait_until(lambda: orch.trickle.stats()["subscribers"] >= 1, timeout=10)


async def _delete_within_bound(server, mid: str) -> None:
    resp = await asyncio.wait_for(server.session.delete(server.url(f"/stream/{mid}")), STOP_BOUND_S)
    assert resp.status == 200, await resp.text()
    status = await (await server.session.get(server.url(f"/stream/{mid}/status"))).json()
    assert status["state"] == "STOPPED"


async def test_a_stream_whose_trickle_server_went_away_stops_promptly(server):
    orch = await OrchestratorTrickle().start()
    await _start_on(server, orch, "gone")
    await orch.stop()  # the remote server is gone: its open requests are dropped, new ones refused
    await _delete_within_bound(server, "gone")


async def test_a_stream_whose_trickle_server_hangs_stops_promptly(server):
    orch = await OrchestratorTrickle().start()
    await _start_on(server, orch, "hung")
    port = int(orch.base_url.rsplit(":", 1)[1])
    await orch.stop()
    held: list[asyncio.StreamWriter] = []

    async def accept_and_stay_silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # never answers: every request on it waits for its timeout

    hung = await asyncio.start_server(accept_and_stay_silent, "127.0.0.1", port)
    try:
        await _delete_within_bound(server, "hung")
    finally:
        hung.close()
        for writer in held:
            writer.close()
        await hung.wait_closed()
