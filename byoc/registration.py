"""Registering this worker as a BYOC capability with a Livepeer orchestrator (go-livepeer's `byoc`).

`POST {orch}/capability/register` with header `Authorization: <orchestrator secret>` (the raw
secret, not Bearer) and body `{name, description, url, capacity, price_per_unit, price_scaling,
currency, token}`; the orchestrator answers 200 `ok`. `POST {orch}/capability/unregister` with the
same header and the raw capability name as body removes it.

- Start-up never waits on the orchestrator: registration runs in a background task, retrying with
  exponential backoff for `fast_attempts` tries, then every `slow_interval` seconds until it works.
- The orchestrator forgets capabilities when it restarts and deregisters one whose worker answers
  401; `request_reregister()` (called after this worker sent a 401) and the optional
  `refresh_interval` register again. Re-registering a name replaces the entry.
- TLS is verified (httpapi/outbound.py `TlsPolicy`: system CAs plus TLS_CA_FILE); an orchestrator
  with a self-signed certificate must be listed in TLS_INSECURE_HOSTS. The secret goes only to a
  verified HTTPS host, a listed host, or plain http on loopback; any other URL is refused before
  a connection is opened (state `refused`, logged without the secret).
- The secret is never logged: only the orchestrator URL, the capability name and status codes are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from httpapi.outbound import TlsPolicy, client_session
from inference.resilience import RetryPolicy

log = logging.getLogger(__name__)

REGISTER_PATH = "/capability/register"
UNREGISTER_PATH = "/capability/unregister"
# A 401 this worker sent triggers at most one re-registration per this many seconds.
REREGISTER_DEBOUNCE_S = 30.0


@dataclass(frozen=True)
class CapabilityRegistration:
    name: str
    url: str
    description: str = ""
    capacity: int = 1
    price_per_unit: int = 0  # go-livepeer decodes int64
    price_scaling: int = 1
    currency: str = "wei"
    token: str = ""  # the orchestrator sends `Authorization: Bearer <token>` to the worker

    def body(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RetryPlan:
    initial_delay: float = 1.0
    max_delay: float = 30.0
    fast_attempts: int = 6
    slow_interval: float = 60.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if attempt < self.fast_attempts:
            # the capped exponential backoff of every remote call (inference/resilience.py), unjittered
            backoff = RetryPolicy(base_delay=self.initial_delay, max_delay=self.max_delay, jitter=0.0)
            return backoff.delay(attempt - 1)
        return self.slow_interval


def normalize_orch_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "https://" + url  # orchestrators serve HTTPS (self-signed) on their service port
    return url


class OrchestratorRegistrar:
    def __init__(
        self,
        orch_url: str,
        secret: str,
        registration: CapabilityRegistration,
        *,
        retry: RetryPlan | None = None,
        request_timeout: float = 10.0,
        refresh_interval: float = 0.0,
        tls: TlsPolicy | None = None,
    ) -> None:
        if not secret:
            raise ValueError("the orchestrator secret is empty")
        self.orch_url = normalize_orch_url(orch_url)
        self.tls = tls or TlsPolicy()
        # why the secret must not go to this URL (None: it may); checked before every request
        self.refusal = self.tls.secret_refusal(self.orch_url)
        self._secret = secret
        self.registration = registration
        self.retry = retry or RetryPlan()
        self.request_timeout = request_timeout
        self.refresh_interval = refresh_interval
        self.state = "idle"  # idle | registering | registered | retrying | refused | stopped
        self.attempts = 0
        self.registrations = 0
        self.last_error: str | None = None
        self.registered_at: float | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None
        self._again = asyncio.Event()
        self._last_reregister_request = float("-inf")

    def __repr__(self) -> str:  # never shows the secret
        return (
            f"OrchestratorRegistrar(orch_url={self.orch_url!r}, name={self.registration.name!r}, state={self.state!r})"
        )

    def _headers(self, content_type: str) -> dict[str, str]:
        return {"Authorization": self._secret, "Content-Type": content_type}

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # an operator-configured endpoint: verified TLS, no address rules
            self._session = client_session(self.tls, timeout=aiohttp.ClientTimeout(total=self.request_timeout))
        return self._session

    # -- one request ----------------------------------------------------------------------------
    async def register_once(self) -> bool:
        self.attempts += 1
        if self._refused():
            return False
        url = self.orch_url + REGISTER_PATH
        try:
            async with self._get_session().post(
                url, json=self.registration.body(), headers=self._headers("application/json"), ssl=self.tls.ssl_for(url)
            ) as response:
                text = (await response.content.read(256)).decode("utf-8", "replace").strip()
                if response.status == 200:
                    self.registrations += 1
                    self.registered_at = time.time()
                    self.last_error = None
                    log.info(
                        "registered capability %r (url=%s, capacity=%d) with orchestrator %s",
                        self.registration.name,
                        self.registration.url,
                        self.registration.capacity,
                        self.orch_url,
                    )
                    return True
                self.last_error = f"status {response.status}: {text}"
        except aiohttp.ClientConnectorCertificateError as exc:
            self.last_error = (
                f"certificate of {self.orch_url} not verified ({exc.certificate_error}); set "
                "TLS_CA_FILE to its CA, or list the host in TLS_INSECURE_HOSTS"
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
        log.warning(
            "registering capability %r with orchestrator %s failed (attempt %d): %s",
            self.registration.name,
            self.orch_url,
            self.attempts,
            self.last_error,
        )
        return False

    def _refused(self) -> bool:
        if self.refusal is None:
            return False
        self.state = "refused"
        self.last_error = f"ORCH_SECRET not sent: {self.refusal}"
        return True

    async def unregister(self) -> bool:
        if self._refused():
            return False
        url = self.orch_url + UNREGISTER_PATH
        try:
            async with self._get_session().post(
                url,
                data=self.registration.name.encode(),
                headers=self._headers("text/plain"),
                ssl=self.tls.ssl_for(url),
            ) as response:
                ok = response.status == 200
                log.info(
                    "unregistered capability %r from orchestrator %s: status %d",
                    self.registration.name,
                    self.orch_url,
                    response.status,
                )
                return ok
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning(
                "unregistering capability %r from orchestrator %s failed: %s",
                self.registration.name,
                self.orch_url,
                exc,
            )
            return False

    # -- background loop ------------------------------------------------------------------------
    async def _register_until_done(self) -> None:
        failures = 0
        while True:
            self.state = "registering" if failures == 0 else "retrying"
            if await self.register_once():
                self.state = "registered"
                return
            failures += 1
            self.state = "retrying"
            delay = self.retry.delay(failures)
            try:  # a re-registration request cuts the wait short
                await asyncio.wait_for(self._again.wait(), delay)
                self._again.clear()
            except TimeoutError:
                pass

    async def _run(self) -> None:
        while True:
            await self._register_until_done()
            timeout = self.refresh_interval if self.refresh_interval > 0 else None
            try:
                await asyncio.wait_for(self._again.wait(), timeout)
            except TimeoutError:
                pass
            self._again.clear()

    def start(self) -> None:
        if self._refused():
            log.error(
                "not registering capability %r with orchestrator %s: %s",
                self.registration.name,
                self.orch_url,
                self.last_error,
            )
            return
        if self._task is None:
            log.info(
                "registering capability %r at orchestrator %s in the background", self.registration.name, self.orch_url
            )
            self._task = asyncio.create_task(self._run(), name="byoc-registration")

    def request_reregister(self, reason: str) -> None:
        """Register again soon (debounced): e.g. after answering the orchestrator with 401."""
        now = time.monotonic()
        if now - self._last_reregister_request < REREGISTER_DEBOUNCE_S:
            return
        self._last_reregister_request = now
        log.info("re-registering capability %r: %s", self.registration.name, reason)
        self._again.set()

    async def stop(self, unregister: bool = True) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if unregister and self.registrations:
            await self.unregister()
        self.state = "stopped"
        if self._session is not None:
            await self._session.close()
            self._session = None

    def snapshot(self) -> dict[str, Any]:
        """For /health: never includes the secret or the token."""
        return {
            "orchestrator": self.orch_url,
            "capability": self.registration.name,
            "state": self.state,
            "attempts": self.attempts,
            "registrations": self.registrations,
            "last_error": self.last_error,
        }
