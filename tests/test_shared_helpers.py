"""The small shared helpers that replaced copies: the drop-oldest mailbox, the LRU, the SSE message
writer, the CUDA visibility check, the trickle header names and the outbound session factory."""

from __future__ import annotations

import aiohttp

from httpapi.outbound import OutboundPolicy, PolicyConnector, TlsPolicy, client_session
from httpapi.sse import sse_message
from media.cuda import nvidia_device_visible
from media.lru import LRU
from media.mailbox import DropOldestMailbox
from trickle import client as trickle_client
from trickle import server as trickle_server


async def test_mailbox_drops_the_oldest_and_counts_it():
    box: DropOldestMailbox[int] = DropOldestMailbox(2)
    for item in range(5):
        box.offer(item)
    assert box.dropped == 3 and [box.get_nowait(), box.get_nowait()] == [3, 4]


def test_lru_evicts_the_least_recent_and_refresh_keeps_an_item():
    lru: LRU[str, int] = LRU(2)
    assert lru.put("a", 1) == 0 and lru.put("b", 2) == 0
    assert lru.get("a", refresh=True) == 1
    assert lru.put("c", 3) == 1  # "b" was the least recent
    assert "b" not in lru and list(lru) == ["a", "c"] and lru.oldest() == 1
    assert lru.pop("a") == 1 and lru.pop("a") is None and len(lru) == 1


def test_sse_message_fields_and_multiline_data():
    assert sse_message("final", {"a": 1}, 7) == b'id: 7\nevent: final\ndata: {"a":1}\n\n'
    assert sse_message(None, "one\ntwo") == b"data: one\ndata: two\n\n"  # a line break never ends the field


def test_cuda_visible_devices_can_hide_every_device(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert nvidia_device_visible() is False


def test_trickle_client_and_server_share_one_set_of_header_names():
    for name in ("HEADER_SEQ", "HEADER_LATEST", "HEADER_CLOSED", "HEADER_RESET", "STATUS_SEGMENT_MISSING"):
        assert getattr(trickle_client, name) is getattr(trickle_server, name)


async def test_client_session_guards_caller_urls_and_verifies_tls_for_operator_endpoints():
    policy = OutboundPolicy()
    guarded = client_session(policy, timeout=aiohttp.ClientTimeout(total=5))
    operator = client_session(TlsPolicy())
    try:
        assert isinstance(guarded.connector, PolicyConnector)  # caller-given URLs: address rules at connect
        assert not isinstance(operator.connector, PolicyConnector)  # operator endpoints: no address rules
        assert guarded.timeout.total == 5
    finally:
        await guarded.close()
        await operator.close()
