"""Client for vision-language models behind OpenAI-compatible chat-completions endpoints (vLLM,
LM Studio, llama.cpp server, OpenAI itself).

One request per frame::

    POST {base}/chat/completions
    {"model": ..., "max_tokens": ..., "temperature": ...,
     "messages": [{"role": "user", "content": [
         {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}},
         {"type": "text", "text": "<tagging or description prompt>"}]}]}

The frame is shrunk to a pixel budget (``w * h <= max_pixels``, aspect kept) before JPEG encoding,
so request size and the model's visual-token count stay bounded whatever the stream resolution.

Per endpoint (``VlmEndpoint``): a timeout, a concurrency limit (semaphore with a bounded number of
waiters), retries with exponential backoff and jitter for transient errors (timeouts, connection
errors, 429, 5xx) and a ``CircuitBreaker``; the HTTP itself is the shared
``inference.openai_client.OpenAIClient`` (translation's too). Any failure to obtain a completion
counts against the breaker; a completion whose *content* is not what was asked for (malformed model output) does not —
the endpoint worked, the model answered badly. The multiplexer counts and survives those.

Tag answers are parsed leniently (``parse_tag_output``): code fences, prose around the JSON,
single-quoted Python-style dicts, a bare list, ``{"tag": confidence}`` maps, percentages.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from inference.openai_client import Completion, OpenAIClient, OpenAIError, TransientOpenAIError, chat_completions_url
from inference.resilience import CircuitBreaker, RetryPolicy, retry_async
from inference.vision.base import VisionRequest
from media.events import Tag
from media.stats import LatencyWindow

log = logging.getLogger(__name__)

DEFAULT_DESCRIPTION_PROMPT = "Describe what is happening in this video frame in one or two short sentences."


class VlmEndpointConfig(BaseModel):
    """One OpenAI-compatible endpoint. `base_url` may be the server root (``http://h:8000`` ->
    ``/v1/chat/completions``), an API base (``http://h:8000/v1`` -> ``/v1/chat/completions``) or the
    full ``.../chat/completions`` URL."""

    model_config = ConfigDict(extra="forbid")

    base_url: str
    api_key: str = ""
    name: str = ""
    weight: float = Field(1.0, gt=0)
    is_fallback: bool = False
    max_concurrent: int = Field(4, ge=1, le=1024)
    timeout: float = Field(30.0, gt=0)
    model_id: str | None = None  # overrides the VLM config's model_id for this endpoint

    def display_name(self) -> str:
        return self.name or urlsplit(self.base_url).netloc or self.base_url


class EndpointBusy(OpenAIError):
    """The endpoint's concurrency slots and its bounded waiting line are full."""


class MalformedOutput(ValueError):
    """The model answered, but not with anything the parser can read as tags."""


class VlmEndpoint:
    """Runtime state of one endpoint: breaker, concurrency slots, counters."""

    def __init__(
        self,
        config: VlmEndpointConfig,
        failure_threshold: int = 3,
        reset_timeout: float = 15.0,
        clock: Any = time.monotonic,
        max_waiting_factor: int = 4,
    ) -> None:
        self.config = config
        self.name = config.display_name()
        self.url = chat_completions_url(config.base_url)
        self.breaker = CircuitBreaker(
            f"vlm:{self.name}", failure_threshold=failure_threshold, reset_timeout=reset_timeout, clock=clock
        )
        self._semaphore = asyncio.Semaphore(config.max_concurrent)
        self.max_waiting = config.max_concurrent * max_waiting_factor
        self.waiting = 0
        self.in_flight = 0
        self.selected = 0  # times this endpoint was tried for a frame
        self.attempts = 0  # HTTP requests sent (retries included)
        self.successes = 0
        self.failures = 0  # calls that ended without a completion (after retries)
        self.retries = 0
        self.malformed = 0
        self.busy_rejections = 0
        self.last_error: str | None = None
        self.latency = LatencyWindow(256)

    @property
    def healthy(self) -> bool:
        """Closed or half-open breaker: worth choosing."""
        return self.breaker.state != CircuitBreaker.OPEN

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """A concurrency slot; refuse (EndpointBusy) rather than queue without bound."""
        if self._semaphore.locked() and self.waiting >= self.max_waiting:
            self.busy_rejections += 1
            raise EndpointBusy(
                f"endpoint {self.name} busy ({self.in_flight} in flight, {self.waiting} waiting)",
                code="backend_busy",
            )
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._semaphore.release()

    async def complete(self, client: OpenAIClient, payload: dict[str, Any], retry: RetryPolicy) -> Completion:
        """One completion from this endpoint: its slot limit, breaker and retries around the
        shared client. Raises OpenAIError (EndpointBusy included) or CircuitOpenError."""
        self.selected += 1

        async def one_attempt() -> Completion:
            async with self.slot():
                self.attempts += 1
                return await self.breaker.call(
                    lambda: client.chat(
                        self.url,
                        payload,
                        api_key=self.config.api_key or None,
                        timeout=self.config.timeout,
                        label=f"VLM endpoint {self.name}",
                    )
                )

        def count_retry(_attempt: int, exc: BaseException) -> None:
            self.retries += 1
            log.info("VLM endpoint %s: retrying after %s", self.name, exc)

        try:
            completion = await retry_async(one_attempt, retry, retry_on=(TransientOpenAIError,), on_retry=count_retry)
        except Exception as exc:
            self.failures += 1
            self.last_error = str(exc) or type(exc).__name__
            raise
        self.successes += 1
        self.latency.add(completion.latency_s)
        return completion

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "weight": self.config.weight,
            "is_fallback": self.config.is_fallback,
            "healthy": self.healthy,
            "breaker": self.breaker.snapshot(),
            "in_flight": self.in_flight,
            "waiting": self.waiting,
            "selected": self.selected,
            "attempts": self.attempts,
            "successes": self.successes,
            "failures": self.failures,
            "retries": self.retries,
            "malformed": self.malformed,
            "busy_rejections": self.busy_rejections,
            "last_error": self.last_error,
            "latency_ms": self.latency.summary_ms(),
        }


# -- frame encoding ------------------------------------------------------------------------------


def fit_pixel_budget(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """Largest (w, h) with the same aspect (rounded down) such that w * h <= max_pixels."""
    if max_pixels <= 0 or width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    new_w, new_h = max(1, int(width * scale)), max(1, int(height * scale))
    while new_w * new_h > max_pixels and (new_w > 1 or new_h > 1):  # float rounding guard
        if new_w >= new_h:
            new_w -= 1
        else:
            new_h -= 1
    return new_w, new_h


def encode_frame_jpeg(image: np.ndarray, max_pixels: int, quality: int = 85) -> tuple[bytes, tuple[int, int]]:
    """RGB uint8 frame -> (JPEG bytes, (w, h) actually encoded), downscaled to the pixel budget."""
    height, width = image.shape[:2]
    new_w, new_h = fit_pixel_budget(width, height, max_pixels)
    if (new_w, new_h) != (width, height):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buffer.tobytes(), (new_w, new_h)


def jpeg_data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


# -- prompts -------------------------------------------------------------------------------------


def tagging_prompt(tag_list: list[str] | tuple[str, ...]) -> str:
    shape = '{"tags": [{"name": "<tag>", "confidence": <number between 0 and 1>}]}'
    if tag_list:
        return (
            "This image is one frame of a live video. For each tag in the following list, judge how likely it "
            f"is that the tag applies to what is visible: {json.dumps(list(tag_list))}. "
            f"Answer with JSON only, no other text, shaped exactly like {shape}. "
            "Use only tag names from the list, spelled as given; leave out tags that clearly do not apply."
        )
    return (
        "This image is one frame of a live video. Give up to 10 short tags (one or two words each) for what "
        f"is visible, each with your confidence. Answer with JSON only, no other text, shaped exactly like {shape}."
    )


def build_messages(
    request: VisionRequest, data_uri: str, tag_list: list[str] | tuple[str, ...]
) -> list[dict[str, Any]]:
    if request.mode == "description":
        text = request.prompt or DEFAULT_DESCRIPTION_PROMPT
    else:
        text = tagging_prompt(tag_list)
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_uri}},
                {"type": "text", "text": text},
            ],
        }
    ]


# -- lenient output parsing ----------------------------------------------------------------------

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
_NAME_KEYS = ("name", "tag", "label", "class", "category")
_CONFIDENCE_KEYS = ("confidence", "score", "probability", "prob", "conf", "likelihood")


def _matching_close(text: str, start: int) -> int | None:
    """Index of the bracket closing text[start], skipping quoted strings (' or ")."""
    pairs = {"{": "}", "[": "]"}
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
            continue
        if char in "\"'":
            quote = char
        elif char in pairs:
            stack.append(pairs[char])
        elif char in "}]":
            if not stack or stack[-1] != char:
                return None
            stack.pop()
            if not stack:
                return index
    return None


def _load_lenient(chunk: str) -> Any:
    try:
        return json.loads(chunk)
    except ValueError:
        pass
    for candidate in (
        chunk,
        re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", chunk))),
    ):
        try:
            return ast.literal_eval(candidate)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    raise MalformedOutput("no JSON value could be read")


def extract_json_value(text: str) -> Any:
    """The first JSON-ish object or list in a model answer (fenced or not, prose around it)."""
    if not text or not text.strip():
        raise MalformedOutput("empty answer")
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    tried = 0
    for match in re.finditer(r"[\[{]", body):
        if tried >= 8:  # bound the work on long prose
            break
        tried += 1
        end = _matching_close(body, match.start())
        if end is None:
            continue
        try:
            return _load_lenient(body[match.start() : end + 1])
        except MalformedOutput:
            continue
    raise MalformedOutput("no JSON object or list in the answer")


def _confidence(value: Any) -> float:
    if value is None:
        return 1.0
    if isinstance(value, str):
        stripped = value.strip()
        percent = stripped.endswith("%")
        number = float(stripped.rstrip("%").strip())
        if percent:
            number /= 100.0
    elif isinstance(value, bool):
        number = 1.0 if value else 0.0
    else:
        number = float(value)
    if math.isnan(number):
        raise ValueError("NaN confidence")
    if 1.0 < number <= 100.0:  # a percentage without the sign
        number /= 100.0
    return min(1.0, max(0.0, number))


def _normalise_name(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def _entries(value: Any) -> list[tuple[str, Any]]:
    """(name, raw confidence) pairs from any of the accepted answer shapes."""
    if isinstance(value, dict):
        lowered = {str(k).lower(): v for k, v in value.items()}
        if "tags" in lowered:
            return _entries_from_list(lowered["tags"])
        if any(k in lowered for k in _NAME_KEYS):
            return _entries_from_list([value])
        if value and all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value.values()):
            return [(str(k), v) for k, v in value.items()]
        raise MalformedOutput("object has no 'tags' list")
    return _entries_from_list(value)


def _entries_from_list(items: Any) -> list[tuple[str, Any]]:
    if isinstance(items, dict):
        return _entries(items)
    if not isinstance(items, (list, tuple)):
        raise MalformedOutput(f"'tags' is a {type(items).__name__}, not a list")
    out: list[tuple[str, Any]] = []
    for item in items:
        if isinstance(item, str):
            out.append((item, None))
        elif isinstance(item, dict):
            lowered = {str(k).lower(): v for k, v in item.items()}
            name = next((lowered[k] for k in _NAME_KEYS if k in lowered), None)
            if not isinstance(name, str):
                raise MalformedOutput("tag entry without a name")
            out.append((name, next((lowered[k] for k in _CONFIDENCE_KEYS if k in lowered), None)))
        elif isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str):
            out.append((item[0], item[1]))
        else:
            raise MalformedOutput(f"unreadable tag entry {item!r:.60}")
    return out


def parse_tag_output(text: str, tag_list: list[str] | tuple[str, ...], threshold: float) -> list[Tag]:
    """Tags from a model answer: names outside `tag_list` dropped (when a list is given; matching
    ignores case, spaces, '_' and '-', and reports the configured spelling), confidences below
    `threshold` dropped, one tag per name (highest confidence), sorted by confidence. A name with
    no confidence counts as 1.0. Raises MalformedOutput when nothing readable is there."""
    entries = _entries(extract_json_value(text))
    allowed = {_normalise_name(t): t for t in tag_list}
    best: dict[str, float] = {}
    for raw_name, raw_confidence in entries:
        key = _normalise_name(raw_name)
        if not key:
            continue
        if allowed:
            if key not in allowed:
                continue
            name = allowed[key]
        else:
            name = raw_name.strip()
        try:
            confidence = _confidence(raw_confidence)
        except (TypeError, ValueError):
            raise MalformedOutput(f"unreadable confidence {raw_confidence!r:.40} for tag {name!r}") from None
        if confidence >= threshold and confidence > best.get(name, -1.0):
            best[name] = round(confidence, 4)
    return [Tag(name, conf) for name, conf in sorted(best.items(), key=lambda kv: kv[1], reverse=True)]
