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

import logging
import random
import re
from collections.abc import Mapping, Sequence
from ssl import SSLContext
from typing import Any
from urllib.parse import urlsplit

from inference.openai_client import (
    Completion,
    OpenAIClient,
    OpenAIError,
    TransientOpenAIError,
    api_base,
    chat_completions_url,
    error_detail,
    model_ids,
    server_root,
)
from inference.resilience import RetryPolicy, retry_async

from .base import (
    KNOWN_LANGUAGES,
    BoundedConcurrency,
    ContextTurn,
    LanguageSupport,
    TranslationError,
    TranslationResult,
    Translator,
    UnsupportedLanguagePairError,
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
        self.chat_url = chat_completions_url(endpoint)
        self.base_url = server_root(endpoint)
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
        # one pooled session for the translator's life: at most `max_concurrency` (+1 for health
        # probes) connections open at once
        self._client = OpenAIClient(ssl_for=lambda _url: ssl, max_connections=self.max_concurrency + 1)
        self.requests = 0  # HTTP attempts sent
        self.retries = 0
        self.failures = 0

    @property
    def model_info(self) -> str:
        return self.model or "unknown"

    async def close(self) -> None:
        await self._client.close()

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
                raise UnsupportedLanguagePairError(
                    source_lang, target_lang, [f"any pair of {', '.join(self.languages)}"]
                )

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
        completion = await self._limiter.run(lambda: self._complete_with_retries(messages, text))
        translated = clean_model_output(completion.text, text, target_lang)
        if not translated:
            raise TranslationError("translation backend answered an empty translation", code="bad_backend_response")
        score = logprob_score(completion.token_logprobs)
        flags = ("low_token_probability",) if score is not None and score < LOW_TOKEN_PROBABILITY else ()
        return TranslationResult(
            text=translated,
            source_language=source_lang,
            target_language=target_lang,
            model_info=completion.model or self.model_info,
            usage=completion.usage,
            backend=self.name,
            backend_score=score,
            quality_flags=flags,
        )

    async def _complete_with_retries(self, messages: list[dict[str, str]], text: str) -> Completion:
        """Retries (backoff, jitter, the server's Retry-After) on transient failures only; a 4xx
        answer means the server is up but said no, and is not retried."""

        def count_retry(attempt: int, exc: BaseException) -> None:
            self.retries += 1
            log.info(
                "translation attempt %d/%d failed (%s); retrying",
                attempt,
                self.retry_policy.attempts,
                getattr(exc, "code", type(exc).__name__),
            )

        try:
            return await retry_async(
                lambda: self._post_once(messages, text),
                self.retry_policy,
                retry_on=(TransientOpenAIError,),
                on_retry=count_retry,
                rng=self._rng,
            )
        except OpenAIError as exc:
            self.failures += 1
            raise _translation_error(exc) from exc

    async def _post_once(self, messages: list[dict[str, str]], text: str) -> Completion:
        model = self.model or await self._discover_model()
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
        return await self._client.chat(
            self.chat_url, payload, api_key=self._api_key, timeout=self.timeout, label="translation backend"
        )

    async def _discover_model(self) -> str:
        """Use the first model the server lists when none was configured (a vLLM sidecar serves one)."""
        models = await self._client.list_models(self.chat_url, api_key=self._api_key, timeout=self.timeout)
        if not models:
            raise TransientOpenAIError(
                f"no model configured (VLLM_MODEL) and {api_base(self.chat_url)}/models listed none",
                code="backend_unavailable",
            )
        self.model = models[0]
        log.info("translation model discovered: %s", self.model)
        return self.model

    # --- status --------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """GET /health (vLLM), else /v1/models (Ollama, other OpenAI-compatible servers)."""
        report: dict[str, Any] = {"endpoint": self.base_url, "model": self.model}
        timeout = min(self.timeout, 5.0)
        for url in (server_root(self.chat_url) + "/health", api_base(self.chat_url) + "/models"):
            try:
                status, body = await self._client.get(url, api_key=self._api_key, timeout=timeout)
            except TransientOpenAIError as exc:
                report.update(status="unhealthy", checked=urlsplit(url).path, error=str(exc))
                return report
            if status == 404 and url.endswith("/health"):
                continue  # not vLLM: try the OpenAI listing
            report.update(checked=urlsplit(url).path, http_status=status)
            if status != 200:
                report.update(status="unhealthy", error=f"HTTP {status}{error_detail(body)}")
                return report
            if url.endswith("/models"):
                report["models"] = model_ids(body)[:20]
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


def _translation_error(exc: OpenAIError) -> TranslationError:
    """The shared client's failure as the translation service's error. Only a 4xx answer is final
    (the server is up and said no); anything else, a garbled answer included, counts against the
    backend's breaker."""
    rejected = exc.code == "backend_rejected"
    return TranslationError(str(exc), code=exc.code, retryable=not rejected)
