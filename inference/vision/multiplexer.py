"""`VlmMultiplexer`: one vision backend spread over several OpenAI-compatible VLM endpoints.

Choosing an endpoint for a frame:

1. Primaries (``is_fallback: false``) whose breaker is closed or half-open are put in a weighted
   random order (the first pick is proportional to ``weight``; the rest follow, again by weight).
2. Fallbacks come after every primary, in their own weighted order. So a fallback is only used
   when every primary failed on this frame or is open.
3. Endpoints are tried in that order until one returns a completion. When none does (or all are
   open) ``BackendUnavailable`` is raised; the stage counts it, the API answers 503.

A completion whose content is not readable tags is counted (``malformed``) and returned as an
empty ``VisionResult`` with ``error`` set; the next endpoint is not tried (the model, not the
endpoint, answered badly).

Configuration follows the shape of earlier VLM tagging engines: ``model_id``, ``api_base_url``
(a single endpoint), ``tag_list``, and ``multiplexer_endpoints`` (``base_url, api_key, name, weight,
is_fallback, max_concurrent, timeout``). When ``multiplexer_endpoints`` is empty the single
``api_base_url`` endpoint is used.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from inference.openai_client import Completion, OpenAIClient, OpenAIError
from inference.resilience import CircuitOpenError, RetryPolicy
from inference.vision.base import (
    BackendBusy,
    BackendUnavailable,
    VisionBackend,
    VisionRequest,
    VisionResult,
    check_image,
)
from inference.vision.openai_vlm import (
    MalformedOutput,
    VlmEndpoint,
    VlmEndpointConfig,
    build_messages,
    encode_frame_jpeg,
    jpeg_data_uri,
    parse_tag_output,
)
from media.stats import LatencyWindow

log = logging.getLogger(__name__)


class VlmConfig(BaseModel):
    """Settings of the VLM backend (one endpoint or a multiplexer over several)."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = "default"
    api_base_url: str | None = None
    api_key: str = ""
    tag_list: list[str] = Field(default_factory=list)
    multiplexer_endpoints: list[VlmEndpointConfig] = Field(default_factory=list)
    # defaults for the single `api_base_url` endpoint
    timeout: float = Field(30.0, gt=0)
    max_concurrent: int = Field(4, ge=1, le=1024)
    # request shaping
    max_pixels: int = Field(512 * 512, ge=64 * 64)  # pixel budget: frames are shrunk so w*h <= this
    jpeg_quality: int = Field(85, ge=30, le=100)
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    json_response_format: bool = False  # add response_format={"type":"json_object"} in tags mode
    # resilience
    retry_attempts: int = Field(2, ge=1, le=10)  # per endpoint, first try included
    retry_base_delay: float = Field(0.2, ge=0.0)
    retry_max_delay: float = Field(2.0, ge=0.0)
    retry_jitter: float = Field(0.5, ge=0.0, le=1.0)
    breaker_failure_threshold: int = Field(3, ge=1)
    breaker_reset_timeout: float = Field(15.0, gt=0)
    max_pending: int = Field(32, ge=1)  # frames in flight over all endpoints before BackendBusy

    @model_validator(mode="after")
    def _needs_an_endpoint(self) -> VlmConfig:
        if not self.multiplexer_endpoints and not self.api_base_url:
            raise ValueError("VLM config needs api_base_url or multiplexer_endpoints")
        return self

    def endpoint_configs(self) -> list[VlmEndpointConfig]:
        if self.multiplexer_endpoints:
            return list(self.multiplexer_endpoints)
        assert self.api_base_url
        return [
            VlmEndpointConfig(
                base_url=self.api_base_url,
                api_key=self.api_key,
                name="primary",
                timeout=self.timeout,
                max_concurrent=self.max_concurrent,
            )
        ]

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            attempts=self.retry_attempts,
            base_delay=self.retry_base_delay,
            max_delay=self.retry_max_delay,
            jitter=self.retry_jitter,
        )


def weighted_order(endpoints: list[VlmEndpoint], rng: random.Random) -> list[VlmEndpoint]:
    """A random permutation where each position is drawn proportionally to weight among those
    left (Efraimidis-Spirakis keys): the first element is endpoint i with probability w_i / sum w."""
    keyed = [(rng.random() ** (1.0 / ep.config.weight), index, ep) for index, ep in enumerate(endpoints)]
    keyed.sort(key=lambda item: (item[0], -item[1]), reverse=True)
    return [ep for _key, _index, ep in keyed]


class VlmMultiplexer(VisionBackend):
    """The "vlm" backend. `rng` and `clock` are injectable for reproducible tests."""

    name = "vlm"

    def __init__(
        self,
        config: VlmConfig,
        *,
        rng: random.Random | None = None,
        clock: Any = time.monotonic,
        client: OpenAIClient | None = None,
        ssl_for: Any = None,
    ) -> None:
        self.config = config
        self.model = config.model_id
        self._rng = rng or random.Random()
        # ssl_for(url): the server's TLS choice per endpoint (TLS_CA_FILE, TLS_INSECURE_HOSTS)
        self.client = client or OpenAIClient(ssl_for=ssl_for)
        self.retry = config.retry_policy()
        self.endpoints = [
            VlmEndpoint(
                ep,
                failure_threshold=config.breaker_failure_threshold,
                reset_timeout=config.breaker_reset_timeout,
                clock=clock,
            )
            for ep in config.endpoint_configs()
        ]
        names = [ep.name for ep in self.endpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"VLM endpoint names must be unique: {names}")
        self._pending = 0
        self.calls = 0
        self.malformed = 0
        self.unavailable = 0
        self.busy_rejections = 0
        self.fallback_used = 0
        self.latency = LatencyWindow(256)

    def plan(self) -> list[VlmEndpoint]:
        """Endpoints to try for the next frame, in order (healthy ones only)."""
        primaries = [ep for ep in self.endpoints if not ep.config.is_fallback and ep.healthy]
        fallbacks = [ep for ep in self.endpoints if ep.config.is_fallback and ep.healthy]
        return weighted_order(primaries, self._rng) + weighted_order(fallbacks, self._rng)

    async def complete(self, endpoint: VlmEndpoint, payload: dict[str, Any]) -> Completion:
        """One chat completion from `endpoint` (its slots, breaker and this backend's retries)."""
        return await endpoint.complete(self.client, payload, self.retry)

    def _payload(self, endpoint: VlmEndpoint, messages: list[dict[str, Any]], mode: str) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": endpoint.config.model_id or self.config.model_id,
            "messages": messages,
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
        }
        if mode == "tags" and self.config.json_response_format:
            payload["response_format"] = {"type": "json_object"}
        return payload

    async def analyze(self, image: np.ndarray, request: VisionRequest) -> VisionResult:
        image = check_image(image)
        if self._pending >= self.config.max_pending:
            self.busy_rejections += 1
            raise BackendBusy(f"VLM backend has {self._pending} frames in flight (max {self.config.max_pending})")
        self._pending += 1
        started = time.perf_counter()
        try:
            return await self._analyze(image, request)
        finally:
            self._pending -= 1
            self.latency.add(time.perf_counter() - started)

    async def _analyze(self, image: np.ndarray, request: VisionRequest) -> VisionResult:
        self.calls += 1
        tag_list = request.tag_list or tuple(self.config.tag_list)
        order = self.plan()
        if not order:
            self.unavailable += 1
            raise BackendUnavailable("every VLM endpoint's circuit breaker is open")
        jpeg, _size = await asyncio.to_thread(
            encode_frame_jpeg, image, self.config.max_pixels, self.config.jpeg_quality
        )
        messages = build_messages(request, jpeg_data_uri(jpeg), tag_list)
        errors: list[str] = []
        for endpoint in order:
            if endpoint.config.is_fallback:
                self.fallback_used += 1
            try:
                completion = await self.complete(endpoint, self._payload(endpoint, messages, request.mode))
            except (OpenAIError, CircuitOpenError) as exc:
                errors.append(f"{endpoint.name}: {exc}")
                log.warning("VLM endpoint %s failed: %s", endpoint.name, exc)
                continue
            return self._result(endpoint, completion.text, request, tag_list)
        self.unavailable += 1
        raise BackendUnavailable("all VLM endpoints failed: " + "; ".join(errors))

    def _result(
        self, endpoint: VlmEndpoint, content: str, request: VisionRequest, tag_list: tuple[str, ...]
    ) -> VisionResult:
        model = endpoint.config.model_id or self.config.model_id
        if request.mode == "description":
            text = content.strip()
            if not text:
                return self._malformed(endpoint, model, "empty description")
            return VisionResult(text=text, model=model, endpoint=endpoint.name)
        try:
            tags = parse_tag_output(content, tag_list, request.threshold)
        except MalformedOutput as exc:
            return self._malformed(endpoint, model, f"{exc}; answer began {content[:80]!r}")
        return VisionResult(tags=tags, model=model, endpoint=endpoint.name)

    def _malformed(self, endpoint: VlmEndpoint, model: str, why: str) -> VisionResult:
        self.malformed += 1
        endpoint.malformed += 1
        log.warning("VLM endpoint %s gave unusable output: %s", endpoint.name, why)
        return VisionResult(model=model, error=f"malformed model output: {why}", endpoint=endpoint.name)

    def health(self) -> dict[str, Any]:
        """Short form for /health: is any endpoint usable, and each breaker's state."""
        return {
            "available": any(ep.healthy for ep in self.endpoints),
            "endpoints": {ep.name: ep.breaker.state for ep in self.endpoints},
        }

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "calls": self.calls,
            "pending": self._pending,
            "malformed": self.malformed,
            "unavailable": self.unavailable,
            "busy_rejections": self.busy_rejections,
            "fallback_used": self.fallback_used,
            "latency_ms": self.latency.summary_ms(),
            "endpoints": [ep.stats() for ep in self.endpoints],
        }

    async def close(self) -> None:
        await self.client.close()
