"""The one HTTP client for OpenAI-compatible chat-completions servers (vLLM, Ollama's /v1 API,
LM Studio, llama.cpp server, OpenAI itself). Translation, the VLM multiplexer and recorded-video
analysis all send their requests through it, so they agree on:

- where the API lives: ``http://h:8000``, ``http://h:8000/v1`` and the full
  ``…/v1/chat/completions`` URL all name the same endpoint (``chat_completions_url``);
- what counts as transient (timeouts, connection errors, 429 with its ``Retry-After``, 5xx: worth
  a retry) and what does not (other 4xx, an answer that is not a chat completion);
- what an answer carries (``Completion``: text, model, token usage, token log-probabilities).

Retries, breakers and concurrency limits belong to the callers (each has its own policy per
backend); this module does one HTTP attempt at a time over a pooled keep-alive session, with TLS
chosen per URL by the server's TLS policy (``ssl_for``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from httpapi.outbound import client_session

SslFor = Callable[[str], "ssl.SSLContext | bool"]


class OpenAIError(RuntimeError):
    """No usable completion. `code` is stable (API errors, stats; httpapi/errors.py maps it to
    an HTTP status at the edge); `retryable` says whether a retry may help."""

    retryable = False

    def __init__(self, message: str, *, code: str = "backend_error") -> None:
        super().__init__(message)
        self.code = code


class TransientOpenAIError(OpenAIError):
    """Timeouts, connection errors, 429 and 5xx: worth a retry. `retry_after`: the server's hint."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        code: str = "backend_unavailable",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


Usage = dict[str, int]


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str
    model: str | None = None
    usage: Usage | None = None
    token_logprobs: list[float] = dataclasses.field(default_factory=list)
    latency_s: float = 0.0


def chat_completions_url(endpoint: str) -> str:
    """The chat-completions URL of an endpoint given as a server root (+ /v1/chat/completions),
    an API base such as ``…/v1`` (+ /chat/completions) or the full URL. Raises ValueError for
    anything but an http(s) URL with a host."""
    url = endpoint.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        raise ValueError(f"endpoint must be an http(s) URL, got {endpoint!r}")
    if url.endswith("/chat/completions"):
        return url
    if urlsplit(url).path in ("", "/"):
        return url + "/v1/chat/completions"
    return url + "/chat/completions"


def api_base(endpoint: str) -> str:
    """``…/v1`` of an endpoint: where ``/models`` lives."""
    return chat_completions_url(endpoint)[: -len("/chat/completions")]


def server_root(endpoint: str) -> str:
    """The endpoint without ``/v1/chat/completions`` (``http://h:8001``, or a proxy's prefix):
    where vLLM's ``/health`` lives."""
    url = chat_completions_url(endpoint)[: -len("/chat/completions")]
    return url[: -len("/v1")] if url.endswith("/v1") else url


def parse_usage(raw: object) -> Usage | None:
    """The answer's token counts (prompt/completion/total), None when the server sent none."""
    if not isinstance(raw, Mapping):
        return None
    usage: Usage = {}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = raw.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            usage[key] = value
    if not usage:
        return None
    usage.setdefault("total_tokens", usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0))
    return usage


def _token_logprobs(data: Mapping[str, Any]) -> list[float]:
    """choices[0].logprobs.content[*].logprob (the OpenAI/vLLM/Ollama shape); [] when absent."""
    try:
        content = data["choices"][0]["logprobs"]["content"]
    except (KeyError, IndexError, TypeError):
        return []
    if not isinstance(content, list):
        return []
    return [t["logprob"] for t in content if isinstance(t, Mapping) and isinstance(t.get("logprob"), (int, float))]


def parse_completion(body: bytes, label: str) -> Completion:
    """A chat-completions answer, or OpenAIError(code="bad_backend_response") when it is not one.
    Content may be a string or a list of text parts; null content is an empty text."""
    try:
        data = json.loads(body)
    except ValueError:
        raise OpenAIError(f"{label} sent invalid JSON: {body[:120]!r}", code="bad_backend_response") from None
    try:
        message = data["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise OpenAIError(
            f"{label} answer is not a chat completion (no choices[0].message)", code="bad_backend_response"
        ) from None
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    elif content is not None and not isinstance(content, str):
        raise OpenAIError(f"{label} answer has non-text message content", code="bad_backend_response")
    model = data.get("model")
    return Completion(
        text=content or "",
        model=str(model) if model else None,
        usage=parse_usage(data.get("usage")),
        token_logprobs=_token_logprobs(data),
    )


def model_ids(body: bytes) -> list[str]:
    """The ids of a ``/v1/models`` answer; [] when it is not one."""
    try:
        return [str(m["id"]) for m in json.loads(body)["data"]]
    except (ValueError, KeyError, TypeError):
        return []


def error_detail(body: bytes) -> str:
    """The server's own error message (OpenAI and vLLM shapes), shortened, for our error text."""
    if not body:
        return ""
    try:
        data = json.loads(body)
        message = data.get("error", {}).get("message") if isinstance(data.get("error"), dict) else None
        message = message or data.get("message") or data.get("detail")
    except (ValueError, AttributeError):
        message = body[:200].decode("utf-8", "replace")
    return f": {str(message)[:200]}" if message else ""


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: the caller's own backoff applies


class OpenAIClient:
    """One pooled aiohttp session; one HTTP attempt per call. `ssl_for(url)` gives the `ssl`
    argument for each URL (the server's TlsPolicy: system CAs + TLS_CA_FILE, False only for hosts
    in TLS_INSECURE_HOSTS); without it TLS is verified against the system CAs."""

    def __init__(
        self, *, ssl_for: SslFor | None = None, max_connections: int = 256, session: aiohttp.ClientSession | None = None
    ) -> None:
        self._ssl_for = ssl_for
        self.max_connections = max(1, max_connections)
        self._session = session
        self._owns_session = session is None
        self._session_lock = asyncio.Lock()

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            async with self._session_lock:
                if self._session is None or self._session.closed:
                    # TLS per request (`self._ssl(url)`): the endpoint's TLS_INSECURE_HOSTS exemption
                    self._session = client_session(None, limit=self.max_connections, keepalive_timeout=30)
                    self._owns_session = True
        return self._session

    def _ssl(self, url: str) -> ssl.SSLContext | bool:
        return self._ssl_for(url) if self._ssl_for is not None else True

    @staticmethod
    def _headers(api_key: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return headers

    async def chat(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        label: str = "model server",
    ) -> Completion:
        """POST one chat completion to `url` (a chat_completions_url). Raises TransientOpenAIError
        (retry may help) or OpenAIError; `label` names the server in error messages."""
        session = await self.session()
        started = time.perf_counter()
        try:
            async with session.post(
                url,
                json=dict(payload),
                headers=self._headers(api_key),
                ssl=self._ssl(url),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                status = response.status
                retry_after = _retry_after(response.headers.get("Retry-After"))
                body = await response.read()
        except TimeoutError:  # aiohttp's timeouts subclass TimeoutError
            raise TransientOpenAIError(
                f"{label}: timeout, no answer within {timeout:g} s", code="backend_timeout"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransientOpenAIError(f"cannot reach {label}: {exc.__class__.__name__}: {exc}") from None
        detail = error_detail(body)
        if status == 429:
            raise TransientOpenAIError(
                f"{label} is overloaded (429){detail}", code="backend_overloaded", retry_after=retry_after
            )
        if status >= 500:
            raise TransientOpenAIError(f"{label} failed with HTTP {status}{detail}", code="backend_error")
        if status >= 300:
            raise OpenAIError(f"{label} rejected the request with HTTP {status}{detail}", code="backend_rejected")
        return dataclasses.replace(parse_completion(body, label), latency_s=time.perf_counter() - started)

    async def get(self, url: str, *, api_key: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET `url` → (status, body), for /v1/models and /health probes. Transport errors raise
        TransientOpenAIError."""
        session = await self.session()
        try:
            async with session.get(
                url, headers=self._headers(api_key), ssl=self._ssl(url), timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                return response.status, await response.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TransientOpenAIError(f"cannot reach {url}: {exc.__class__.__name__}: {exc}") from None

    async def list_models(self, endpoint: str, *, api_key: str | None = None, timeout: float = 5.0) -> list[str]:
        """Model ids from ``{api_base}/models``; [] when the server lists none or answers oddly."""
        status, body = await self.get(api_base(endpoint) + "/models", api_key=api_key, timeout=timeout)
        return model_ids(body) if status == 200 else []

    async def close(self) -> None:
        if self._session is not None and self._owns_session and not self._session.closed:
            await self._session.close()
        self._session = None
