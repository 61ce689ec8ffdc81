"""BYOC batch capabilities: a registry of named request handlers (`POST /process/request/{name}`).

Features add theirs with `registry.register(name, handler, description)`; a handler is
`async (body: dict, ctx: CapabilityContext) -> dict | web.Response`. A dict becomes a JSON 200.
Raise `CapabilityError(status, message)` for a clean 4xx/5xx; a pydantic `ValidationError` is a 400.
A caller-given URL that could not be fetched is `url_fetch_error(detail)`: one answer whatever the
host behind it did (the detail goes to the server log only).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from byoc.livepeer_header import LivepeerHeader
from httpapi.errors import ApiError

log = logging.getLogger(__name__)

CAPABILITY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_CAPABILITIES = 64
URL_FETCH_FAILED = "url_fetch_failed"  # the stable error code of `url_fetch_error`
URL_FETCH_MESSAGE = "the URL could not be fetched"


@dataclass
class CapabilityContext:
    """What a handler may need beyond the JSON body."""

    name: str
    request: web.Request
    header: LivepeerHeader | None
    timeout: float
    raw_body: bytes

    @property
    def app(self) -> web.Application:
        return self.request.app


CapabilityHandler = Callable[[dict[str, Any], CapabilityContext], Awaitable[dict[str, Any] | web.StreamResponse]]


class CapabilityError(ApiError):
    """The one edge error (`httpapi.errors.ApiError`) for batch handlers: `message` (and `code`)
    go to the caller, `detail` only to the server log."""

    def __init__(self, status: int, message: str, *, code: str | None = None, detail: str | None = None) -> None:
        super().__init__(status, message, code=code)
        self.detail = detail


def url_fetch_error(detail: str) -> CapabilityError:
    """A caller-given URL could not be fetched. Refused, timed out, an HTTP error or redirect, a body
    over the cap: the caller gets the same 400 for all of them, so the batch route cannot be used to
    learn what answers at a loopback or private address; `detail` says which, in the server log."""
    return CapabilityError(400, URL_FETCH_MESSAGE, code=URL_FETCH_FAILED, detail=detail)


@dataclass(frozen=True)
class Capability:
    name: str
    handler: CapabilityHandler
    description: str = ""
    # False: the body is not parsed as JSON (e.g. audio bytes); the handler reads ctx.raw_body
    json_body: bool = True


class CapabilityRegistry:
    """Named batch capabilities; bounded (MAX_CAPABILITIES) like everything else."""

    def __init__(self) -> None:
        self._items: dict[str, Capability] = {}

    def register(
        self,
        name: str,
        handler: CapabilityHandler,
        description: str = "",
        *,
        json_body: bool = True,
        replace: bool = False,
    ) -> Capability:
        if not CAPABILITY_NAME_RE.fullmatch(name):
            raise ValueError(f"invalid capability name {name!r} (letters, digits, '.', '_', '-'; ≤ 64)")
        if name in self._items and not replace:
            raise ValueError(f"capability {name!r} is already registered")
        if name not in self._items and len(self._items) >= MAX_CAPABILITIES:
            raise ValueError(f"too many capabilities (max {MAX_CAPABILITIES})")
        capability = Capability(name, handler, description, json_body)
        self._items[name] = capability
        log.info("batch capability registered: %s", name)
        return capability

    def unregister(self, name: str) -> bool:
        return self._items.pop(name, None) is not None

    def get(self, name: str) -> Capability | None:
        return self._items.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)

    def describe(self) -> list[dict[str, str]]:
        items = sorted(self._items.values(), key=lambda c: c.name)
        return [{"name": c.name, "description": c.description} for c in items]


# -- text-reversal: the BYOC documentation's example capability ------------------------------------
class TextReversalRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: str = Field(..., max_length=1_000_000)


async def text_reversal(body: dict[str, Any], ctx: CapabilityContext) -> dict[str, Any]:
    req = TextReversalRequest.model_validate(body)
    return {"original": req.text, "reversed": req.text[::-1]}


def default_registry() -> CapabilityRegistry:
    registry = CapabilityRegistry()
    registry.register("text-reversal", text_reversal, "Reverses the characters of `text` (BYOC example)")
    return registry


# the batch capabilities (`POST /process/request/{capability}`); features add theirs
CAPABILITIES_KEY = web.AppKey("capabilities", CapabilityRegistry)
