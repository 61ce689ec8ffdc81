"""A translator that asks an OpenAI-compatible chat-completions server (a vLLM sidecar, Ollama's
/v1 API, or any server speaking the same API) to translate.

Context: earlier sentences of the same session go into the prompt as prior user/assistant turns,
so names, pronouns and terms stay consistent. Confidence: the request asks for `logprobs`; when
the server returns token log-probabilities their geometric-mean probability is the backend score.

Resilience, in order: a bounded number of concurrent requests (callers past `max_pending` are
refused) and retries with exponential backoff and jitter on transient failures (timeouts,
connection errors, 5xx, 429 — never on other 4xx). The circuit breaker is the service's, one per
backend (see backends.py), so a dead server is skipped for the next backend in the list.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections.abc import Mapping, Sequence
from ssl import SSLContext
from typing import Any

import aiohttp

from inference.resilience import RetryPolicy

from .base import (
    KNOWN_LANGUAGES,
    BoundedConcurrency,
    ContextTurn,
    LanguageSupport,
    TranslationError,
    TranslationResult,
    Translator,
    UnsupportedLanguagePairError,
    Usage,
    is_known_language,
    language_name,
    to_iso639_1,
)
from .quality import LOW_TOKEN_PROBABILITY, logprob_score

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "You are a translation engine. Translate the user's message from {source} to {target}. "
    "Reply with the translation only: no explanations, notes, quotation marks or alternatives. "
    "Keep names, numbers and punctuation. If the text is already in {target}, repeat it unchanged."
)

_THINK_BLOCK_RE = re.compile(r"<think>.*?</think>", re.S | re.I)
_WRAPPING_QUOTES = {'"': '"', "'": "'", "“": "”", "„": "“", "«": "»", "‘": "’", "「": "」", "『": "』"}


class _TransientError(TranslationError):
    """A failure worth retrying (and counted by the breaker)."""

    def __init__(self, message: str, *, code: str, http_status: int = 503, retry_after: float | None = None):
        super().__init__(message, code=code, http_status=http_status, retryable=True)
        self.retry_after = retry_after


def normalize_base_url(endpoint: str) -> str:
    """'http://h:8001', 'http://h:8001/', 'http://h:8001/v1' and '…/v1/chat/completions' all
    give 'http://h:8001'."""
    url = endpoint.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        raise ValueError(f"endpoint must be an http(s) URL, got {endpoint!r}")
    for suffix in ("/chat/completions", "/v1"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url.rstrip("/")


def clean_model_output(raw: str, source_text: str, target_lang: str) -> str:
    """Leniently undo what chat models add around a translation: reasoning blocks, a
    'Translation:' / 'Spanish:' prefix, and quotes wrapping the whole answer."""
    text = _THINK_BLOCK_RE.sub("", raw)
    if "</think>" in text:  # an unclosed or stray reasoning block: keep what follows it
        text = text.rsplit("</think>", 1)[1]
    text = text.strip()
    target_name = re.escape(language_name(target_lang).split(" (")[0])
    prefix = re.compile(
        rf"^(?:here(?:'s| is) the translation|translation|translated text|{target_name}(?: translation)?)"
        r"\s*(?:\([^)]{0,40}\))?\s*[:：]\s*",
        re.I,
    )
    if not prefix.match(source_text.strip()):
        text = prefix.sub("", text, count=1).strip()
    source = source_text.strip()
    if len(text) >= 2 and _WRAPPING_QUOTES.get(text[0]) == text[-1]:
        source_wrapped = len(source) >= 2 and source[0] == text[0] and source[-1] == text[-1]
        if not source_wrapped:
            text = text[1:-1].strip()
    return text


def _parse_usage(raw: object) -> Usage | None:
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


def _parse_retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _token_logprobs(data: Mapping[str, Any]) -> list[float]:
    """choices[0].logprobs.content[*].logprob (the OpenAI/vLLM/Ollama shape); [] when absent."""
    try:
        content = data["choices"][0]["logprobs"]["content"]
    except (KeyError, IndexError, TypeError):
        return []
    if not isinstance(content, list):
        return []
    return [t["logprob"] for t in content if isinstance(t, Mapping) and isinstance(t.get("logprob"), (int, float))]


class OpenAICompatTranslator(Translator):
    name = "openai"
    uses_context = True

    def __init__(
        self,
        endpoint: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 2,
        retry_base_delay: float = 0.25,
        retry_max_delay: float = 4.0,
        max_concurrency: int = 8,
        max_pending: int = 64,
        max_output_tokens: int = 1024,
        temperature: float = 0.0,
        system_prompt: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
        request_logprobs: bool = True,
        languages: Sequence[str] = (),
        name: str | None = None,
        rng: random.Random | None = None,
        ssl: SSLContext | bool = True,
    ) -> None:
        if name:
            self.name = name
        self._ssl = ssl  # True: verified against the system CAs; the server passes its TlsPolicy's choice
        self.base_url = normalize_base_url(endpoint)
        self.chat_url = f"{self.base_url}/v1/chat/completions"
        self.model = model or None  # None: ask /v1/models on first use
        self._api_key = api_key or None
        self.timeout = timeout
        self.max_output_tokens = max_output_tokens
        self.temperature = temperature
        self.system_prompt = system_prompt or DEFAULT_SYSTEM_PROMPT
        self.system_prompt.format(source="x", target="y")  # fail at start-up on a bad template
        self.extra_body = dict(extra_body or {})
        self.request_logprobs = request_logprobs
        # Languages the model is trusted with; empty: every language streamlens can name.
        self.languages = tuple(languages) or KNOWN_LANGUAGES
        self.max_concurrency = max(1, max_concurrency)
        self.retry_policy = RetryPolicy(
            attempts=max(1, max_retries + 1), base_delay=retry_base_delay, max_delay=retry_max_delay, jitter=0.5
        )
        self._limiter = BoundedConcurrency(self.max_concurrency, max_pending, "translation backend")
        self._rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0  # HTTP attempts sent
        self.retries = 0
        self.failures = 0

    @property
    def model_info(self) -> str:
        return self.model or "unknown"

    # --- session -------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _get_session(self) -> aiohttp.ClientSession:
        # One session for the translator's life: pooled keep-alive connections, at most
        # `max_concurrency` (+1 for health probes) open at once.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.max_concurrency + 1, keepalive_timeout=30, ssl=self._ssl)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers())
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    # --- translation ---------------------------------------------------------------------

    def build_messages(
        self, text: str, source_lang: str, target_lang: str, context: Sequence[ContextTurn] = ()
    ) -> list[dict[str, str]]:
        """System prompt, then each context sentence as a user turn answered by its translation,
        then the sentence to translate."""
        system = self.system_prompt.format(source=language_name(source_lang), target=language_name(target_lang))
        messages = [{"role": "system", "content": system}]
        for turn in context:
            messages.append({"role": "user", "content": turn.source})
            messages.append({"role": "assistant", "content": turn.translation})
        messages.append({"role": "user", "content": text})
        return messages

    async def language_support(self) -> LanguageSupport:
        return LanguageSupport(languages=self.languages, any_pair=True)

    def _check_pair(self, source_lang: str, target_lang: str) -> None:
        allowed = set(self.languages)
        for code in (source_lang, target_lang):
            base = to_iso639_1(code.split("-")[0].split("_")[0].lower())
            if not is_known_language(code) or (base not in allowed and code not in allowed):
                raise UnsupportedLanguagePairError(source_lang, target_lang, [f"any pair of {', '.join(self.languages)}"])

    def max_tokens_for(self, text: str) -> int:
        # Room for expansion (CJK → Latin can double) but capped so a run-on answer stops early.
        return max(16, min(self.max_output_tokens, 32 + 2 * len(text)))

    async def translate(
        self, text: str, source_lang: str, target_lang: str, context: Sequence[ContextTurn] = ()
    ) -> TranslationResult:
        self._check_pair(source_lang, target_lang)
        if not text.strip():
            return TranslationResult("", source_lang, target_lang, self.model_info, backend=self.name)
        messages = self.build_messages(text, source_lang, target_lang, context)
        data = await self._limiter.run(lambda: self._complete_with_retries(messages, text))
        content = data["choices"][0]["message"]["content"]
        translated = clean_model_output(content, text, target_lang)
        if not translated:
            raise TranslationError(
                "translation backend answered an empty translation", code="bad_backend_response", http_status=502
            )
        score = logprob_score(_token_logprobs(data))
        flags = ("low_token_probability",) if score is not None and score < LOW_TOKEN_PROBABILITY else ()
        return TranslationResult(
            text=translated,
            source_language=source_lang,
            target_language=target_lang,
            model_info=str(data.get("model") or self.model_info),
            usage=_parse_usage(data.get("usage")),
            backend=self.name,
            backend_score=score,
            quality_flags=flags,
        )

    async def _complete_with_retries(self, messages: list[dict[str, str]], text: str) -> dict[str, Any]:
        attempts = self.retry_policy.attempts
        for attempt in range(attempts):
            try:
                return await self._attempt(messages, text)
            except _TransientError as exc:
                if attempt + 1 >= attempts:
                    self.failures += 1
                    raise
                delay = self.retry_policy.delay(attempt, self._rng)
                if exc.retry_after is not None:  # honour the server's 429 hint, within our cap
                    delay = max(delay, min(exc.retry_after, self.retry_policy.max_delay))
                self.retries += 1
                log.info("translation attempt %d/%d failed (%s); retrying in %.2f s",
                         attempt + 1, attempts, exc.code, delay)
                await asyncio.sleep(delay)
            except TranslationError:
                self.failures += 1
                raise
        raise AssertionError("unreachable")

    async def _attempt(self, messages: list[dict[str, str]], text: str) -> dict[str, Any]:
        outcome = await self._post_once(messages, text)
        if isinstance(outcome, TranslationError):
            raise outcome  # a 4xx answer: the server is up but said no (not retried)
        return outcome

    async def _post_once(self, messages: list[dict[str, str]], text: str) -> dict[str, Any] | TranslationError:
        """One HTTP attempt. Raises for transient failures (retried); returns a non-retryable
        TranslationError for a 4xx answer (the backend itself is healthy)."""
        session = self._get_session()
        model = self.model or await self._discover_model(session)
        payload: dict[str, Any] = {
            **self.extra_body,
            "model": model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens_for(text),
            "stream": False,
        }
        if self.request_logprobs:
            payload["logprobs"] = True
        self.requests += 1
        try:
            async with session.post(
                self.chat_url, json=payload, timeout=aiohttp.ClientTimeout(total=self.timeout)
            ) as resp:
                status = resp.status
                retry_after = _parse_retry_after(resp.headers.get("Retry-After"))
                body = await resp.read()
        except TimeoutError as exc:  # aiohttp's timeouts subclass TimeoutError
            raise _TransientError(
                f"translation backend did not answer within {self.timeout:.1f} s",
                code="backend_timeout",
                http_status=504,
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _TransientError(
                f"cannot reach translation backend {self.base_url}: {exc.__class__.__name__}: {exc}",
                code="backend_unavailable",
            ) from exc
        detail = _error_detail(body)
        if status == 429:
            raise _TransientError(
                f"translation backend is overloaded (429){detail}", code="backend_overloaded", retry_after=retry_after
            )
        if status >= 500:
            raise _TransientError(f"translation backend failed with HTTP {status}{detail}", code="backend_error")
        if status >= 400:
            return TranslationError(
                f"translation backend rejected the request with HTTP {status}{detail}",
                code="backend_rejected",
                http_status=502,
                retryable=False,
            )
        return _parse_completion(body)

    async def _discover_model(self, session: aiohttp.ClientSession) -> str:
        """Use the first model the server lists when none was configured (a vLLM sidecar serves one)."""
        try:
            async with session.get(
                f"{self.base_url}/v1/models", timeout=aiohttp.ClientTimeout(total=self.timeout)
            ) as resp:
                status = resp.status
                body = await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _TransientError(f"cannot list models at {self.base_url}: {exc}", code="backend_unavailable") from exc
        try:
            models = [m["id"] for m in json.loads(body)["data"]]
        except (ValueError, KeyError, TypeError):
            models = []
        if status != 200 or not models:
            raise _TransientError(
                f"no model configured (VLLM_MODEL) and {self.base_url}/v1/models listed none (HTTP {status})",
                code="backend_unavailable",
            )
        self.model = str(models[0])
        log.info("translation model discovered: %s", self.model)
        return self.model

    # --- status --------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """GET /health (vLLM), else /v1/models (Ollama, other OpenAI-compatible servers)."""
        report: dict[str, Any] = {"endpoint": self.base_url, "model": self.model}
        session = self._get_session()
        probe_timeout = aiohttp.ClientTimeout(total=min(self.timeout, 5.0))
        for path in ("/health", "/v1/models"):
            try:
                async with session.get(f"{self.base_url}{path}", timeout=probe_timeout) as resp:
                    status = resp.status
                    body = await resp.read()
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                report.update(status="unhealthy", checked=path, error=f"{exc.__class__.__name__}: {exc}")
                return report
            if status == 404 and path == "/health":
                continue  # not vLLM: try the OpenAI listing
            report.update(checked=path, http_status=status)
            if status != 200:
                report.update(status="unhealthy", error=f"HTTP {status}{_error_detail(body)}")
                return report
            if path == "/v1/models":
                try:
                    report["models"] = [m["id"] for m in json.loads(body)["data"]][:20]
                except (ValueError, KeyError, TypeError):
                    pass
            break
        report["status"] = "healthy"
        return report

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "retries": self.retries,
            "failures": self.failures,
            "concurrency": self._limiter.snapshot(),
        }


def _parse_completion(body: bytes) -> dict[str, Any]:
    """Validate a chat-completions answer; a malformed one raises (and counts as a failure)."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise TranslationError(
            f"translation backend sent invalid JSON: {body[:120]!r}", code="bad_backend_response", http_status=502
        ) from exc
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        raise TranslationError(
            "translation backend answer has no choices", code="bad_backend_response", http_status=502
        )
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise TranslationError(
            "translation backend answer has no message content", code="bad_backend_response", http_status=502
        )
    return data


def _error_detail(body: bytes) -> str:
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
