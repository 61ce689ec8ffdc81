"""The outbound policy judges an address in every form that reaches the same place (issue items 5):
IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) are refused when the
IPv4 address is denied, the unspecified addresses (`0.0.0.0`, `::`, which reach this host) are
always refused, and the verdict is the same at stream start and at connect time. Remote ICE
candidates a caller hands the server pass the same deny list.

Listeners on 127.0.0.1 and ::1 record every connection (UDP listeners every datagram): nothing
may arrive at a denied one."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Self

import aiohttp
import pytest
from aioice.candidate import Candidate
from aiortc import RTCConfiguration, RTCPeerConnection

from httpapi.outbound import OutboundPolicy, address_forms
from media.ice import CandidateGuard, PriorityTolerantConnection
from media.manager import STREAMS_KEY
from server.webrtc_service import WEBRTC_KEY
from tests.conftest import wait_until
from tests.security.listener import CountingListener
from tests.webrtc_helpers import ToneTrack, codec_capabilities, loopback_settings, obs_style_offer

LOOPBACK_DENY = "127.0.0.0/8,::1/128"  # the defaults (0.0.0.0/8 among them) deliberately left out


def forms_of_loopback(port: int) -> dict[str, str]:
    """URLs that reach (or would reach, through a NAT64/6to4/Teredo relay) 127.0.0.1 or ::1."""
    teredo_client = int(ipaddress.ip_address("127.0.0.1")) ^ 0xFFFFFFFF  # Teredo obfuscates the client
    teredo = ipaddress.ip_address(
        (0x20010000 << 96) | (int(ipaddress.ip_address("65.54.227.120")) << 64) | teredo_client
    )
    return {
        "unspecified-v6": f"http://[::]:{port}/ch",
        "unspecified-v6-long": f"http://[0:0:0:0:0:0:0:0]:{port}/ch",
        "unspecified-v4": f"http://0.0.0.0:{port}/ch",
        "mapped": f"http://[::ffff:127.0.0.1]:{port}/ch",
        "compatible": f"http://[::127.0.0.1]:{port}/ch",
        "nat64": f"http://[64:ff9b::7f00:1]:{port}/ch",
        "nat64-local-use": f"http://[64:ff9b:1::7f00:1]:{port}/ch",
        "6to4": f"http://[2002:7f00:1::1]:{port}/ch",
        "teredo": f"http://[{teredo}]:{port}/ch",
    }


FORMS = list(forms_of_loopback(0))


class LoopbackListeners:
    """One port, listened on at ::1 and 127.0.0.1: whichever address a form reaches, it is counted."""

    async def __aenter__(self) -> Self:
        for _ in range(20):  # the port ::1 got may be taken on 127.0.0.1: try another
            self.v6 = await CountingListener("::1").__aenter__()
            self.v4 = CountingListener("127.0.0.1")
            try:
                self.v4._server = await asyncio.start_server(self.v4._on_connect, "127.0.0.1", self.v6.port)
            except OSError:
                await self.v6.__aexit__()
                continue
            self.v4.port = self.v6.port
            return self
        raise RuntimeError("no port free on both ::1 and 127.0.0.1")

    async def __aexit__(self, *exc: object) -> None:
        await self.v4.__aexit__()
        await self.v6.__aexit__()

    @property
    def port(self) -> int:
        return self.v6.port

    @property
    def connections(self) -> int:
        return self.v4.connections + self.v6.connections


async def start(server, body: dict) -> tuple[int, dict]:
    async with server.session.post(server.url("/stream/start"), json=body) as response:
        return response.status, await response.json()


# -- request time ------------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
async def test_every_form_of_a_denied_address_is_refused_at_stream_start(make_server, form):
    server = await make_server(outbound_deny=LOOPBACK_DENY)
    async with LoopbackListeners() as listeners:
        url = forms_of_loopback(listeners.port)[form]
        status, reply = await start(server, {"subscribe_url": url, "publish_url": url + "-out"})
        assert status == 400, reply
        message = reply["error"]["message"]
        assert "unspecified" in message if form.startswith("unspecified") else "OUTBOUND_DENY 127.0.0.0/8" in message
        # the start answered and started no stream: nothing is left that could connect later
        assert listeners.connections == 0 and not server.app[STREAMS_KEY].active()
    assert server.app[STREAMS_KEY].active() == []


async def test_unspecified_addresses_are_refused_whatever_the_lists_say(make_server):
    server = await make_server(outbound_deny="", outbound_allow="0.0.0.0/0,::/0")
    async with LoopbackListeners() as listeners:
        for form in ("unspecified-v6", "unspecified-v4", "unspecified-v6-long"):
            status, reply = await start(server, {"subscribe_url": forms_of_loopback(listeners.port)[form]})
            assert status == 400 and "the unspecified address reaches this host" in reply["error"]["message"], reply
        assert listeners.connections == 0 and not server.app[STREAMS_KEY].active()  # answered, nothing started


def test_embedded_ipv4_forms_are_judged_as_what_they_carry():
    policy = OutboundPolicy(deny="169.254.0.0/16,2002::/16")
    assert [str(f) for f in address_forms(ipaddress.ip_address("64:ff9b::a9fe:a9fe"))] == [
        "64:ff9b::a9fe:a9fe",
        "169.254.169.254",
    ]
    assert "it carries 169.254.169.254" in policy.address_verdict(ipaddress.ip_address("64:ff9b::a9fe:a9fe"))
    assert policy.address_verdict(ipaddress.ip_address("::a9fe:a9fe")) is not None
    # the IPv6 form itself is judged too: 2002::/16 denied, whatever IPv4 it carries
    assert "2002::/16" in policy.address_verdict(ipaddress.ip_address("2002:a00:1::1"))
    # ::1 is loopback, not the IPv4-compatible 0.0.0.1; ordinary addresses carry nothing
    assert address_forms(ipaddress.ip_address("::1")) == [ipaddress.ip_address("::1")]
    assert policy.address_verdict(ipaddress.ip_address("2001:db8::1")) is None
    # an allow list is met by the IPv4 address a form carries
    allow = OutboundPolicy(deny="", allow="10.0.0.0/8")
    assert allow.address_verdict(ipaddress.ip_address("64:ff9b::a00:1")) is None
    assert allow.address_verdict(ipaddress.ip_address("64:ff9b::b00:1")) is not None


# -- connect time ------------------------------------------------------------------------------
async def test_every_form_is_refused_by_the_connector_at_connect_time():
    """The same normalised verdict when a connection is opened (no start-time check here at all)."""
    policy = OutboundPolicy(deny=LOOPBACK_DENY)
    async with LoopbackListeners() as listeners:
        async with aiohttp.ClientSession(
            connector=policy.connector(), timeout=aiohttp.ClientTimeout(total=10)
        ) as session:
            for form, url in forms_of_loopback(listeners.port).items():
                with pytest.raises(aiohttp.ClientConnectorError, match="outbound policy") as caught:
                    await session.get(url, allow_redirects=False)
                expected = "unspecified" if form.startswith("unspecified") else "OUTBOUND_DENY 127.0.0.0/8"
                assert expected in str(caught.value), (form, caught.value)
        assert listeners.connections == 0  # refused before any connect (the errors above)


async def test_the_listeners_do_count_a_connection_the_policy_allows():
    """The control: with an empty deny list `[::]` does reach the ::1 listener (what the fix stops)."""
    async with LoopbackListeners() as listeners:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            with pytest.raises(aiohttp.ClientError):
                await session.get(forms_of_loopback(listeners.port)["unspecified-v6"])
        assert await wait_until(lambda: listeners.connections >= 1, timeout=5)


# -- remote ICE candidates ---------------------------------------------------------------------
def candidate(host: str, port: int, priority: int = 2130706431) -> Candidate:
    return Candidate(foundation="1", component=1, transport="udp", priority=priority, host=host, port=port, type="host")


async def test_ice_connection_drops_a_denied_remote_candidate():
    guard = CandidateGuard(OutboundPolicy(deny="127.0.0.2/32"))
    with guard.applied():
        connection = PriorityTolerantConnection(ice_controlling=False)
    outside = PriorityTolerantConnection(ice_controlling=False)  # made outside: no guard
    try:
        for host in ("127.0.0.2", "::", "0.0.0.0", "::ffff:127.0.0.2", "127.0.0.3"):
            await connection.add_remote_candidate(candidate(host, 9))
            await outside.add_remote_candidate(candidate(host, 9))
        assert [c.host for c in connection.remote_candidates] == ["127.0.0.3"]
        assert guard.dropped == 4
        assert len(outside.remote_candidates) == 5
    finally:
        await connection.close()
        await outside.close()


class DatagramCounter(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams = 0

    def datagram_received(self, data: bytes, addr) -> None:
        self.datagrams += 1


async def udp_listener(host: str) -> tuple[asyncio.DatagramTransport, DatagramCounter, int]:
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        DatagramCounter, local_addr=(host, 0)
    )
    return transport, protocol, transport.get_extra_info("sockname")[1]


def with_candidates(sdp: str, lines: list[str]) -> str:
    """`sdp` with candidate lines after every m-section's a=mid (where a browser puts them)."""
    out = []
    for line in sdp.splitlines():
        out.append(line)
        if line.startswith("a=mid:"):
            out.extend(lines)
    return "\r\n".join(out) + "\r\n"


async def test_whip_offer_and_trickle_patch_candidates_with_denied_addresses_are_dropped(make_server):
    """SDP candidates and a trickle-ICE PATCH: the server sends STUN checks to the allowed
    candidates (the control listeners count them) and never to the denied one. Each allowed
    candidate has the lowest priority, so a denied one, had it been kept, would be checked first."""
    server = await make_server(**loopback_settings(outbound_deny="127.0.0.2/32"))
    listeners = [await udp_listener(host) for host in ("127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.4")]
    (
        (_, denied, denied_port),
        (_, denied_patch, denied_patch_port),
        (_, offered, offered_port),
        (_, patched, patched_port),
    ) = listeners
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver(ToneTrack(), direction="sendonly").setCodecPreferences(
            codec_capabilities("audio", "audio/opus")
        )
        await pc.setLocalDescription(await pc.createOffer())
        offer = with_candidates(
            obs_style_offer(pc.localDescription.sdp),
            [
                f"a=candidate:1 1 udp 2130706431 127.0.0.2 {denied_port} typ host",
                f"a=candidate:2 1 udp 1 127.0.0.3 {offered_port} typ host",
            ],
        )
        headers = {**server.auth_headers("ingest"), "Content-Type": "application/sdp"}
        async with aiohttp.ClientSession() as session:
            resp = await session.post(server.url("/whip"), data=offer.encode(), headers=headers)
            assert resp.status == 201, await resp.text()
            ufrag = next(line.split(":", 1)[1] for line in offer.splitlines() if line.startswith("a=ice-ufrag:"))
            frag = (
                f"a=ice-ufrag:{ufrag}\r\na=mid:0\r\n"
                f"a=candidate:3 1 udp 2130706431 127.0.0.2 {denied_patch_port} typ host\r\n"
                f"a=candidate:4 1 udp 1 127.0.0.4 {patched_port} typ host\r\n"
            )
            resp = await session.patch(
                server.url(resp.headers["Location"]),
                data=frag,
                headers={
                    **server.auth_headers("ingest"),
                    "Content-Type": "application/trickle-ice-sdpfrag",
                    "If-Match": resp.headers["ETag"],
                },
            )
            assert resp.status == 204, await resp.text()
        assert await wait_until(lambda: offered.datagrams > 0 and patched.datagrams > 0, timeout=10)
        assert denied.datagrams == 0 and denied_patch.datagrams == 0
        assert server.app[WEBRTC_KEY].candidate_guard.dropped == 2
    finally:
        await pc.close()
        for transport, _, _ in listeners:
            transport.close()
