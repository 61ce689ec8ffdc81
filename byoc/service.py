"""`LivepeerService`: what the Livepeer routes (byoc/routes.py) need, kept on `app["livepeer"]`;
built by `mount_livepeer` (byoc/mount.py). Its own module so routes and mount import it, not each other."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from byoc.capabilities import CapabilityRegistry
from byoc.channels import ChannelRegistry
from byoc.http import LivepeerHTTPError
from byoc.metrics import CapabilityCounter
from byoc.registration import OrchestratorRegistrar

if TYPE_CHECKING:  # the type only: byoc never imports server at run time
    from server.settings import Settings

# (app, body, stream id) → the response of the server's shared `/stream/start`
StartHandler = Callable[[web.Application, dict[str, Any], str | None], Awaitable[web.StreamResponse]]

# Paths whose 401 answers make the orchestrator drop this capability (so: register again).
LIVEPEER_PATH_PREFIXES = ("/stream/", "/live-video-to-video", "/process/")


class LivepeerService:
    """What the Livepeer routes need, kept on `app["livepeer"]`."""

    def __init__(
        self,
        *,
        manager: Any,
        settings: Settings,
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
        return self.settings.capability_default_timeout

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
