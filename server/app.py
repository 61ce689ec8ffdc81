"""The aiohttp application factory: the composition root of the whole server."""

from __future__ import annotations

import logging

from aiohttp import web

from byoc.metrics import livepeer_metrics
from byoc.mount import mount_capability_fallback, mount_livepeer
from httpapi.outbound import OUTBOUND_POLICY_KEY, OutboundPolicy
from media.manager import STREAMS_KEY, StreamManager
from media.outputs.runner import outputs_metrics
from server import routes_events, routes_streams, routes_system
from server.access import VIEWER_TOKENS_KEY, ViewerTokens, install_access, install_log_redaction
from server.errors import error_middleware
from server.features import install_features
from server.keys import HEALTH_DETAILS_KEY, HEALTH_PROBES_KEY, METRICS_KEY, STREAM_SERVICE_KEY, TRICKLE_KEY
from server.metrics import Metrics
from server.openapi import mount_openapi
from server.pipeline import StreamFactory
from server.routes_webrtc import add_webrtc_routes
from server.self_trust import SELF_TRUST_KEY, install_self_trust
from server.settings import SETTINGS_KEY, Settings
from server.stream_service import StreamService
from server.trickle_metrics import trickle_metrics
from trickle.server import TrickleServer

log = logging.getLogger(__name__)

TRICKLE_PREFIX = "/ai/trickle/"


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or Settings()
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[error_middleware])
    app[SETTINGS_KEY] = settings
    manager = StreamManager(settings.max_streams)
    app[STREAMS_KEY] = manager
    metrics = Metrics(manager)
    app[METRICS_KEY] = metrics
    outbound = OutboundPolicy.from_settings(settings)  # every URL a caller gives (README "Security")
    app[OUTBOUND_POLICY_KEY] = outbound
    factory = StreamFactory(settings, on_frame_latency=metrics.frame_latency.observe, outbound=outbound)
    # the one way streams start and stop (routes, WebRTC, byoc); features add their params checks,
    # stage providers (`service.factory`) and start hooks to it
    viewer_tokens = ViewerTokens()
    app[VIEWER_TOKENS_KEY] = viewer_tokens
    streams = StreamService(manager, factory, metrics, outbound, viewer_tokens)
    app[STREAM_SERVICE_KEY] = streams
    streams.params.add("outputs", factory.check_outputs)  # params.outputs: RTMP, HLS (media/outputs)
    metrics.add_source(lambda: outputs_metrics(manager.active()))
    # each returns "OK" | "LOADING" | "ERROR" for /health
    app[HEALTH_PROBES_KEY] = []
    # extra sections of the /health body: name → callable returning a JSON-able value
    app[HEALTH_DETAILS_KEY] = {}

    trickle = TrickleServer(
        autocreate=settings.trickle_autocreate,
        idle_timeout=settings.trickle_idle_timeout,
        max_segment_bytes=settings.trickle_max_segment_bytes,
        max_channels=settings.trickle_max_channels,
        max_total_bytes=settings.trickle_max_total_bytes,
        body_timeout=settings.trickle_body_timeout,
        max_subscribers_per_channel=settings.trickle_max_subscribers_per_channel,
        max_subscribers=settings.trickle_max_subscribers,
    )
    app[TRICKLE_KEY] = trickle
    metrics.add_source(lambda: trickle_metrics(trickle))
    # streams stop before the trickle server closes its channels
    app.on_shutdown.append(_stop_streams)
    trickle.add_routes(app, prefix=TRICKLE_PREFIX)

    routes_streams.routes.mount(app)
    routes_system.routes.mount(app)
    routes_events.mount_event_routes(app)
    # Livepeer worker: BYOC/ai-runner routes, stream side channels, capability registration.
    # Before the features, so they can add batch capabilities to app[CAPABILITIES_KEY].
    livepeer = mount_livepeer(app, manager=manager, settings=settings, streams=streams)
    metrics.add_source(lambda: livepeer_metrics(livepeer))
    if livepeer.registrar is not None:
        app[HEALTH_DETAILS_KEY]["livepeer"] = livepeer.health_detail
    # innermost middleware: every declared route's role, content type, body limits (server/access.py)
    install_access(app)
    # the server's own trickle clients reach its trickle routes whatever tokens are set (never another host)
    install_self_trust(app, TRICKLE_PREFIX)
    install_features(app, settings)
    add_webrtc_routes(app)  # /offer, WHIP, WHEP, demo pages; its shutdown runs after _stop_streams
    mount_openapi(app)  # /openapi.json and /docs, from every declaration above
    mount_capability_fallback(app)  # POST /{capability}: last, so it shadows no named route
    install_log_redaction()
    return app


async def _stop_streams(app: web.Application) -> None:
    await app[STREAMS_KEY].stop_all("server shutting down")


def make_runner(app: web.Application, settings: Settings, shutdown_timeout: float = 30.0) -> web.AppRunner:
    """The app's runner. aiohttp's keep-alive timer also runs from the moment a connection opens
    until its first request head is complete, so it bounds slow-header clients as well as idle
    keep-alive connections: both get HEADER_READ_TIMEOUT. Its listening sockets are what the app's
    self trust (server/self_trust.py) calls this server."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, keepalive_timeout=settings.header_read_timeout)
    if SELF_TRUST_KEY in app:
        app[SELF_TRUST_KEY].bind(runner)
    return runner
