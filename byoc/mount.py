"""`mount_livepeer(app, ...)`: everything that makes streamlens a Livepeer worker, on one app.

- routes (byoc/routes.py; the bare `POST /{capability}` path the orchestrator forwards to when
  the registered URL is the server root is mounted last, by `mount_capability_fallback`) and a
  middleware that turns `LivepeerHTTPError` into JSON errors and asks for re-registration after
  a 401;
- a stream start hook attaching the events/control/data channels (byoc/channels.py);
- capability registration with the orchestrator when ORCH_URL and ORCH_SECRET are set.

`byoc` never imports `server`: the app's stream manager, its settings and the stream service
(`StreamStarter`: starts streams, runs start hooks) are handed in.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

from aiohttp import web

from byoc.capabilities import CAPABILITIES_KEY, CapabilityRegistry, default_registry
from byoc.channels import ChannelConfig, ChannelRegistry
from byoc.registration import CapabilityRegistration, OrchestratorRegistrar, RetryPlan
from byoc.routes import capability_fallback, routes
from byoc.service import LIVEPEER_KEY, LivepeerService, StreamStarter
from httpapi.outbound import OutboundPolicy, TlsPolicy, outbound_policy

if TYPE_CHECKING:  # the type only: byoc never imports server at run time
    from server.settings import Settings

log = logging.getLogger(__name__)

KNOWN_CURRENCIES = ("wei", "eth")


def _plain(secret: Any) -> str | None:
    """A secret setting's text (`server.settings.secret_value`, which byoc cannot import)."""
    return (secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret) or None


def channel_config(settings: Settings, policy: OutboundPolicy | None = None) -> ChannelConfig:
    return ChannelConfig(
        policy=policy,
        pipeline=settings.pipeline_name,
        events_interval=settings.events_interval,
        error_min_interval=settings.events_error_min_interval,
        data_flush_interval=settings.data_flush_interval,
        data_keepalive_interval=settings.data_keepalive_interval,
        stop_on_control_end=settings.control_end_stops_stream,
    )


def build_registrar(settings: Settings, tls: TlsPolicy | None = None) -> OrchestratorRegistrar | None:
    """A registrar when both ORCH_URL and ORCH_SECRET are set, else None."""
    orch_url = settings.orch_url
    secret = _plain(settings.orch_secret)
    if not orch_url or not secret:
        if orch_url or secret:
            log.warning("capability registration needs both ORCH_URL and ORCH_SECRET; not registering")
        return None
    url = settings.capability_url
    if not url:
        url = f"http://{socket.gethostname()}:{settings.port}"
        log.warning("CAPABILITY_URL is not set; registering %s (set it to the address the orchestrator can reach)", url)
    auth_token = _plain(settings.auth_token)
    token = _plain(settings.capability_token) or auth_token or ""
    if auth_token and token != auth_token:
        log.warning(
            "CAPABILITY_TOKEN differs from AUTH_TOKEN: the orchestrator will send CAPABILITY_TOKEN "
            "and this worker will answer 401 (set them equal, or leave CAPABILITY_TOKEN unset)"
        )
    currency = settings.capability_currency or "wei"
    if currency.lower() not in KNOWN_CURRENCIES:
        log.warning("capability currency %r needs a price feed on the orchestrator (without one it fails)", currency)
    capacity = settings.capability_capacity or settings.max_streams
    registration = CapabilityRegistration(
        name=settings.capability_name,
        url=url.rstrip("/"),
        description=settings.capability_description,
        capacity=int(capacity),
        price_per_unit=settings.capability_price_per_unit,
        price_scaling=settings.capability_price_scaling,
        currency=currency,
        token=token,
    )
    retry = RetryPlan(
        initial_delay=settings.register_retry_initial_delay,
        max_delay=settings.register_retry_max_delay,
        fast_attempts=settings.register_retry_attempts,
        slow_interval=settings.register_retry_slow_interval,
    )
    return OrchestratorRegistrar(
        orch_url,
        secret,
        registration,
        retry=retry,
        request_timeout=settings.register_timeout,
        refresh_interval=settings.register_refresh_interval,
        tls=tls or TlsPolicy.from_settings(settings),
    )


def mount_livepeer(
    app: web.Application,
    *,
    manager: Any,
    settings: Settings,
    streams: StreamStarter,
    capabilities: CapabilityRegistry | None = None,
) -> LivepeerService:
    policy = outbound_policy(app)  # caller-given channel URLs, and TLS for the orchestrator
    channels = ChannelRegistry(channel_config(settings, policy))
    registrar = build_registrar(settings, policy.tls)
    service = LivepeerService(
        manager=manager,
        settings=settings,
        streams=streams,
        capabilities=capabilities or default_registry(),
        channels=channels,
        registrar=registrar,
    )
    app[LIVEPEER_KEY] = service
    app[CAPABILITIES_KEY] = service.capabilities  # features add their batch capabilities here
    streams.add_start_hook(channels.on_stream_built)
    app.middlewares.append(service.middleware)
    routes.mount(app)
    # its metrics source and /health section are added by the composition root (server/app.py)
    if registrar is not None:

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
