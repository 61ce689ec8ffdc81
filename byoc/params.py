"""Params updates from Livepeer: body normalisation and coalesced application.

Each update is a JSON merge patch (RFC 7396) of the stream's params (`Stream.update_params`).
ai-runner applies only the newest params (PR #666) so a burst never queues up work; here updates
that arrive while one is being applied are composed into the single pending patch
(`media.params.compose_patches`), so none of their keys is lost and memory never grows however
fast the control channel speaks.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from httpapi.json_body import JSONBodyError, loads_limited
from media.params import compose_patches

log = logging.getLogger(__name__)

# Keys that locate a stream in a `/stream/params` body; never params themselves.
LOCATOR_KEYS = ("manifest_id", "stream_id", "gateway_request_id")


def normalize_params_body(body: dict[str, Any]) -> dict[str, Any]:
    """The params carried by an update body.

    BYOC update bodies are the client's JSON verbatim: the body itself is the params, except that a
    `params` key holding an object (or a JSON string of one, as the gateway API writes it) is taken
    as the params. Locator keys are dropped. Raises ValueError for a `params` that is no object."""
    if "params" in body:
        value = body["params"]
        if isinstance(value, str):
            try:
                value = loads_limited(value) if value.strip() else {}
            except JSONBodyError as exc:
                raise ValueError(f"params is a string but not acceptable JSON: {exc}") from None
        if isinstance(value, dict):
            return value
        raise ValueError("params must be an object")
    return {k: v for k, v in body.items() if k not in LOCATOR_KEYS}


class ParamsApplier:
    """Applies submitted merge patches in a task; a submission while one is pending is composed
    into it (one pending slot)."""

    def __init__(
        self, apply: Callable[[dict[str, Any]], Any], on_error: Callable[[str], None], label: str = ""
    ) -> None:
        self._apply = apply
        self._on_error = on_error
        self._label = label
        self._pending: dict[str, Any] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.received = 0
        self.applied = 0
        self.failed = 0

    @property
    def superseded(self) -> int:
        """Updates composed into a later one before they were applied."""
        pending = 1 if self._pending is not None else 0
        return self.received - self.applied - self.failed - pending

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"params-{self._label}")

    def submit(self, patch: dict[str, Any]) -> None:
        pending = self._pending
        self._pending = patch if pending is None else compose_patches(pending, patch)
        self.received += 1
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            params, self._pending = self._pending, None
            if params is None:
                continue
            try:
                result = self._apply(params)
                if inspect.isawaitable(result):
                    await result
                self.applied += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bad update must not end the loop
                self.failed += 1
                log.warning("[%s] params rejected: %s", self._label, exc)
                self._on_error(f"params rejected: {exc}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def stats(self) -> dict[str, int]:
        return {
            "received": self.received,
            "applied": self.applied,
            "failed": self.failed,
            "superseded": self.superseded,
        }
