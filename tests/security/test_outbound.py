"""The outbound URL policy (issue 9 item 4): a URL a caller gives is refused at start with a 400
naming the rule, and the server never opens a connection to it; the policy's connector refuses a
denied address at connect time as well, whatever the start-time check said.

Every check runs against real loopback sockets: a `CountingListener` on an address the test
denies records any connection the server makes to it."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from httpapi.outbound import OutboundDenied, OutboundPolicy, check_spec_urls
from media.manager import STREAMS_KEY
from server.start_request import parse_start
from tests.security.listener import CountingListener
from trickle.client import TricklePublisher, TrickleSubscriber

DENIED_HOST = "127.0.0.2"


async def start(server, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    async with server.session.post(server.url("/stream/start"), json=body, headers=headers or {}) as response:
        return response.status, await response.json()


def error_message(body: dict) -> str:
    return body["error"]["message"]


@pytest.mark.parametrize("field", ["subscribe_url", "publish_url"])
async def test_denied_address_gets_400_naming_the_rule_and_is_never_contacted(make_server, field):
    server = await make_server(outbound_deny=f"{DENIED_HOST}/32,169.254.0.0/16")
    async with CountingListener(DENIED_HOST) as listener:
        body = {"subscribe_url": server.trickle_url("in"), "publish_url": server.trickle_url("out")}
        body[field] = listener.url()
        status, reply = await start(server, body)
        # answered, and no stream was started that could connect later
        assert status == 400, reply
        assert not server.app[STREAMS_KEY].active()
        message = error_message(reply)
        assert field in message and f"resolves to {DENIED_HOST}" in message
        assert f"OUTBOUND_DENY {DENIED_HOST}/32" in message
        assert listener.connections == 0
    assert server.app[STREAMS_KEY].active() == []


async def test_host_name_resolving_to_a_denied_address_is_refused(make_server):
    server = await make_server(outbound_deny="127.0.0.1/32")
    async with CountingListener("127.0.0.1") as listener:
        status, reply = await start(server, {"subscribe_url": listener.url(host="localhost")})
        assert status == 400, reply
        assert not server.app[STREAMS_KEY].active()  # answered: nothing is left to connect later
        assert "localhost" in error_message(reply)
        assert "resolves to 127.0.0.1, denied by OUTBOUND_DENY 127.0.0.1/32" in error_message(reply)
        assert listener.connections == 0


async def test_metadata_address_is_refused_by_default(server):
    status, reply = await start(
        server, {"subscribe_url": server.trickle_url("in"), "publish_url": "http://169.254.169.254/latest/meta-data"}
    )
    assert status == 400
    assert error_message(reply) == (
        "publish_url http://169.254.169.254/latest/meta-data resolves to "
        "169.254.169.254, denied by OUTBOUND_DENY 169.254.0.0/16"
    )
    for url, rule in [
        ("http://[fd00:ec2::254]/latest", "fd00:ec2::254/128"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata.google.internal"),
        ("http://[::ffff:169.254.169.254]/", "169.254.0.0/16"),
    ]:
        status, reply = await start(server, {"subscribe_url": url})
        assert status == 400 and rule in error_message(reply), (url, reply)


async def test_livepeer_side_channel_urls_are_checked(make_server):
    server = await make_server(outbound_deny=f"{DENIED_HOST}/32")
    async with CountingListener(DENIED_HOST) as listener:
        for field in ("control_url", "events_url", "data_url"):
            status, reply = await start(
                server,
                {field: listener.url(), "subscribe_url": server.trickle_url("in")},
                headers={"X-Stream-Id": f"lp-{field}"},
            )
            assert status == 400 and error_message(reply).startswith(field), reply
        assert not server.app[STREAMS_KEY].active()  # answered: nothing is left to connect later
        assert listener.connections == 0


async def test_host_name_in_the_deny_list_is_refused_without_a_lookup(make_server):
    server = await make_server(outbound_deny="orchestrator.invalid")
    status, reply = await start(server, {"subscribe_url": "http://Orchestrator.Invalid./ai/trickle/x"})
    assert status == 400
    assert "host orchestrator.invalid denied by OUTBOUND_DENY orchestrator.invalid" in error_message(reply)


async def test_outbound_allow_restricts_to_its_entries(make_server):
    server = await make_server(outbound_allow="127.0.0.1/32")
    async with CountingListener(DENIED_HOST) as listener:
        status, reply = await start(server, {"subscribe_url": listener.url()})
        assert status == 400
        assert "not in OUTBOUND_ALLOW (127.0.0.1/32)" in error_message(reply)
        assert listener.connections == 0
    # the allowed address still works: the server's own trickle channels
    status, reply = await start(
        server, {"subscribe_url": server.trickle_url("in"), "publish_url": server.trickle_url("out")}
    )
    assert status == 200, reply


async def test_query_string_of_a_refused_url_is_not_echoed(make_server):
    server = await make_server(outbound_deny=f"{DENIED_HOST}/32")
    status, reply = await start(server, {"subscribe_url": f"http://{DENIED_HOST}:9/in?token=leak-me-123"})
    assert status == 400 and "leak-me-123" not in error_message(reply)


async def test_non_http_scheme_is_refused_by_the_policy():
    policy = OutboundPolicy()
    with pytest.raises(OutboundDenied, match="must be an http or https URL"):
        await policy.check_url("file:///etc/passwd", what="subscribe_url")


# -- connect time -----------------------------------------------------------------------------
async def test_connector_refuses_a_denied_address_at_connect_time():
    """The policy's connector is the last word: even a request that no start-time check saw
    (or one whose name now resolves elsewhere) never reaches the denied address."""
    policy = OutboundPolicy(deny=f"{DENIED_HOST}/32")
    async with CountingListener(DENIED_HOST) as listener:
        async with aiohttp.ClientSession(connector=policy.connector()) as session:
            with pytest.raises(aiohttp.ClientConnectorError, match="OUTBOUND_DENY 127.0.0.2/32"):
                await session.get(listener.url(), allow_redirects=False)
        assert listener.connections == 0  # refused before any connect (the error above)


async def test_connector_filters_resolved_names():
    policy = OutboundPolicy(deny="127.0.0.1/32")
    async with CountingListener("127.0.0.1") as listener:
        async with aiohttp.ClientSession(connector=policy.connector()) as session:
            with pytest.raises(aiohttp.ClientConnectorError, match="127.0.0.1 denied by OUTBOUND_DENY"):
                await session.get(listener.url(host="localhost"))
        assert listener.connections == 0


async def test_connector_allows_what_the_policy_allows(server):
    policy = OutboundPolicy(deny=f"{DENIED_HOST}/32")
    async with aiohttp.ClientSession(connector=policy.connector()) as session:
        async with session.get(server.url("/health")) as response:
            assert response.status == 200


async def test_trickle_clients_never_contact_a_denied_listener():
    """Subscriber and publisher built with the policy: retries end, zero connections seen."""
    policy = OutboundPolicy(deny=f"{DENIED_HOST}/32")
    async with CountingListener(DENIED_HOST) as listener:
        subscriber = TrickleSubscriber(listener.url(), policy=policy, max_retries=2, retry_delay=0.05)
        assert await subscriber.next_segment() is None
        assert subscriber.end_reason == "retries_exhausted" and subscriber.errors == 2
        await subscriber.close()
        publisher = TricklePublisher(listener.url(), policy=policy)
        writer = await publisher.next_segment()
        await writer.write(b"x" * 100)
        await writer.close(timeout=5)
        assert writer.status is None and "OUTBOUND_DENY" in (writer.error or "")
        await publisher.close()
        assert listener.connections == 0


async def test_redirects_are_not_followed():
    """A media URL answering 302 elsewhere: the client stops at the 302 (a redirect could point
    anywhere after the start-time check)."""
    async with CountingListener(DENIED_HOST) as listener:

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(listener.url())

        app = web.Application()
        app.router.add_get("/ai/trickle/ch/{seq}", redirect)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            policy = OutboundPolicy(deny="169.254.0.0/16")  # the listener's address is allowed here
            subscriber = TrickleSubscriber(
                f"http://127.0.0.1:{port}/ai/trickle/ch", policy=policy, max_retries=1, retry_delay=0.01
            )
            assert await subscriber.next_segment() is None
            await subscriber.close()
        finally:
            await runner.cleanup()
        assert listener.connections == 0


async def test_check_spec_urls_reads_every_url_field():
    policy = OutboundPolicy(deny=f"{DENIED_HOST}/32")
    spec = parse_start({"subscribe_url": "http://127.0.0.1:1/in", "data_url": f"http://{DENIED_HOST}:1/d"}, "stream-1")
    with pytest.raises(OutboundDenied, match=r"^data_url http://127\.0\.0\.2:1/d resolves to 127\.0\.0\.2"):
        await check_spec_urls(policy, spec)
