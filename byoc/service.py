"""`LivepeerService`: what the Livepeer routes (byoc/routes.py) need, kept on `app[LIVEPEER_KEY]`;
built by `mount_livepeer` (byoc/mount.py). Its own module so routes and mount import it, not each other."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from byoc.capabilities import CapabilityRegistry
from byoc.channels import ChannelRegistry
from byoc.http import LivepeerHTTPError
from byoc.metrics import CapabilityCounter
from byoc.registration import OrchestratorRegistrar
from media.spec import StreamSpec

if TYPE_CHECKING:  # the type only: byoc never imports server at run time
    from server.settings import Settings


class StartedStreamLike(Protocol):
    """What a start gives back (server/stream_service.py's `StartedStream`)."""

    def answer(self) -> dict[str, Any]: ...


class StreamStarter(Protocol):
    """The server's stream service, as byoc uses it (byoc imports no `server` module): start a
    stream from a start body, and add a hook run for every stream before it starts."""

    async def start_body(self, body: Mapping[str, Any], stream_id_header: str | None = None) -> StartedStreamLike: ...

    def add_start_hook(self, hook: Callable[[Any, StreamSpec], None]) -> None: ...


# Paths whose 401 answers make the orchestrator drop this capability (so: register again).
LIVEPEER_PATH_PREFIXES = ("/stream/", "/live-video-to-video", "/process/")


class LivepeerService:
    """What the Livepeer routes need, kept on `app[LIVEPEER_KEY]`."""

    def __init__(
        self,
        *,
        manager: Any,
        settings: Settings,
        streams: StreamStarter,
        capabilities: CapabilityRegistry,
        channels: ChannelRegistry,
        registrar: OrchestratorRegistrar | None,
    ) -> None:
        self.manager = manager
        self.settings = settings
        self.streams = streams
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


# byoc imports no `server` module, so its keys live beside their services
LIVEPEER_KEY = web.AppKey("livepeer", LivepeerService)
