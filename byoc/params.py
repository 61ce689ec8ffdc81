"""Params updates from Livepeer: body normalisation and newest-wins application.

ai-runner applies only the newest params (PR #666): when several updates arrive while one is being
applied, the ones in between are skipped. `ParamsApplier` holds a single pending slot, so memory
never grows however fast the control channel speaks.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Callable
from typing import Any

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
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"params is a string but not JSON: {exc}") from None
        if isinstance(value, dict):
            return value
        raise ValueError("params must be an object")
    return {k: v for k, v in body.items() if k not in LOCATOR_KEYS}


class ParamsApplier:
    """Applies submitted params in a task; a newer submission replaces a pending older one."""

    def __init__(self, apply: Callable[[dict[str, Any]], Any], on_error: Callable[[str], None],
                 label: str = "") -> None:
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
        """Updates skipped because a newer one arrived before they were applied."""
        pending = 1 if self._pending is not None else 0
        return self.received - self.applied - self.failed - pending

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"params-{self._label}")

    def submit(self, params: dict[str, Any]) -> None:
        self._pending = params  # replaces an older pending update: only the newest is applied
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
        return {"received": self.received, "applied": self.applied, "failed": self.failed,
                "superseded": self.superseded}
