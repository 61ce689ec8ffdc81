"""Retries with exponential backoff and jitter, and a circuit breaker, for remote model calls.

Shared by the translation client and the vision (VLM) client so both fail the same way: a few
quick retries on transient errors, then the breaker opens and calls fail fast until a probe
succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class CircuitOpenError(RuntimeError):
    """Raised instead of calling a backend whose breaker is open."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # total tries, the first included
    base_delay: float = 0.2  # seconds before the first retry
    max_delay: float = 5.0
    jitter: float = 0.5  # fraction of the delay randomised (full jitter when 1.0)

    def delay(self, retry_index: int, rng: random.Random | None = None) -> float:
        """Delay before retry number `retry_index` (0-based): base * 2**i, capped, with jitter."""
        roll = rng.random() if rng is not None else random.random()
        raw = min(self.max_delay, self.base_delay * (2**retry_index))
        spread = raw * self.jitter
        return max(0.0, raw - spread + roll * 2 * spread)


async def retry_async(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    on_retry: Callable[[int, BaseException], None] | None = None,
    rng: random.Random | None = None,
) -> T:
    """Run `call` until it succeeds or the policy's attempts are spent; re-raise the last error.
    Errors not in `retry_on` (and CircuitOpenError) are raised at once. An error's `retry_after`
    (a server's 429 hint, seconds) lengthens the wait, within the policy's `max_delay`."""
    last: BaseException | None = None
    for attempt in range(policy.attempts):
        try:
            return await call()
        except CircuitOpenError:
            raise
        except retry_on as exc:
            last = exc
            if attempt + 1 >= policy.attempts:
                break
            if on_retry is not None:
                on_retry(attempt + 1, exc)
            delay = policy.delay(attempt, rng)
            hint = getattr(exc, "retry_after", None)
            if isinstance(hint, (int, float)):
                delay = max(delay, min(float(hint), policy.max_delay))
            await asyncio.sleep(delay)
    assert last is not None
    raise last


class CircuitBreaker:
    """closed → (N consecutive failures) → open → (after `reset_timeout`) → half-open →
    one trial call → closed on success, open again on failure.

    `clock` is injectable so tests can step time without sleeping."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        half_open_max_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.half_open_max_calls = half_open_max_calls
        self._clock = clock
        self._state = self.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._half_open_in_flight = 0
        self.opened_count = 0
        self.rejected_count = 0

    @property
    def state(self) -> str:
        if self._state == self.OPEN and self._clock() - self._opened_at >= self.reset_timeout:
            self._state = self.HALF_OPEN
            self._half_open_in_flight = 0
        return self._state

    def allow(self) -> bool:
        """True when a call may go ahead now (reserves the half-open trial slot)."""
        state = self.state
        if state == self.CLOSED:
            return True
        if state == self.HALF_OPEN and self._half_open_in_flight < self.half_open_max_calls:
            self._half_open_in_flight += 1
            return True
        self.rejected_count += 1
        return False

    def record_success(self) -> None:
        if self._state != self.CLOSED:
            log.info("circuit %s closed", self.name)
        self._state = self.CLOSED
        self._failures = 0
        self._half_open_in_flight = 0

    def record_failure(self) -> None:
        state = self.state
        self._failures += 1
        if state == self.HALF_OPEN or self._failures >= self.failure_threshold:
            if self._state != self.OPEN:
                self.opened_count += 1
                log.warning("circuit %s opened after %d failure(s)", self.name, self._failures)
            self._state = self.OPEN
            self._opened_at = self._clock()
            self._half_open_in_flight = 0

    async def call(self, fn: Callable[[], Awaitable[T]], is_failure: Callable[[Exception], bool] | None = None) -> T:
        """Run `fn` if the breaker allows. An exception counts as a failure unless `is_failure`
        says otherwise (e.g. a "bad request" answer proves the backend is up): then it is
        recorded as a success and still raised."""
        if not self.allow():
            raise CircuitOpenError(f"circuit '{self.name}' is open; backend calls are paused")
        try:
            result = await fn()
        except asyncio.CancelledError:
            if self._state == self.HALF_OPEN:
                self._half_open_in_flight = max(0, self._half_open_in_flight - 1)
            raise
        except Exception as exc:
            if is_failure is None or is_failure(exc):
                self.record_failure()
            else:
                self.record_success()
            raise
        self.record_success()
        return result

    def snapshot(self) -> dict[str, object]:
        return {
            "name": self.name,
            "state": self.state,
            "consecutive_failures": self._failures,
            "opened_count": self.opened_count,
            "rejected_count": self.rejected_count,
        }
