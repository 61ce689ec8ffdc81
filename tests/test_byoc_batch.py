"""BYOC batch capabilities over loopback: `/process/request/{name}`, the bare `/{name}` path the
orchestrator forwards to, the `Livepeer` header, timeouts and the capability registry."""

from __future__ import annotations

import asyncio
import base64
import json

from aiohttp import web

from byoc.capabilities import CAPABILITIES_KEY, CapabilityError
from byoc.livepeer_header import encode_livepeer_header

TEXT = "Hello, ComfyStream BYOC!"


def livepeer_header(**overrides) -> str:
    payload = {"request": {"run": "echo"}, "parameters": {}, "capability": "text-reversal", "timeout_seconds": 30}
    payload.update(overrides)
    return encode_livepeer_header(payload)


async def test_text_reversal_with_and_without_livepeer_header(server):
    expected = {"original": TEXT, "reversed": "!COYB maertSyfmoC ,olleH"}
    resp = await server.session.post(server.url("/process/request/text-reversal"), json={"text": TEXT})
    assert resp.status == 200 and await resp.json() == expected
    # the header from the BYOC documentation's curl example (request as a JSON string)
    doc_payload = {"request": json.dumps({"run": "echo"}), "capability": "text-reversal", "timeout_seconds": 30}
    doc_header = base64.b64encode(json.dumps(doc_payload).encode()).decode()
    resp = await server.session.post(
        server.url("/process/request/text-reversal"), json={"text": TEXT}, headers={"Livepeer": doc_header}
    )
    assert resp.status == 200 and await resp.json() == expected
    # the orchestrator forwards `/process/request/<path>` to `{registered url}/<path>`
    resp = await server.session.post(
        server.url("/text-reversal"),
        json={"text": TEXT},
        headers={"Livepeer": livepeer_header(capability="streamlens")},
    )
    assert resp.status == 200 and await resp.json() == expected


async def test_batch_errors(server):
    resp = await server.session.post(server.url("/process/request/no-such-thing"), json={"text": "x"})
    assert resp.status == 404 and "text-reversal" in (await resp.json())["detail"]["msg"]
    resp = await server.session.post(server.url("/no-such-thing"), json={"text": "x"})
    assert resp.status == 404  # the bare path only serves registered capabilities
    for bad in (
        "%%%not-base64%%%",
        base64.b64encode(b"not json").decode(),
        base64.b64encode(b"[1]").decode(),
        livepeer_header(timeout_seconds=-1),
        livepeer_header(capability="someone-else"),
        base64.b64encode(json.dumps({"request": "{broken"}).encode()).decode(),
    ):
        resp = await server.session.post(
            server.url("/process/request/text-reversal"), json={"text": "x"}, headers={"Livepeer": bad}
        )
        assert resp.status == 400, bad
        assert (await resp.json())["error"]["code"] == "bad_request"
    resp = await server.session.post(server.url("/process/request/text-reversal"), json={"wrong": "field"})
    assert resp.status == 400 and "text" in (await resp.json())["detail"]["msg"]
    resp = await server.session.post(server.url("/process/request/text-reversal"), data=b"{oops")
    assert resp.status == 400
    metrics = await (await server.session.get(server.url("/metrics"))).text()
    assert 'streamlens_capability_requests_total{capability="text-reversal",status="400"} 8.0' in metrics
    assert 'streamlens_capability_requests_total{capability="<unknown>",status="404"} 1.0' in metrics
    # other routes are untouched by the capability fallback
    assert (await server.session.get(server.url("/health"))).status == 200
    assert (await server.session.post(server.url("/health"))).status == 405


async def test_timeouts_registry_and_listing(make_server):
    server = await make_server(capability_default_timeout=0.3)
    registry = server.app[CAPABILITIES_KEY]

    async def slow(body, ctx):
        await asyncio.sleep(5)
        return {"done": True}

    async def echo(body, ctx):
        return {"body": body, "timeout": ctx.timeout, "header": ctx.header.to_dict() if ctx.header else None}

    async def teapot(body, ctx):
        if body.get("fail"):
            raise CapabilityError(418, "short and stout")
        return web.Response(text="plain", content_type="text/plain", headers={"X-Metadata": "m"})

    registry.register("slow", slow, "sleeps")
    registry.register("echo", echo, "echoes")
    registry.register("teapot", teapot, "raw responses")

    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await server.session.post(
        server.url("/process/request/slow"),
        json={},
        headers={"Livepeer": livepeer_header(capability="slow", timeout_seconds=0.2)},
    )
    assert resp.status == 504 and "timed out" in (await resp.json())["detail"]["msg"]
    assert loop.time() - started < 3
    resp = await server.session.post(server.url("/slow"), json={})  # no header: the configured default
    assert resp.status == 504

    resp = await server.session.post(
        server.url("/process/request/echo"),
        json={"a": 1},
        headers={"Livepeer": livepeer_header(capability="echo", timeout_seconds=7, request={"stream_id": "s1"})},
    )
    echoed = await resp.json()
    assert echoed["body"] == {"a": 1} and echoed["timeout"] == 7
    assert echoed["header"]["request"] == {"stream_id": "s1"} and echoed["header"]["parameters"] == {}
    resp = await server.session.post(server.url("/echo"))  # empty body → {}
    assert (await resp.json())["body"] == {} and (await resp.json())["timeout"] == 0.3

    resp = await server.session.post(server.url("/teapot"), json={})
    assert resp.status == 200 and await resp.text() == "plain" and resp.headers["X-Metadata"] == "m"
    resp = await server.session.post(server.url("/teapot"), json={"fail": True})
    assert resp.status == 418 and (await resp.json())["detail"]["msg"] == "short and stout"

    listing = await (await server.session.get(server.url("/process/capabilities"))).json()
    names = [c["name"] for c in listing["capabilities"]]
    assert names == sorted(names) and {"text-reversal", "slow", "echo", "teapot"} <= set(names)
    assert listing["capability_name"] == "streamlens"
