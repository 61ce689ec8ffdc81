"""A small local server that follows the OpenAI chat-completions API (the shape vLLM serves).

No real engine can stand in for an OpenAI-compatible endpoint in tests (no weights here), so
tests point clients at this real aiohttp server on 127.0.0.1 instead. It answers
`POST /v1/chat/completions`, `GET /v1/models` and `GET /health` like vLLM does, records every
request, and can be told to misbehave:

    async with OpenAIStub(model="m", responder=lambda req: "Hola") as stub:
        stub.fail_next("http_500", times=2)      # the next two chat requests fail, then normal
        stub.mode = "garbage"                     # every chat request answers broken JSON
        client = SomeClient(stub.base_url)

Failure modes: "ok", "delay" (sleep `delay_s` first, then answer), "http_500", "http_503",
"http_429" (with Retry-After), "http_400", "garbage" (200 with invalid JSON), "empty_choices"
(200 with `choices: []`), "no_content" (message without content), "disconnect" (close the
connection without an answer).

`messages[*].content` may be a string or a list of content parts
(`{"type": "text", "text": ...}`, `{"type": "image_url", "image_url": {"url": ...}}`), as in the
OpenAI vision API; `user_text()` / `image_urls()` pull those out of a recorded request.

Log-probabilities: when a request asks for `"logprobs": true` and `stub.token_logprob` is set,
each whitespace token of the reply comes back in `choices[0].logprobs.content` with that
log-probability (as vLLM answers); otherwise `logprobs` is null.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

FAILURE_MODES = (
    "ok",
    "delay",
    "http_500",
    "http_503",
    "http_429",
    "http_400",
    "garbage",
    "empty_choices",
    "no_content",
    "disconnect",
)

Responder = Callable[[dict[str, Any]], str]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    json: Any = None
    received_at: float = field(default_factory=time.monotonic)


def message_text(content: Any) -> str:
    """The text of one message's content: a plain string or the text parts of a parts list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def user_text(request_json: dict[str, Any]) -> str:
    """The text of the last user message."""
    for message in reversed(request_json.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


def image_urls(request_json: dict[str, Any]) -> list[str]:
    """Every image_url in the request's messages (data: URLs included)."""
    urls: list[str] = []
    for message in request_json.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    image = part.get("image_url")
                    url = image.get("url") if isinstance(image, dict) else image
                    if isinstance(url, str):
                        urls.append(url)
    return urls


def echo_responder(request_json: dict[str, Any]) -> str:
    """Default reply: the last user message's text, unchanged."""
    return user_text(request_json)


def _count_tokens(text: str) -> int:
    return len(text.split())


class OpenAIStub:
    def __init__(
        self,
        *,
        model: str = "stub-model",
        responder: Responder = echo_responder,
        api_key: str | None = None,
        delay_s: float = 0.0,
        max_recorded: int = 1000,
    ) -> None:
        self.model = model
        self.responder = responder
        self.api_key = api_key  # when set, requests without "Authorization: Bearer <key>" get 401
        self.mode = "ok"  # applies to every chat request unless a scripted failure is queued
        self.delay_s = delay_s  # used by mode "delay" (and added before any answer when > 0)
        self.health_status = 200
        self.token_logprob: float | None = None  # answered per token when a request asks for logprobs
        self.requests: deque[RecordedRequest] = deque(maxlen=max_recorded)
        self.chat_count = 0
        self.in_flight = 0  # chat requests being answered now
        self.peak_in_flight = 0
        self._scripted: deque[str] = deque(maxlen=1000)
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._ids = itertools.count(1)
        self.port = 0

    # --- control -------------------------------------------------------------------------

    def fail_next(self, mode: str, times: int = 1) -> None:
        """Queue `times` chat requests that answer with `mode`; later ones follow `self.mode`."""
        if mode not in FAILURE_MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {FAILURE_MODES}")
        self._scripted.extend([mode] * times)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/v1/chat/completions"]

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> OpenAIStub:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        self._stopping.set()  # wake any handler sleeping in "delay"
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> OpenAIStub:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- handlers ------------------------------------------------------------------------

    def _record(self, request: web.Request, body: Any) -> None:
        self.requests.append(RecordedRequest(request.method, request.path, dict(request.headers), body))

    def _authorized(self, request: web.Request) -> bool:
        return self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}"

    @staticmethod
    def _openai_error(status: int, message: str, kind: str) -> web.Response:
        body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
        return web.json_response(body, status=status)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._answer_chat(request)
        finally:
            self.in_flight -= 1

    async def _answer_chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        self._record(request, body)
        self.chat_count += 1
        mode = self._scripted.popleft() if self._scripted else self.mode
        if mode == "delay" or self.delay_s > 0:
            await self._sleep(self.delay_s)
        if not self._authorized(request):
            return self._openai_error(401, "Incorrect API key provided.", "invalid_request_error")
        if mode == "disconnect":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)  # never reaches the client
        if mode == "http_500":
            return self._openai_error(500, "stub: internal server error", "server_error")
        if mode == "http_503":
            return self._openai_error(503, "stub: service unavailable", "server_error")
        if mode == "http_429":
            response = self._openai_error(429, "stub: rate limit reached", "rate_limit_error")
            response.headers["Retry-After"] = "0"
            return response
        if mode == "http_400":
            return self._openai_error(400, "stub: bad request", "invalid_request_error")
        if mode == "garbage":
            return web.Response(status=200, text='{"choices": [ {"message": oops', content_type="application/json")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            return self._openai_error(400, "messages must be a non-empty list", "invalid_request_error")
        if body.get("model") != self.model:
            # vLLM's answer for an unknown model name
            return web.json_response(
                {
                    "object": "error",
                    "message": f"The model `{body.get('model')}` does not exist.",
                    "type": "NotFoundError",
                    "param": None,
                    "code": 404,
                },
                status=404,
            )
        if mode == "empty_choices":
            return web.json_response(self._completion(body, None, with_choice=False))
        if mode == "no_content":
            return web.json_response(self._completion(body, None))
        return web.json_response(self._completion(body, self.responder(body)))

    def _completion(self, body: dict[str, Any], reply: str | None, with_choice: bool = True) -> dict[str, Any]:
        prompt_tokens = sum(_count_tokens(message_text(m.get("content"))) for m in body["messages"])
        completion_tokens = _count_tokens(reply or "")
        message: dict[str, Any] = {"role": "assistant", "content": reply, "tool_calls": []}
        if reply is None:
            del message["content"]
        logprobs = None
        if body.get("logprobs") and self.token_logprob is not None and reply:
            logprobs = {
                "content": [
                    {"token": token, "logprob": self.token_logprob, "bytes": list(token.encode()), "top_logprobs": []}
                    for token in reply.split()
                ]
            }
        choices = [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": "stop"}]
        return {
            "id": f"chatcmpl-stub{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": choices if with_choice else [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    async def _models(self, request: web.Request) -> web.Response:
        self._record(request, None)
        if not self._authorized(request):
            return self._openai_error(401, "Incorrect API key provided.", "invalid_request_error")
        created = int(time.time())
        return web.json_response(
            {"object": "list", "data": [{"id": self.model, "object": "model", "created": created, "owned_by": "vllm"}]}
        )

    async def _health(self, request: web.Request) -> web.Response:
        self._record(request, None)
        return web.Response(status=self.health_status)
