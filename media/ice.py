"""ICE configuration for every WebRTC peer the server creates.

- `RTCConfiguration(iceServers=[...])` is always explicit: with `None` aiortc falls back to Google's
  public STUN server and may wait up to 5 s for it, longer than OBS waits for a WHIP answer.
- aioice never gathers loopback addresses and binds to any free port. A deployment (and the
  loopback tests) can name the host addresses to use (`use_host_addresses`) and a UDP port range
  (`use_udp_port_range`); both replace an aioice module attribute once, process-wide, and give the
  original back when released.
- FFmpeg's WHIP muxer (8.0) sends STUN binding requests without the PRIORITY attribute, which
  aioice needs to learn the peer-reflexive candidate such a client (no candidates in its offer)
  connects from: `PriorityTolerantConnection` supplies the prflx priority RFC 8445 §5.1.2 would
  give it, as Pion and libwebrtc do. It is installed process-wide when this module is imported.
- A remote candidate is an address a caller asks the server to send to: every one, from the offer's
  SDP, a trickle-ICE PATCH or an mDNS name resolved, passes the outbound policy's deny list
  (`CandidateGuard`) before aioice pairs it; a denied one is dropped, logged and counted.
- RFC 7675 consent freshness: aioice closes a connection whose peer leaves `CONSENT_FAILURES`
  binding requests in a row unanswered. FFmpeg 8's WHIP muxer never answers them once it streams
  (its write loop reads the socket but handles DTLS only), so every FFmpeg publish died after
  ~30 s. A publisher's connection may count authenticated media from it as consent instead
  (`accept_media_as_consent`); see `PriorityTolerantConnection.query_consent`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
import aioice.turn
import aiortc.rtcicetransport
from aioice import stun
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from httpapi.outbound import OutboundPolicy

log = logging.getLogger(__name__)

# tries per host address before giving up on a port range (each try is one bind() call)
PORT_BIND_ATTEMPTS = 64
# RFC 7675 consent checks: one binding request every CONSENT_INTERVAL s (±20 %), the connection
# closes after CONSENT_FAILURES in a row fail (aioice's values; tests may shorten them here)
CONSENT_INTERVAL: float = aioice.ice.CONSENT_INTERVAL
CONSENT_FAILURES: int = aioice.ice.CONSENT_FAILURES


class IceConfigError(ValueError):
    """A setting that cannot be turned into an ICE configuration."""


def parse_ice_servers(value: str | None) -> list[RTCIceServer]:
    """ICE servers from a setting: a JSON list of `{"urls", "username"?, "credential"?}` objects
    (or plain URL strings), or comma-separated URLs. Empty → no servers (host candidates only)."""
    text = (value or "").strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise IceConfigError(f"ice_servers is not valid JSON: {exc}") from None
    else:
        items = [part.strip() for part in text.split(",") if part.strip()]
    servers = []
    for item in items:
        if isinstance(item, str):
            item = {"urls": item}
        if not isinstance(item, dict) or not item.get("urls"):
            raise IceConfigError(f"ice_servers entry needs 'urls': {item!r}")
        urls = item["urls"]
        for url in urls if isinstance(urls, list) else [urls]:
            if not isinstance(url, str) or url.split(":", 1)[0] not in ("stun", "stuns", "turn", "turns"):
                raise IceConfigError(f"ice_servers URL must start with stun:, turn: or turns:, got {url!r}")
        servers.append(RTCIceServer(urls=urls, username=item.get("username"), credential=item.get("credential")))
    return servers


def parse_host_addresses(value: str | None) -> list[str]:
    addresses = [part.strip() for part in (value or "").split(",") if part.strip()]
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise IceConfigError(f"webrtc_host_addresses: {address!r} is not an IP address") from None
    return addresses


@dataclass
class IceSettings:
    servers: list[RTCIceServer] = field(default_factory=list)
    host_addresses: list[str] = field(default_factory=list)  # empty: aioice's own choice
    udp_port_min: int = 0  # 0/0: any free port
    udp_port_max: int = 0

    @classmethod
    def from_strings(
        cls, servers: str | None, host_addresses: str | None, port_min: int = 0, port_max: int = 0
    ) -> IceSettings:
        if (port_min or port_max) and not (0 < port_min <= port_max <= 65535):
            raise IceConfigError("webrtc_udp_port_min/max must satisfy 0 < min <= max <= 65535 (or both 0)")
        return cls(parse_ice_servers(servers), parse_host_addresses(host_addresses), port_min, port_max)

    def rtc_configuration(self) -> RTCConfiguration:
        """Always an explicit list (possibly empty): never aiortc's public default."""
        return RTCConfiguration(iceServers=list(self.servers))

    def link_headers(self) -> list[str]:
        """RFC 9725 §4.6 `Link` values advertising the ICE servers to WHIP clients."""
        links = []
        for server in self.servers:
            for url in server.urls if isinstance(server.urls, list) else [server.urls]:
                link = f'<{url}>; rel="ice-server"'
                if server.username:
                    link += f'; username="{server.username}"; credential="{server.credential or ""}"'
                    link += '; credential-type="password"'
                links.append(link)
        return links


# -- remote candidates and the outbound policy ----------------------------------------------------


class CandidateGuard:
    """The outbound policy's verdict on the remote ICE candidates of a service's peers.

    A candidate is an address the server sends STUN checks (and then media) to, chosen by whoever
    wrote the offer: one on the deny list (metadata, link-local, whatever OUTBOUND_DENY names) or
    an unspecified address is dropped before aioice pairs it. OUTBOUND_ALLOW does not apply: WebRTC
    peers connect from anywhere. Peer-reflexive candidates (learned from a packet that arrived) are
    answers to the sender and are not checked."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self.policy = policy
        self.dropped = 0

    def allows(self, host: str, port: int) -> bool:
        reason = self.policy.peer_address_verdict(host)
        if reason is None:
            return True
        self.dropped += 1
        log.warning("ICE: remote candidate %s port %s dropped: %s", host, port, reason)
        return False

    @contextmanager
    def applied(self) -> Iterator[CandidateGuard]:
        """ICE connections created inside (aiortc makes them while transceivers are added and an offer
        is applied) check every remote candidate they are given, then and later, with this guard."""
        token = _candidate_guard.set(self)
        try:
            yield self
        finally:
            _candidate_guard.reset(token)


# the guard of the peer being negotiated in this task (see CandidateGuard.applied)
_candidate_guard: ContextVar[CandidateGuard | None] = ContextVar("streamlens_candidate_guard", default=None)


# -- STUN binding requests without PRIORITY ---------------------------------------------------------


class PriorityTolerantConnection(aioice.Connection):
    """An aioice `Connection` that accepts an authenticated binding request without PRIORITY.

    RFC 8445 §7.1.1 requires PRIORITY, and aioice reads it unconditionally when the request comes
    from an address it does not know yet (it learns a peer-reflexive candidate, §7.3.1.3) — a
    `KeyError` that drops the request, so ICE never completes. FFmpeg 8's WHIP muxer is ICE-lite-like:
    its offer has no candidates and its checks carry USERNAME, USE-CANDIDATE, ICE-CONTROLLING and
    MESSAGE-INTEGRITY only. Other WHIP servers (Pion, libwebrtc) then compute the priority locally
    from the candidate type; this does the same before aioice's own handling. The request's
    integrity was already checked on the raw bytes, so adding the attribute changes nothing else."""

    missing_priority_requests = 0  # process-wide count, for logs and tests

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.candidate_guard = _candidate_guard.get()
        # monotonic time of the peer's last authenticated media, for peers whose media counts as
        # consent (set by `accept_media_as_consent`); None: only answered checks do
        self.media_consent: Callable[[], float | None] | None = None
        self.consent_answered = 0  # consent checks the peer answered
        self.consent_kept_by_media = 0  # unanswered ones that its fresh media made good

    def _add_remote_candidate(self, remote_candidate: Candidate, network_host: str) -> None:
        # aioice's one entry for a signalled candidate (SDP, trickle, a resolved mDNS name): the
        # address it would send to is checked here, after any name resolution
        guard = self.candidate_guard
        if guard is not None and not guard.allows(network_host, remote_candidate.port):
            return
        super()._add_remote_candidate(remote_candidate, network_host)

    def check_incoming(self, message: stun.Message, addr: tuple[str, int], protocol: aioice.ice.StunProtocol) -> None:
        if "PRIORITY" not in message.attributes:
            component = protocol.local_candidate.component
            message.attributes["PRIORITY"] = candidate_priority(component, "prflx")
            if PriorityTolerantConnection.missing_priority_requests == 0:
                log.info(
                    "ICE: binding request from %s:%s without PRIORITY (FFmpeg WHIP?); using the "
                    "peer-reflexive priority",
                    addr[0],
                    addr[1],
                )
            PriorityTolerantConnection.missing_priority_requests += 1
        super().check_incoming(message, addr, protocol)

    async def query_consent(self) -> None:
        """RFC 7675 consent freshness, as aioice does it (it starts this task once connected), except
        that for a peer with `media_consent` an unanswered check still counts as fresh consent when
        the peer's authenticated media arrived within the last interval.

        FFmpeg 8's WHIP muxer answers binding requests only during its handshake; once it streams it
        reads and drops every STUN packet, so aioice's checks all time out and it closed each FFmpeg
        publish after ~30 s. Media that decrypts with the session's SRTP keys comes from the peer
        that consented to this session; a publisher gets only RTCP from us, so nothing is flooded at
        an address that stopped listening, and a peer that really goes away stops sending media: its
        checks then fail as before (and the stream's media timeout closes it sooner)."""
        assert self.remote_password is not None
        failures = 0
        told = False
        while True:
            await asyncio.sleep(CONSENT_INTERVAL * (0.8 + 0.4 * random.random()))
            for pair in self._nominated.values():
                request = self.build_request(pair, nominate=False)
                try:
                    await pair.protocol.request(
                        request,
                        pair.remote_addr,
                        integrity_key=self.remote_password.encode("utf8"),
                        retransmissions=0,
                    )
                    failures = 0
                    self.consent_answered += 1
                except stun.TransactionError:
                    if self._media_is_fresh():
                        failures = 0
                        self.consent_kept_by_media += 1
                        if not told:
                            told = True
                            log.info(
                                "ICE: %s:%s does not answer consent checks (FFmpeg WHIP?); its media keeps consent",
                                pair.remote_addr[0],
                                pair.remote_addr[1],
                            )
                    else:
                        failures += 1
                if failures >= CONSENT_FAILURES:
                    log.info("ICE: consent to send expired (%d checks in a row unanswered)", failures)
                    self._query_consent_task = None  # close() must not cancel the task it runs in
                    await self.close()
                    return

    def _media_is_fresh(self) -> bool:
        last = self.media_consent() if self.media_consent is not None else None
        return last is not None and time.monotonic() - last <= CONSENT_INTERVAL


def ice_connections(pc: RTCPeerConnection) -> list[PriorityTolerantConnection]:
    """The aioice connections of `pc`'s transceivers (one with BUNDLE)."""
    connections: list[PriorityTolerantConnection] = []
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        # aiortc keeps the aioice connection on its ICE transport (aiortc is pinned in pyproject)
        connection = getattr(getattr(dtls, "transport", None), "_connection", None)
        if isinstance(connection, PriorityTolerantConnection) and connection not in connections:
            connections.append(connection)
    return connections


def accept_media_as_consent(pc: RTCPeerConnection, last_media_at: Callable[[], float | None]) -> int:
    """Let the publisher on `pc` keep ICE consent with its media (see `query_consent`):
    `last_media_at` gives the monotonic time of its last decoded frame. Returns how many ICE
    connections it applies to."""
    connections = ice_connections(pc)
    for connection in connections:
        connection.media_consent = last_media_at
    return len(connections)


# aiortc builds every ICE connection from this module attribute; the port-range class below derives
# from the tolerant one, so the tolerance holds whichever is installed.
aiortc.rtcicetransport.Connection = PriorityTolerantConnection  # type: ignore[misc]  # a deliberate patch of aiortc


# -- process-wide aioice settings -----------------------------------------------------------------


class _Override:
    """Replaces one module attribute while at least one holder wants it (reference counted)."""

    def __init__(self, module: Any, name: str) -> None:
        self.module = module
        self.name = name
        self._original = getattr(module, name)
        self._holders = 0
        self._value: Any = None
        self._lock = threading.Lock()

    def acquire(self, value: Any, same: Callable[[Any], bool]) -> Callable[[], None]:
        with self._lock:
            if self._holders and not same(self._value):
                raise IceConfigError(f"{self.name} is already overridden with a different value in this process")
            if not self._holders:
                self._value = value
                setattr(self.module, self.name, value)
            self._holders += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                self._holders -= 1
                if not self._holders:
                    setattr(self.module, self.name, self._original)
                    self._value = None

        return release


_host_override = _Override(aioice.ice, "get_host_addresses")
_connection_override = _Override(aiortc.rtcicetransport, "Connection")


def use_host_addresses(addresses: list[str]) -> Callable[[], None]:
    """Make aioice gather host candidates on exactly `addresses` (e.g. ["127.0.0.1"], which it
    otherwise skips). Returns a function that restores aioice's own choice."""
    chosen = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (use_ipv4 if ipaddress.ip_address(a).version == 4 else use_ipv6)]

    get_host_addresses.addresses = chosen  # type: ignore[attr-defined]
    return _host_override.acquire(get_host_addresses, lambda current: getattr(current, "addresses", None) == chosen)


def use_udp_port_range(port_min: int, port_max: int) -> Callable[[], None]:
    """Bind every ICE host candidate of every new peer connection inside [port_min, port_max]."""
    connection_class = port_range_connection(port_min, port_max)
    return _connection_override.acquire(
        connection_class, lambda current: getattr(current, "port_range", None) == (port_min, port_max)
    )


def apply_ice_settings(settings: IceSettings) -> Callable[[], None]:
    """Install the process-wide parts of `settings`; returns the undo function."""
    undo: list[Callable[[], None]] = []
    try:
        if settings.host_addresses:
            undo.append(use_host_addresses(settings.host_addresses))
        if settings.udp_port_min:
            undo.append(use_udp_port_range(settings.udp_port_min, settings.udp_port_max))
    except BaseException:
        for release in reversed(undo):
            release()
        raise

    def release_all() -> None:
        for release in reversed(undo):
            release()

    return release_all


def port_range_connection(port_min: int, port_max: int) -> type[PriorityTolerantConnection]:
    """An aioice `Connection` whose host candidates bind inside a UDP port range.

    aioice binds `(address, 0)`; this class binds the host sockets itself, then lets aioice do
    the rest (TURN) and asks the STUN server for server-reflexive candidates as aioice would."""

    class PortRangeConnection(PriorityTolerantConnection):
        port_range = (port_min, port_max)

        async def get_component_candidates(
            self, component: int, addresses: list[str], timeout: int = 5
        ) -> list[Candidate]:
            loop = asyncio.get_running_loop()
            candidates: list[Candidate] = []
            host_protocols = []
            for address in addresses:
                protocol = await _bind_in_range(loop, self, address, port_min, port_max)
                if protocol is None:
                    continue
                sockname = protocol.transport.get_extra_info("sockname")
                protocol.local_candidate = Candidate(
                    foundation=candidate_foundation("host", "udp", sockname[0]),
                    component=component,
                    transport="udp",
                    priority=candidate_priority(component, "host"),
                    host=sockname[0],
                    port=sockname[1],
                    type="host",
                )
                candidates.append(protocol.local_candidate)
                host_protocols.append(protocol)
            self._protocols += host_protocols
            tasks = []
            if self.stun_server:
                for protocol in host_protocols:
                    if ipaddress.ip_address(protocol.local_candidate.host).version == 4:
                        tasks.append(
                            asyncio.create_task(aioice.ice.server_reflexive_candidate(protocol, self.stun_server))
                        )
            # aioice itself handles TURN (no host addresses left for it to bind)
            relay_task = asyncio.create_task(super().get_component_candidates(component, [], timeout))
            if tasks:
                done, pending = await asyncio.wait(tasks, timeout=timeout)
                for task in done:
                    if task.exception() is None:
                        candidates.append(task.result()[0])
                for task in pending:
                    task.cancel()
            candidates.extend(await relay_task)
            return candidates

    return PortRangeConnection


async def _bind_in_range(
    loop: asyncio.AbstractEventLoop, connection: aioice.Connection, address: str, port_min: int, port_max: int
) -> aioice.ice.StunProtocol | None:
    ports = range(port_min, port_max + 1)
    tries = random.sample(ports, min(len(ports), PORT_BIND_ATTEMPTS))
    for port in tries:
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: aioice.ice.StunProtocol(connection), local_addr=(address, port)
            )
        except OSError:
            continue
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, aioice.turn.UDP_SOCKET_BUFFER_SIZE)
        return protocol
    log.warning("no free UDP port in %d-%d on %s after %d tries", port_min, port_max, address, len(tries))
    return None
