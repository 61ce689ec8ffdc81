"""Params updates are JSON merge patches (RFC 7396) wherever they arrive: `POST /stream/params`,
the Livepeer control channel and the WebRTC data channel. Absent keys keep their value, `null`
removes one (the option is back to its one default)."""

from __future__ import annotations

import asyncio

import pytest

from byoc.params import ParamsApplier
from media.manager import STREAMS_KEY
from media.overlay import OverlayOptions
from media.params import CAPTIONS_BURN_IN_DEFAULT, compose_patches, merge_patch
from tests.conftest import wait_until
from tests.interop.gateway import LivepeerGateway
from tests.webrtc_helpers import BrowserPeer, loopback_settings

TOKEN = "merge-test-token"

# RFC 7396 Appendix A, every example
RFC_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize("target,patch,expected", RFC_EXAMPLES)
def test_merge_patch_follows_rfc_7396(target, patch, expected):
    before = repr(target)
    assert merge_patch(target, patch) == expected
    assert repr(target) == before  # the target is not modified


def test_composed_patches_act_like_applying_both():
    target = {"a": {"x": 1, "y": 2}, "b": 1, "c": [1]}
    for first, second in [
        ({"a": {"x": None}}, {"a": {"z": 3}}),
        ({"b": None}, {"b": 2}),
        ({"c": [2]}, {"a": {"y": None}, "d": 4}),
        ({"a": {"x": 9}}, {"a": None}),
    ]:
        assert merge_patch(target, compose_patches(first, second)) == merge_patch(merge_patch(target, first), second)


def test_one_default_for_burn_in():
    assert OverlayOptions.from_params({}).captions is CAPTIONS_BURN_IN_DEFAULT
    assert OverlayOptions.from_params({"captions": {"enabled": True}}).captions is CAPTIONS_BURN_IN_DEFAULT
    assert OverlayOptions.from_params({"captions": {"burn_in": False}}).captions is False


async def test_params_applier_composes_queued_patches():
    applied: list[dict] = []
    gate = asyncio.Event()

    async def apply(patch):
        applied.append(patch)
        await gate.wait()

    applier = ParamsApplier(apply, lambda message: None, "t")
    applier.start()
    applier.submit({"overlay": {"enabled": False}})
    assert await wait_until(lambda: len(applied) == 1, timeout=5)  # the first is being applied
    applier.submit({"captions": {"burn_in": False}})  # both arrive while the first is applied
    applier.submit({"vision": {"enabled": True}})
    gate.set()
    assert await wait_until(lambda: applier.applied == 2, timeout=2)
    # nothing the queued updates said was lost (ai-runner would have kept only the newest)
    assert applied[1] == {"captions": {"burn_in": False}, "vision": {"enabled": True}}
    await applier.close()


async def test_stream_params_route_and_control_channel_merge(make_server, orch_trickle):
    server = await make_server(auth_token=TOKEN)
    mid = "merge-1"
    gateway = LivepeerGateway(server, mid, video_in=False, trickle_host=orch_trickle).start_collectors()
    try:
        resp = await server.session.post(
            server.url("/stream/start"),
            headers=gateway.headers(TOKEN),
            json=dict(gateway.body, params={"prompt": "one", "width": 256, "height": 256}),
        )
        assert resp.status == 200, await resp.text()
        stream = server.app[STREAMS_KEY].get_active(mid)

        async def post(patch: dict) -> dict:
            resp = await server.session.post(server.url("/stream/params"), json=patch, headers=gateway.headers(TOKEN))
            body = await resp.json()
            assert resp.status == 200, body
            return body["params"]

        # the sequence: an update about vision must not turn the header and captions back on
        await post({"overlay": {"enabled": False}, "captions": {"burn_in": False}})
        params = await post({"vision": {"enabled": False, "interval": 2}})
        assert params == {
            "prompt": "one",
            "width": 256,
            "height": 256,
            "overlay": {"enabled": False},
            "captions": {"burn_in": False},
            "vision": {"enabled": False, "interval": 2},
        }
        assert stream.overlay.options.enabled is False and stream.overlay.options.captions is False

        # nested merge and null removal: the option is back to its default
        params = await post({"vision": {"interval": None}, "captions": None, "prompt": "two"})
        assert params["vision"] == {"enabled": False} and "captions" not in params and params["prompt"] == "two"
        assert stream.overlay.options.captions is CAPTIONS_BURN_IN_DEFAULT
        assert stream.overlay.options.enabled is False  # untouched

        # a mid-stream resolution change is still refused; removing width is a change too
        resp = await server.session.post(
            server.url("/stream/params"), json={"width": None}, headers=gateway.headers(TOKEN)
        )
        assert resp.status == 400
        assert stream.params["width"] == 256

        # the control channel is merge patches too
        await gateway.send_control({"overlay": {"clock": False}})
        assert await wait_until(lambda: stream.params.get("overlay") == {"enabled": False, "clock": False}, timeout=5)
        await gateway.send_control({"overlay": {"enabled": None}, "prompt": "three"})
        assert await wait_until(lambda: stream.params.get("prompt") == "three", timeout=5)
        assert stream.params["overlay"] == {"clock": False} and stream.params["vision"] == {"enabled": False}
        assert stream.overlay.options.enabled is True and stream.overlay.options.clock is False
        status = await (
            await server.session.get(server.url(f"/stream/{mid}/status"), headers={"Authorization": f"Bearer {TOKEN}"})
        ).json()
        assert status["params"] == stream.params

        # the gateway re-sends /stream/start for the running id: its params are one more merge patch
        before = dict(stream.params)
        resp = await server.session.post(
            server.url("/stream/start"),
            headers=gateway.headers(TOKEN),
            json=dict(gateway.body, params={"overlay": {"enabled": False}}),
        )
        assert resp.status == 200, await resp.text()
        assert server.app[STREAMS_KEY].get_active(mid) is stream  # the same stream, not a restart
        assert stream.params == {**before, "overlay": {"enabled": False, "clock": False}}
    finally:
        await gateway.close()


async def test_data_channel_params_merge(make_server):
    server = await make_server(**loopback_settings())
    peer = BrowserPeer()
    try:
        await peer.connect(server.session, server.base_url, params={"overlay": {"enabled": True}, "note": "x"})
        stream = server.app[STREAMS_KEY].get_active(peer.manifest_id)
        assert await wait_until(lambda: peer.channel.readyState == "open", timeout=20)
        peer.send({"type": "params", "id": 1, "captions": {"burn_in": False}})
        peer.send({"type": "params", "id": 2, "overlay": {"clock": False}})
        assert await wait_until(lambda: len(peer.messages_of("params_applied")) == 2, timeout=10)
        assert stream.params == {
            "overlay": {"enabled": True, "clock": False},
            "note": "x",
            "captions": {"burn_in": False},
        }
        peer.send({"type": "params", "id": 3, "params": {"note": None}})
        assert await wait_until(lambda: len(peer.messages_of("params_applied")) == 3, timeout=10)
        assert "note" not in stream.params and stream.params["captions"] == {"burn_in": False}
        peer.send({"type": "params", "id": 4, "replace": True, "params": {"only": 1}})
        assert await wait_until(lambda: len(peer.messages_of("params_applied")) == 4, timeout=10)
        assert stream.params == {"only": 1}  # an explicit replace still replaces
        assert peer.messages_of("params_applied")[-1]["params"] == {"only": 1}
    finally:
        await peer.close()
