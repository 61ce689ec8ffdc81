"""`mount_livepeer(app, ...)`: everything that makes streamlens a Livepeer worker, on one app.

- routes (byoc/routes.py; the bare `POST /{capability}` path the orchestrator forwards to when
  the registered URL is the server root is mounted last, by `mount_capability_fallback`) and a
  middleware that turns `LivepeerHTTPError` into JSON errors and asks for re-registration after
  a 401;
- a stream start hook attaching the events/control/data channels (byoc/channels.py);
- capability registration with the orchestrator when ORCH_URL and ORCH_SECRET are set.

`byoc` never imports `server`: the app's stream manager, its settings and the shared
`/stream/start` handler are handed in.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from byoc.capabilities import CapabilityRegistry, default_registry
from byoc.channels import ChannelConfig, ChannelRegistry
from byoc.http import LivepeerHTTPError
from byoc.metrics import CapabilityCounter, livepeer_metrics
from byoc.registration import CapabilityRegistration, OrchestratorRegistrar, RetryPlan
from byoc.routes import capability_fallback, routes
from media.outbound import OutboundPolicy, TlsPolicy, outbound_policy

log = logging.getLogger(__name__)

# (app, body, stream id) → the response of the server's shared `/stream/start`
StartHandler = Callable[[web.Application, dict[str, Any], str | None], Awaitable[web.StreamResponse]]

# Paths whose 401 answers make the orchestrator drop this capability (so: register again).
LIVEPEER_PATH_PREFIXES = ("/stream/", "/live-video-to-video", "/process/")
KNOWN_CURRENCIES = ("wei", "eth")


def secret_value(value: Any) -> str | None:
    """A setting that may be a pydantic SecretStr, a plain str, or unset."""
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    text = getter() if getter is not None else str(value)
    return text or None


class LivepeerService:
    """What the Livepeer routes need, kept on `app["livepeer"]`."""

    def __init__(
        self,
        *,
        manager: Any,
        settings: Any,
        start_handler: StartHandler,
        capabilities: CapabilityRegistry,
        channels: ChannelRegistry,
        registrar: OrchestratorRegistrar | None,
    ) -> None:
        self.manager = manager
        self.settings = settings
        self.start_handler = start_handler
        self.capabilities = capabilities
        self.channels = channels
        self.registrar = registrar
        self.capability_counter = CapabilityCounter()

    @property
    def batch_timeout(self) -> float:
        return float(getattr(self.settings, "capability_default_timeout", 60.0))

    def note_unauthorized(self, request: web.Request) -> None:
        if self.registrar is not None and request.path.startswith(LIVEPEER_PATH_PREFIXES):
            self.registrar.request_reregister(f"answered 401 on {request.method} {request.path}")

    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except LivepeerHTTPError as exc:
            if exc.status == 401:
                self.note_unauthorized(request)
            return exc.response()
        except web.HTTPUnauthorized:
            self.note_unauthorized(request)
            raise

    def health_detail(self) -> dict[str, Any]:
        return {"registration": self.registrar.snapshot() if self.registrar else None, "channels": len(self.channels)}


def channel_config(settings: Any, policy: OutboundPolicy | None = None) -> ChannelConfig:
    return ChannelConfig(
        policy=policy,
        pipeline=settings.pipeline_name,
        events_interval=float(getattr(settings, "events_interval", 10.0)),
        error_min_interval=float(getattr(settings, "events_error_min_interval", 1.0)),
        data_flush_interval=float(getattr(settings, "data_flush_interval", 0.333)),
        data_keepalive_interval=float(getattr(settings, "data_keepalive_interval", 25.0)),
        stop_on_control_end=bool(getattr(settings, "control_end_stops_stream", True)),
    )


def build_registrar(settings: Any, tls: TlsPolicy | None = None) -> OrchestratorRegistrar | None:
    """A registrar when both ORCH_URL and ORCH_SECRET are set, else None."""
    orch_url = getattr(settings, "orch_url", None)
    secret = secret_value(getattr(settings, "orch_secret", None))
    if not orch_url or not secret:
        if orch_url or secret:
            log.warning("capability registration needs both ORCH_URL and ORCH_SECRET; not registering")
        return None
    url = getattr(settings, "capability_url", None)
    if not url:
        url = f"http://{socket.gethostname()}:{settings.port}"
        log.warning("CAPABILITY_URL is not set; registering %s (set it to the address the orchestrator can reach)", url)
    auth_token = secret_value(getattr(settings, "auth_token", None))
    token = secret_value(getattr(settings, "capability_token", None)) or auth_token or ""
    if auth_token and token != auth_token:
        log.warning(
            "CAPABILITY_TOKEN differs from AUTH_TOKEN: the orchestrator will send CAPABILITY_TOKEN "
            "and this worker will answer 401 (set them equal, or leave CAPABILITY_TOKEN unset)"
        )
    currency = getattr(settings, "capability_currency", "wei") or "wei"
    if currency.lower() not in KNOWN_CURRENCIES:
        log.warning("capability currency %r needs a price feed on the orchestrator (without one it fails)", currency)
    capacity = getattr(settings, "capability_capacity", None) or settings.max_streams
    registration = CapabilityRegistration(
        name=settings.capability_name,
        url=url.rstrip("/"),
        description=getattr(settings, "capability_description", "") or "",
        capacity=int(capacity),
        price_per_unit=int(getattr(settings, "capability_price_per_unit", 0)),
        price_scaling=int(getattr(settings, "capability_price_scaling", 1)),
        currency=currency,
        token=token,
    )
    retry = RetryPlan(
        initial_delay=float(getattr(settings, "register_retry_initial_delay", 1.0)),
        max_delay=float(getattr(settings, "register_retry_max_delay", 30.0)),
        fast_attempts=int(getattr(settings, "register_retry_attempts", 6)),
        slow_interval=float(getattr(settings, "register_retry_slow_interval", 60.0)),
    )
    return OrchestratorRegistrar(
        orch_url,
        secret,
        registration,
        retry=retry,
        request_timeout=float(getattr(settings, "register_timeout", 10.0)),
        refresh_interval=float(getattr(settings, "register_refresh_interval", 0.0)),
        tls=tls or TlsPolicy.from_settings(settings),
    )


def mount_livepeer(
    app: web.Application,
    *,
    manager: Any,
    settings: Any,
    start_handler: StartHandler,
    capabilities: CapabilityRegistry | None = None,
) -> LivepeerService:
    policy = outbound_policy(app)  # caller-given channel URLs, and TLS for the orchestrator
    channels = ChannelRegistry(channel_config(settings, policy))
    registrar = build_registrar(settings, policy.tls)
    service = LivepeerService(
        manager=manager,
        settings=settings,
        start_handler=start_handler,
        capabilities=capabilities or default_registry(),
        channels=channels,
        registrar=registrar,
    )
    app["livepeer"] = service
    app["capabilities"] = service.capabilities  # features add their batch capabilities here
    app["stream_start_hooks"].append(channels.on_stream_built)
    app.middlewares.append(service.middleware)
    routes.mount(app)
    metrics = app.get("metrics")
    if metrics is not None and hasattr(metrics, "add_source"):
        metrics.add_source(lambda: livepeer_metrics(service))
    if registrar is not None:
        app["health_details"]["livepeer"] = service.health_detail

        async def start_registration(_app: web.Application) -> None:
            registrar.start()

        async def stop_registration(_app: web.Application) -> None:
            await registrar.stop(unregister=True)

        app.on_startup.append(start_registration)
        # unregister first on shutdown, so the orchestrator stops routing work here at once
        app.on_shutdown.insert(0, stop_registration)
    return service


def mount_capability_fallback(app: web.Application) -> None:
    """`POST /{capability}`: after every other route, so it never shadows a named one."""
    capability_fallback.mount(app)
