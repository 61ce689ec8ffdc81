"""Health, version and Prometheus metrics."""

from __future__ import annotations

from aiohttp import web

from httpapi.routes import Role, RouteTable
from media.manager import STREAMS_KEY
from server import __version__
from server.keys import HEALTH_DETAILS_KEY, HEALTH_PROBES_KEY, METRICS_KEY
from server.metrics import CONTENT_TYPE
from server.settings import SETTINGS_KEY

routes = RouteTable()


def health_status(app: web.Application) -> str:
    """IDLE: can take a stream; OK: streams running (never IDLE then, or Livepeer reclaims the
    worker); LOADING: models still loading; ERROR: cannot serve."""
    for probe in app[HEALTH_PROBES_KEY]:
        state = probe()
        if state in ("ERROR", "LOADING"):
            return state
    if app[STREAMS_KEY].active():
        return "OK"
    ok, _ = app[STREAMS_KEY].can_accept()
    return "IDLE" if ok else "ERROR"


@routes.get(
    "/health", role=Role.PUBLIC, tag="system", summary="IDLE | OK | LOADING | ERROR, streams, capacity, feature details"
)
async def health(request: web.Request) -> web.Response:
    app = request.app
    manager = app[STREAMS_KEY]
    body = {"status": health_status(app), "streams": len(manager.active()), "capacity": manager.capacity}
    for name, describe in app[HEALTH_DETAILS_KEY].items():
        body[name] = describe()
    return web.json_response(body)


@routes.get("/version", role=Role.PUBLIC, tag="system", summary="Pipeline, model id and version (ai-runner shape)")
async def version(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "pipeline": request.app[SETTINGS_KEY].pipeline_name,
            "model_id": request.app[SETTINGS_KEY].model_id,
            "version": __version__,
        }
    )


@routes.get("/metrics", role=Role.METRICS, tag="system", response_type="text/plain", summary="Prometheus metrics")
async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS_KEY].render(), headers={"Content-Type": CONTENT_TYPE})
