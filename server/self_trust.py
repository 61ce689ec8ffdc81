"""The server trusts itself, nobody else: its own trickle clients (a stream's subscriber and
publisher, the Livepeer control/events/data channels) reach its built-in trickle server however
tokens are set.

Each app draws a random token (never logged, never in an answer) that the access policy accepts
for the trickle role only. The trickle clients present it (trickle/client.py asks
`bearer_for(url)` before each request, redirects are never followed) only to a URL that is this
server's own trickle route:

- http or https, path under the trickle prefix (no `.`/`..` segments);
- the port of one of this server's listening sockets (known once `make_runner`'s runner listens);
- a host that can only mean an address that socket receives: the address it is bound to, or a
  loopback address of the same family when it is bound to the wildcard; a host name (`localhost`,
  the configured listen host) counts when every address it resolved to at start-up does.

Every other URL (a caller's, another server on this machine, a name that could resolve elsewhere)
gets no token, and a request from anyone else still needs the configured TRICKLE_TOKEN.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
from urllib.parse import urlsplit

from aiohttp import web

from httpapi.outbound import outbound_policy
from httpapi.routes import Role
from server.access import POLICY_KEY
from server.settings import SETTINGS_KEY
from trickle.client import set_bearer_source

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# How long resolving `localhost` and the listen host at start-up may take.
RESOLVE_TIMEOUT_S = 5.0


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _receives(bound: IPAddress, address: IPAddress) -> bool:
    """Whether a socket bound to `bound` is where a connection to `address` arrives. asyncio binds
    IPv6 sockets IPV6_V6ONLY, so a wildcard covers loopback of its own family only."""
    if bound == address:
        return True
    return bound.is_unspecified and address.is_loopback and bound.version == address.version


class SelfTrust:
    """The app's own trickle credential, and the test of which URLs may carry it."""

    def __init__(self, listen_host: str | None, prefix: str) -> None:
        self._token = secrets.token_urlsafe(32)
        self.prefix = prefix
        self._names = {"localhost", (listen_host or "").strip().lower().rstrip(".")} - {""}
        self._resolved: dict[str, frozenset[IPAddress]] = {}  # name → its addresses (start-up)
        self._runner: web.BaseRunner | None = None

    def __repr__(self) -> str:  # never the token
        return f"SelfTrust(prefix={self.prefix!r}, listening={self.listening()!r})"

    def install(self, app: web.Application) -> None:
        """Accept the token for the trickle role and have the app's trickle clients present it."""
        app[POLICY_KEY].internal_tokens[Role.TRICKLE] = self._token
        policy = outbound_policy(app)
        set_bearer_source(policy, self.bearer_for)
        app.on_startup.append(self._resolve_names)

        async def stop_presenting(_app: web.Application) -> None:
            set_bearer_source(policy, None)
            self._runner = None

        app.on_cleanup.append(stop_presenting)

    def bind(self, runner: web.BaseRunner) -> None:
        """The runner whose listening sockets are this server's (see server.app.make_runner)."""
        self._runner = runner

    async def _resolve_names(self, _app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        for name in self._names:
            if _address(name) is not None:
                continue  # a literal needs no lookup
            try:
                async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                    infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
            except (OSError, TimeoutError) as exc:
                log.info("self trust: %s does not resolve (%s); URLs naming it get no token", name, exc)
                continue
            addresses = {_address(str(info[4][0])) for info in infos}
            self._resolved[name] = frozenset(a for a in addresses if a is not None)

    def listening(self) -> list[tuple[IPAddress, int]]:
        """(address, port) of every listening TCP socket of the bound runner."""
        if self._runner is None:
            return []
        found = []
        for sockname in self._runner.addresses:
            if isinstance(sockname, tuple) and len(sockname) >= 2:
                address = _address(str(sockname[0]))
                if address is not None:
                    found.append((address, int(sockname[1])))
        return found

    def is_own_trickle_url(self, url: str) -> bool:
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.path.startswith(self.prefix):
            return False
        if any(segment in (".", "..") for segment in parts.path.split("/")):
            return False
        host = (parts.hostname or "").rstrip(".").lower()
        literal = _address(host)
        addresses = {literal} if literal is not None else self._resolved.get(host, frozenset())
        if not addresses:
            return False
        sockets = [bound for bound, bound_port in self.listening() if bound_port == port]
        return all(any(_receives(bound, address) for bound in sockets) for address in addresses)

    def bearer_for(self, url: str) -> str | None:
        return self._token if self.is_own_trickle_url(url) else None


SELF_TRUST_KEY = web.AppKey("self_trust", SelfTrust)


def install_self_trust(app: web.Application, prefix: str) -> SelfTrust:
    """After `install_access`: the app's own trickle clients are let into its trickle routes."""
    trust = SelfTrust(app[SETTINGS_KEY].host, prefix)
    app[SELF_TRUST_KEY] = trust
    trust.install(app)
    return trust
