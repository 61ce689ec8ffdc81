"""Trickle segments are the publisher's bytes: the server serves them with a fixed media type
(`application/octet-stream`, or the media types trickle carries: MPEG-TS, JSON, JSON lines) and
`X-Content-Type-Options: nosniff`, so a publisher cannot make a browser render a page of this
origin. Every idle channel is swept, whatever its name."""

from __future__ import annotations

from server.keys import TRICKLE_KEY
from tests.conftest import wait_until
from trickle.server import TrickleServer, served_type

HTML = b"<!doctype html><script>alert(document.domain)</script>"


async def publish_and_read(server, channel: str, content_type: str | None, body: bytes) -> tuple[str, str, bytes]:
    headers = {"Content-Type": content_type} if content_type else {}
    resp = await server.session.post(server.trickle_url(f"{channel}/0"), data=body, headers=headers)
    assert resp.status == 200, await resp.text()
    async with server.session.get(server.trickle_url(f"{channel}/0")) as resp:
        assert resp.status == 200
        return resp.headers["Content-Type"], resp.headers.get("X-Content-Type-Options", ""), await resp.read()


async def test_a_segment_is_never_served_as_the_publishers_html(server):
    for channel, content_type in (
        ("page", "text/html"),
        ("page2", "text/html; charset=utf-8"),
        ("svg", "image/svg+xml"),
        ("xml", "application/xhtml+xml"),
        ("none", None),
    ):
        served, sniff, body = await publish_and_read(server, channel, content_type, HTML)
        assert (served, sniff, body) == ("application/octet-stream", "nosniff", HTML), channel


async def test_trickle_media_types_are_kept_for_livepeer_clients(server):
    for channel, content_type, expected in (
        ("ts", "video/mp2t", "video/mp2t"),
        ("ts2", "video/MP2T", "video/mp2t"),
        ("ev", "application/json", "application/json"),
        ("data", "application/jsonl", "application/jsonl"),
    ):
        served, sniff, _ = await publish_and_read(server, channel, content_type, b"{}\n")
        assert (served, sniff) == (expected, "nosniff"), channel
    # a channel created by the server (the default type is go-livepeer's video/MP2T)
    server.app[TRICKLE_KEY].create_channel("made")
    served, _, _ = await publish_and_read(server, "made", "text/html", HTML)
    assert served == "video/mp2t"
    assert served_type("Application/JSON ; charset=utf-8") == "application/json"


async def test_an_underscore_channel_is_swept_like_any_other():
    trickle = TrickleServer(idle_timeout=0.1, sweep_interval=0.05)
    await trickle.start()
    try:
        trickle.create_channel("_x")
        trickle.create_channel("x")
        assert await wait_until(lambda: not trickle.channel_names(), timeout=5)
        assert trickle.stats()["channels_swept"] == 2
    finally:
        await trickle.close()
