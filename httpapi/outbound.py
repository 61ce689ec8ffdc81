"""Which addresses the server may contact for a caller, and how TLS is checked.

Every URL a caller hands the server (trickle subscribe/publish/control/events/data URLs, video
URLs) passes one `OutboundPolicy`:

- `OUTBOUND_DENY`: comma-separated CIDRs, IP addresses and host names never contacted (default:
  link-local, `0.0.0.0/8`, multicast and the known cloud metadata addresses);
- `OUTBOUND_ALLOW`: when set, only these CIDRs / host names are contacted;
- loopback and private ranges are allowed unless listed (orchestrators live there).

Every address is judged in all the forms that reach the same place: an IPv6 address that carries
an IPv4 one (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`, NAT64 `64:ff9b::/96` and the
local-use `64:ff9b:1::/48`, 6to4 `2002::/16`, Teredo) is refused when either it or the IPv4 address
it carries is denied. The unspecified addresses (`0.0.0.0`, `::`) reach this host and are refused
whatever the lists say.

`check_url()` refuses a URL when the request arrives (a 400 naming the rule). The same verdict is
applied again when a connection is opened: the policy's `TCPConnector` filters what its resolver
returns and refuses, in its socket factory, any denied address it is asked to connect to (literal
IPs never reach a resolver), so a name that resolves elsewhere by then (DNS rebinding) is still
refused. Media requests never follow redirects (`allow_redirects=False` in the trickle client).

TLS (`TlsPolicy`) is verified by default (system CAs plus `TLS_CA_FILE`); only hosts listed in
`TLS_INSECURE_HOSTS` skip verification. Operator-configured endpoints (VLM, vLLM, orchestrator)
are exempt from the URL policy but not from TLS verification.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import ssl
import warnings
from collections.abc import Iterable
from typing import Any, NoReturn
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from httpapi.redact import redact_url
from media.lru import LRU

log = logging.getLogger(__name__)

# The built-in deny list (Settings.outbound_deny carries the same default for the server).
DEFAULT_OUTBOUND_DENY = (
    "169.254.0.0/16,fe80::/10,0.0.0.0/8,224.0.0.0/4,ff00::/8,fd00:ec2::254/128,"
    "100.100.100.200/32,metadata.google.internal"
)
# How long a start-time name lookup may take before the URL is refused.
RESOLVE_TIMEOUT_S = 5.0
# Addresses a connector's resolver approved through an allowed host name (bounded, newest kept).
MAX_APPROVED_ADDRESSES = 256

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# NAT64 prefixes (RFC 6052 well-known, RFC 8215 local-use): the IPv4 address sits in the last 32
# bits (the /96 layout, the one NAT64 gateways use in practice)
NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
UNSPECIFIED_REASON = "refused: the unspecified address reaches this host"


class OutboundDenied(ValueError):
    """A URL (or an address it resolves to) the policy does not let the server contact."""


def _normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _parse_address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
    return address


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: where its packets end up through the host's
    stack, a NAT64 gateway, a 6to4 or a Teredo relay."""
    found: list[ipaddress.IPv4Address] = []
    value = int(address)
    low = ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    elif value >> 32 == 0 and value > 1:  # IPv4-compatible ::a.b.c.d (not :: or ::1)
        found.append(low)
    if any(address in prefix for prefix in NAT64_PREFIXES):
        found.append(low)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)  # (server, client): either may be where a packet goes
    return found


def address_forms(address: IPAddress) -> list[IPAddress]:
    """`address` itself, then every IPv4 address it carries (each judged by the policy)."""
    if isinstance(address, ipaddress.IPv6Address):
        return [address, *embedded_ipv4(address)]
    return [address]


class AddressRules:
    """A comma-separated list of CIDRs, addresses and host names (`.example.com` = any subdomain)."""

    def __init__(self, text: str | None) -> None:
        self.networks: list[IPNetwork] = []
        self.hosts: set[str] = set()
        self.domains: list[str] = []
        for raw in (text or "").split(","):
            item = raw.strip()
            if not item:
                continue
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
                continue
            except ValueError:
                pass
            name = _normal_host(item)
            if name.startswith("*."):
                name = name[1:]
            if name.startswith("."):
                self.domains.append(name)
            else:
                self.hosts.add(name)

    def __bool__(self) -> bool:
        return bool(self.networks or self.hosts or self.domains)

    def network_for(self, address: IPAddress) -> IPNetwork | None:
        for network in self.networks:
            if address.version == network.version and address in network:
                return network
        return None

    def name_rule_for(self, host: str) -> str | None:
        host = _normal_host(host)
        if host in self.hosts:
            return host
        for domain in self.domains:
            if host.endswith(domain):
                return "*" + domain
        return None

    def describe(self) -> str:
        return ", ".join([str(n) for n in self.networks] + sorted(self.hosts) + ["*" + d for d in self.domains])


def safe_url(url: str) -> str:
    """`url` fit for logs and errors: no credentials, secret query values `[redacted]` (httpapi/redact.py)."""
    return redact_url(url)


# ---------------------------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------------------------
class TlsPolicy:
    """One verified `ssl.SSLContext` for every outbound HTTPS request, and the hosts exempt from it."""

    def __init__(self, ca_file: str | None = None, insecure_hosts: Iterable[str] = ()) -> None:
        self.context = ssl.create_default_context()
        if ca_file:
            try:
                self.context.load_verify_locations(cafile=ca_file)  # a private CA, on top of the system's
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"TLS_CA_FILE {ca_file!r} cannot be loaded: {exc}") from None
        self.ca_file = ca_file or None
        self.insecure_hosts = frozenset(_normal_host(h) for h in insecure_hosts if h.strip())

    @classmethod
    def from_settings(cls, settings: Any) -> TlsPolicy:
        return cls(settings.tls_ca_file, settings.tls_insecure_hosts.split(","))

    def is_insecure(self, url: str) -> bool:
        """True when `url`'s host is listed in TLS_INSECURE_HOSTS (its certificate is not checked)."""
        host = urlsplit(url).hostname
        return host is not None and _normal_host(host) in self.insecure_hosts

    def ssl_for(self, url: str) -> ssl.SSLContext | bool:
        """The `ssl=` argument of an aiohttp request to `url`."""
        return False if self.is_insecure(url) else self.context

    def secret_refusal(self, url: str) -> str | None:
        """Why a secret must not be sent to `url`, or None when it may: verified HTTPS, a host in
        TLS_INSECURE_HOSTS, or plain http to loopback."""
        parts = urlsplit(url)
        host = _normal_host(parts.hostname or "")
        if parts.scheme == "https" or host in self.insecure_hosts:
            return None
        if parts.scheme == "http" and is_loopback_host(host):
            return None
        return (
            f"{safe_url(url)} is plain {parts.scheme or 'unknown-scheme'} to a host that is not loopback: "
            "use https, or list the host in TLS_INSECURE_HOSTS to send the secret unverified"
        )


def is_loopback_host(host: str) -> bool:
    host = _normal_host(host)
    if host == "localhost":
        return True
    address = _parse_address(host)
    return address is not None and address.is_loopback


# ---------------------------------------------------------------------------------------------
# URL policy
# ---------------------------------------------------------------------------------------------
class OutboundPolicy:
    """Allow/deny lists for caller-given URLs, applied at request time and at connect time."""

    def __init__(
        self, deny: str | None = DEFAULT_OUTBOUND_DENY, allow: str | None = "", tls: TlsPolicy | None = None
    ) -> None:
        self.deny = AddressRules(deny)
        self.allow = AddressRules(allow)
        self.tls = tls or TlsPolicy()

    @classmethod
    def from_settings(cls, settings: Any) -> OutboundPolicy:
        return cls(
            deny=settings.outbound_deny,  # its default is DEFAULT_OUTBOUND_DENY (server/settings.py)
            allow=settings.outbound_allow,
            tls=TlsPolicy.from_settings(settings),
        )

    def ssl_for(self, url: str) -> ssl.SSLContext | bool:
        return self.tls.ssl_for(url)

    # -- verdicts (None = allowed, else the reason) -----------------------------------------------
    def name_verdict(self, host: str) -> str | None:
        rule = self.deny.name_rule_for(host)
        if rule is not None:
            return f"denied by OUTBOUND_DENY {rule}"
        return None

    def address_verdict(self, address: IPAddress, allowed_by_name: bool = False) -> str | None:
        """Why `address` may not be contacted (None: it may). Denied when it, or an IPv4 address it
        carries, is unspecified or on the deny list; with an allow list, one of its forms must be on it."""
        forms = address_forms(address)
        reason = self.deny_verdict(forms)
        if reason is not None:
            return reason
        if self.allow and not allowed_by_name and not any(self.allow.network_for(form) for form in forms):
            return f"not in OUTBOUND_ALLOW ({self.allow.describe()})"
        return None

    def deny_verdict(self, forms: list[IPAddress]) -> str | None:
        """The unspecified rule and the deny list over `forms` (an address, then what it carries)."""
        for index, form in enumerate(forms):
            carried = f" (it carries {form})" if index else ""
            if form.is_unspecified:
                return UNSPECIFIED_REASON + carried
            network = self.deny.network_for(form)
            if network is not None:
                return f"denied by OUTBOUND_DENY {network}{carried}"
        return None

    def peer_address_verdict(self, host: str) -> str | None:
        """Why a remote ICE candidate's address may not be contacted (None: it may). The deny list
        and the unspecified rule apply; OUTBOUND_ALLOW does not (WebRTC peers connect from anywhere)."""
        address = _parse_address(host)
        if address is None:
            return "not an IP address"
        return self.deny_verdict(address_forms(address))

    def allowed_by_name(self, host: str) -> bool:
        return bool(self.allow) and self.allow.name_rule_for(host) is not None

    # -- request time -------------------------------------------------------------------------
    async def check_url(self, url: str, what: str = "url") -> None:
        """Raise OutboundDenied naming the rule unless `url` is http(s) and every address its host
        resolves to is allowed."""
        shown = safe_url(url)
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise OutboundDenied(f"{what} is not a valid URL: {exc}") from None
        if parts.scheme not in ("http", "https"):
            raise OutboundDenied(f"{what} {shown} must be an http or https URL")
        await self.checked_addresses(parts.hostname or "", port, what=what, shown=shown)

    def host_verdict(self, host: str) -> str | None:
        """Why `host` (a name or a literal address) may not be contacted, judged without a name
        lookup (None: not refused yet; a name's addresses are checked when it is resolved)."""
        host = _normal_host(host)
        literal = _parse_address(host)
        if literal is not None:
            reason = self.address_verdict(literal)
            return None if reason is None else f"address {literal} {reason}"
        reason = self.name_verdict(host)
        return None if reason is None else f"host {host} {reason}"

    async def checked_addresses(self, host: str, port: int, *, what: str = "url", shown: str = "") -> list[IPAddress]:
        """Every address `host` stands for, resolved once and each one allowed, else OutboundDenied.
        A caller that connects to one of these (never to the name again) cannot be rebound by DNS."""
        shown = shown or host
        host = _normal_host(host)
        if not host:
            raise OutboundDenied(f"{what} {shown} has no host")
        literal = _parse_address(host)
        if literal is None:
            reason = self.name_verdict(host)
            if reason is not None:
                raise OutboundDenied(f"{what} {shown}: host {host} {reason}")
        by_name = literal is None and self.allowed_by_name(host)
        addresses = await self._resolve(host, port, what, shown)
        for address in addresses:
            reason = self.address_verdict(address, allowed_by_name=by_name)
            if reason is not None:
                raise OutboundDenied(f"{what} {shown} resolves to {address}, {reason}")
        return addresses

    @staticmethod
    async def _resolve(host: str, port: int, what: str, shown: str) -> list[IPAddress]:
        # getaddrinfo also turns legacy forms (2130706433, 127.1) into the address they mean
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            raise OutboundDenied(f"{what} {shown}: host {host} does not resolve ({exc})") from None
        addresses = []
        for info in infos:
            address = _parse_address(str(info[4][0]))
            if address is not None and address not in addresses:
                addresses.append(address)
        if not addresses:
            raise OutboundDenied(f"{what} {shown}: host {host} has no address")
        return addresses

    # -- connect time -------------------------------------------------------------------------
    def connector(self, **kwargs: Any) -> aiohttp.TCPConnector:
        """A TCPConnector that refuses denied addresses right before it connects, and verifies TLS
        (pass `ssl=policy.ssl_for(url)` per request for TLS_INSECURE_HOSTS)."""
        kwargs.setdefault("ssl", self.tls.context)
        return PolicyConnector(ConnectGuard(self), **kwargs)


class PolicyConnector(aiohttp.TCPConnector):
    """A TCPConnector whose resolver and socket factory are a `ConnectGuard` (closed with it)."""

    def __init__(self, guard: ConnectGuard, **kwargs: Any) -> None:
        # every connect goes through the guard's resolver: no cached answer skips the check
        super().__init__(resolver=guard, socket_factory=guard.socket_for, use_dns_cache=False, **kwargs)
        self.guard = guard

    async def close(self, *args: Any, **kwargs: Any) -> None:
        await super().close(*args, **kwargs)
        await self.guard.close()


class ConnectGuard(AbstractResolver):
    """The resolver and socket factory of a policy connector."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self.policy = policy
        self.refused = 0
        self._inner: AbstractResolver | None = None
        # addresses approved because OUTBOUND_ALLOW names their host (literal IPs have no name)
        self._approved: LRU[IPAddress, None] = LRU(MAX_APPROVED_ADDRESSES)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        reason = self.policy.name_verdict(host)
        if reason is not None:
            self._refuse(f"host {host} {reason}")
        if self._inner is None:
            self._inner = DefaultResolver()
        by_name = self.policy.allowed_by_name(host)
        allowed, reasons = [], []
        for result in await self._inner.resolve(host, port, family):
            address = _parse_address(result["host"])
            if address is None:
                reasons.append(f"{result['host']} not an IP address")
                continue
            verdict = self.policy.address_verdict(address, by_name)
            if verdict is None:
                allowed.append(result)
                if by_name:
                    self._approve(address)
            else:
                reasons.append(f"{result['host']} {verdict}")
        if not allowed:
            self._refuse(f"host {host} resolves to " + "; ".join(reasons or ["nothing"]))
        return allowed

    def _approve(self, address: IPAddress) -> None:
        self._approved.put(address, None)

    def socket_for(self, addr_info: tuple[Any, ...]) -> socket.socket:
        """aiohappyeyeballs' socket factory: the last check before `connect()`."""
        family, type_, proto, _canon, sockaddr = addr_info
        address = _parse_address(str(sockaddr[0]))
        if address is None:
            self._refuse(f"{sockaddr[0]} is not an IP address")
        reason = self.policy.address_verdict(address, allowed_by_name=address in self._approved)
        if reason is not None:
            self._refuse(f"{address} {reason}")
        return socket.socket(family=family, type=type_, proto=proto)

    def _refuse(self, reason: str) -> NoReturn:
        self.refused += 1
        log.warning("outbound connection refused: %s", reason)
        raise OSError(errno.EACCES, f"outbound policy: {reason}")

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


# ---------------------------------------------------------------------------------------------
# The one outbound session factory
# ---------------------------------------------------------------------------------------------
def client_session(
    policy: OutboundPolicy | TlsPolicy | None,
    *,
    timeout: aiohttp.ClientTimeout | None = None,
    headers: dict[str, str] | None = None,
    **connector_kwargs: Any,
) -> aiohttp.ClientSession:
    """The aiohttp session of every outbound client, with TLS applied one way: the connector verifies
    with the policy's context (system CAs plus TLS_CA_FILE), and each request passes
    `ssl=policy.ssl_for(url)` so TLS_INSECURE_HOSTS apply. An `OutboundPolicy` also guards the
    connect (caller-given URLs); a `TlsPolicy` alone is for operator-configured endpoints, which are
    exempt from the address rules; None: the system CAs (callers then pass `ssl=` per request)."""
    if isinstance(policy, OutboundPolicy):
        connector: aiohttp.TCPConnector = policy.connector(**connector_kwargs)
    else:
        connector_kwargs.setdefault("ssl", policy.context if policy is not None else True)
        connector = aiohttp.TCPConnector(**connector_kwargs)
    extra: dict[str, Any] = {"headers": headers} if headers else {}
    if timeout is not None:
        extra["timeout"] = timeout
    return aiohttp.ClientSession(connector=connector, **extra)


# ---------------------------------------------------------------------------------------------
# The application's policy and the start-time check of a stream's URLs
# ---------------------------------------------------------------------------------------------
OUTBOUND_POLICY_KEY = web.AppKey("outbound_policy", OutboundPolicy)
SPEC_URL_FIELDS = ("subscribe_url", "publish_url", "control_url", "events_url", "data_url")

_default_policy: OutboundPolicy | None = None


def default_policy() -> OutboundPolicy:
    """The built-in policy (default deny list, verified TLS) for clients built without one."""
    global _default_policy
    if _default_policy is None:
        _default_policy = OutboundPolicy()
    return _default_policy


def outbound_policy(app: web.Application) -> OutboundPolicy:
    """The application's policy (set from the settings by the composition root, server/app.py);
    the built-in policy for an app built without one."""
    policy = app.get(OUTBOUND_POLICY_KEY)
    if policy is None:
        policy = default_policy()
        with warnings.catch_warnings():
            # first use may come after start-up (app frozen); caching one value there is harmless
            warnings.simplefilter("ignore", DeprecationWarning)
            app[OUTBOUND_POLICY_KEY] = policy
    return policy


async def check_spec_urls(policy: OutboundPolicy, spec: Any) -> None:
    """Check every caller-given URL of a stream start spec; raises OutboundDenied on the first refused."""
    for name in SPEC_URL_FIELDS:
        url = getattr(spec, name, None)
        if url:
            await policy.check_url(url, what=name)
