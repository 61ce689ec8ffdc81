"""TranslationService: the one object the rest of the server talks to for translation.

It picks the backend from settings, caches results (bounded LRU), keeps stats, rate-limits
translations of partial captions, and offers `translate_for_captions`, which returns an error
value instead of raising so a failing backend can never take a caption stream down with it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from media.stats import LatencyWindow

from .apertium import ApertiumTranslator
from .base import TranslationError, TranslationResult, Translator, same_language, split_language_code
from .cache import LRUCache
from .openai_compat import OpenAICompatTranslator, normalize_base_url

log = logging.getLogger(__name__)

BackendName = Literal["apertium", "openai", "none"]


class TranslateSettings(BaseModel):
    """Translation settings. Env var names the server maps are given in each description."""

    backend: BackendName | None = Field(
        None, description="TRANSLATE_BACKEND: apertium | openai | none; unset → openai if VLLM_ENDPOINT is set, else apertium"
    )
    cache_size: int = Field(1024, ge=0, description="TRANSLATE_CACHE_SIZE: LRU entries (0 disables)")
    max_text_chars: int = Field(5000, ge=1, description="TRANSLATE_MAX_TEXT_CHARS: longest text accepted")
    max_batch_texts: int = Field(64, ge=1, description="TRANSLATE_MAX_BATCH_TEXTS: most texts in one batch")
    max_pending: int = Field(64, ge=0, description="TRANSLATE_MAX_PENDING: callers allowed to wait for a backend slot")
    partial_min_interval_s: float = Field(
        0.5, ge=0, description="TRANSLATE_PARTIAL_MIN_INTERVAL_S: least time between translations of one partial segment"
    )
    latency_window: int = Field(512, ge=1, description="samples kept for latency percentiles")

    apertium_binary: str = Field("apertium", description="APERTIUM_BINARY")
    apertium_data_dir: str | None = Field(None, description="APERTIUM_DATA_DIR: passed as `apertium -d`")
    apertium_timeout_s: float = Field(10.0, gt=0, description="APERTIUM_TIMEOUT_S")
    apertium_max_concurrency: int = Field(2, ge=1, description="APERTIUM_MAX_CONCURRENCY: subprocesses at once")

    vllm_endpoint: str | None = Field(None, description="VLLM_ENDPOINT: base URL, with or without /v1")
    vllm_model: str | None = Field(None, description="VLLM_MODEL: unset → first model of /v1/models")
    vllm_api_key: str | None = Field(None, repr=False, description="VLLM_API_KEY: sent as a Bearer token")
    vllm_timeout_s: float = Field(30.0, gt=0, description="VLLM_TIMEOUT_S: per HTTP attempt")
    vllm_max_retries: int = Field(2, ge=0, description="VLLM_MAX_RETRIES: retries after the first attempt")
    vllm_retry_base_delay_s: float = Field(0.25, ge=0, description="VLLM_RETRY_BASE_DELAY_S")
    vllm_retry_max_delay_s: float = Field(4.0, ge=0, description="VLLM_RETRY_MAX_DELAY_S")
    vllm_breaker_threshold: int = Field(5, ge=1, description="VLLM_BREAKER_THRESHOLD: consecutive failures that open it")
    vllm_breaker_reset_s: float = Field(30.0, gt=0, description="VLLM_BREAKER_RESET_S: open time before a probe")
    vllm_max_concurrency: int = Field(8, ge=1, description="VLLM_MAX_CONCURRENCY: requests in flight")
    vllm_max_output_tokens: int = Field(1024, ge=16, description="VLLM_MAX_OUTPUT_TOKENS: cap on max_tokens")
    vllm_temperature: float = Field(0.0, ge=0, le=2, description="VLLM_TEMPERATURE")
    vllm_system_prompt: str | None = Field(
        None, description="VLLM_SYSTEM_PROMPT: template with {source} and {target} language names"
    )
    vllm_extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description='VLLM_EXTRA_BODY (JSON): extra request fields, e.g. {"chat_template_kwargs": {"enable_thinking": false}}',
    )

    @field_validator("vllm_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        normalize_base_url(value)  # raises ValueError → a clear settings error
        return value.strip()

    @property
    def effective_backend(self) -> BackendName:
        if self.backend is not None:
            return self.backend
        return "openai" if self.vllm_endpoint else "apertium"


def build_translator(settings: TranslateSettings, clock: Callable[[], float] = time.monotonic) -> Translator | None:
    """The backend the settings ask for; None when translation is off."""
    backend = settings.effective_backend
    if backend == "none":
        return None
    if backend == "apertium":
        return ApertiumTranslator(
            binary=settings.apertium_binary,
            data_dir=settings.apertium_data_dir,
            timeout=settings.apertium_timeout_s,
            max_concurrency=settings.apertium_max_concurrency,
            max_pending=settings.max_pending,
        )
    if not settings.vllm_endpoint:
        raise ValueError("TRANSLATE_BACKEND=openai needs VLLM_ENDPOINT")
    return OpenAICompatTranslator(
        settings.vllm_endpoint,
        settings.vllm_model,
        api_key=settings.vllm_api_key,
        timeout=settings.vllm_timeout_s,
        max_retries=settings.vllm_max_retries,
        retry_base_delay=settings.vllm_retry_base_delay_s,
        retry_max_delay=settings.vllm_retry_max_delay_s,
        breaker_threshold=settings.vllm_breaker_threshold,
        breaker_reset_s=settings.vllm_breaker_reset_s,
        max_concurrency=settings.vllm_max_concurrency,
        max_pending=settings.max_pending,
        max_output_tokens=settings.vllm_max_output_tokens,
        temperature=settings.vllm_temperature,
        system_prompt=settings.vllm_system_prompt,
        extra_body=settings.vllm_extra_body,
        clock=clock,
    )


class PartialRateLimiter:
    """Lets a partial caption of one segment be translated at most once per `min_interval`
    (partials change several times a second; finals bypass this). Remembers a bounded number
    of segments, forgetting the least recently seen."""

    def __init__(self, min_interval: float, max_segments: int = 1024) -> None:
        self.min_interval = min_interval
        self.max_segments = max(1, max_segments)
        self._last: OrderedDict[Hashable, float] = OrderedDict()
        self.allowed = 0
        self.skipped = 0

    def should_translate(self, segment_id: Hashable, now: float) -> bool:
        last = self._last.get(segment_id)
        if last is not None and now - last < self.min_interval:
            self.skipped += 1
            return False
        self._last[segment_id] = now
        self._last.move_to_end(segment_id)
        while len(self._last) > self.max_segments:
            self._last.popitem(last=False)
        self.allowed += 1
        return True

    def forget(self, segment_id: Hashable) -> None:
        self._last.pop(segment_id, None)


class TranslationService:
    """Backend + cache + stats. `translate`/`translate_batch` raise TranslationError (for the
    HTTP API); `translate_for_captions` never raises."""

    def __init__(
        self,
        settings: TranslateSettings | None = None,
        translator: Translator | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or TranslateSettings()
        self._clock = clock
        self.translator = translator if translator is not None else build_translator(self.settings, clock)
        self.backend = self.translator.name if self.translator is not None else "none"
        self.cache: LRUCache[tuple[str, str, str, str], TranslationResult] = LRUCache(self.settings.cache_size)
        self.partials = PartialRateLimiter(self.settings.partial_min_interval_s)
        self.latency = LatencyWindow(self.settings.latency_window)
        self.requests = 0
        self.failures = 0
        self.backend_calls = 0
        self.errors_by_code: dict[str, int] = {}  # keys are a small fixed set of codes

    @classmethod
    def from_settings(cls, settings: TranslateSettings) -> "TranslationService":
        return cls(settings)

    @property
    def enabled(self) -> bool:
        return self.translator is not None

    @property
    def model_info(self) -> str:
        return self.translator.model_info if self.translator is not None else "none"

    # --- translation ---------------------------------------------------------------------

    def _require_translator(self) -> Translator:
        if self.translator is None:
            raise TranslationError(
                "translation is disabled (TRANSLATE_BACKEND=none)", code="translation_disabled", http_status=503,
                retryable=False,
            )
        return self.translator

    def _check_text(self, text: str) -> None:
        if len(text) > self.settings.max_text_chars:
            raise TranslationError(
                f"text has {len(text)} characters; the limit is {self.settings.max_text_chars}",
                code="text_too_long", http_status=413, retryable=False,
            )

    def _key(self, text: str, source: str, target: str) -> tuple[str, str, str, str]:
        return (self.backend, source.lower(), target.lower(), " ".join(text.split()))

    async def translate(self, text: str, source_lang: str, target_lang: str) -> TranslationResult:
        """Translate one text (cached). Raises TranslationError, never anything else."""
        results = await self.translate_batch([text], source_lang, target_lang)
        return results[0]

    async def translate_batch(
        self, texts: Sequence[str], source_lang: str, target_lang: str
    ) -> list[TranslationResult]:
        """Translate texts in order; cache hits skip the backend, duplicates go once.
        Raises TranslationError, never anything else."""
        self.requests += len(texts)
        try:
            return await self._translate_batch(list(texts), source_lang, target_lang)
        except TranslationError as exc:
            self._count_error(exc.code)
            raise
        except Exception as exc:  # a backend bug must still surface as a clean error value
            log.exception("translation failed unexpectedly")
            self._count_error("internal_error")
            raise TranslationError(f"translation failed: {exc}", code="internal_error", http_status=500) from exc

    async def _translate_batch(self, texts: list[str], source: str, target: str) -> list[TranslationResult]:
        translator = self._require_translator()
        if len(texts) > self.settings.max_batch_texts:
            raise TranslationError(
                f"{len(texts)} texts in one batch; the limit is {self.settings.max_batch_texts}",
                code="too_many_texts", http_status=413, retryable=False,
            )
        for text in texts:
            self._check_text(text)
        split_language_code(source)  # validates both codes before any work
        split_language_code(target)

        results: list[TranslationResult | None] = [None] * len(texts)
        missing: dict[tuple[str, str, str, str], list[int]] = {}
        for i, text in enumerate(texts):
            if not text.strip() or same_language(source, target):
                results[i] = TranslationResult(text.strip(), source, target, translator.model_info)
                continue
            key = self._key(text, source, target)
            hit = self.cache.get(key)
            if hit is not None:
                results[i] = replace(hit, source_language=source, target_language=target, cached=True, usage=None)
            else:
                missing.setdefault(key, []).append(i)

        if missing:
            keys = list(missing)
            sources = [texts[missing[k][0]] for k in keys]
            started = self._clock()
            self.backend_calls += 1
            fresh = await translator.translate_batch(sources, source, target)
            self.latency.add(max(0.0, self._clock() - started))
            for key, result in zip(keys, fresh):
                self.cache.put(key, result)
                for n, i in enumerate(missing[key]):
                    # usage belongs to the one backend call; duplicates report none
                    results[i] = result if n == 0 else replace(result, usage=None, cached=True)
        return [r for r in results if r is not None]

    async def translate_for_captions(
        self, text: str, source_lang: str, target_lang: str
    ) -> tuple[str | None, str | None]:
        """(translated_text, None) or (None, "code: message"). Never raises (cancellation aside),
        so the caption stage can publish the source caption and carry on."""
        try:
            result = await self.translate(text, source_lang, target_lang)
        except TranslationError as exc:
            log.warning("caption translation %s->%s failed: %s", source_lang, target_lang, exc)
            return None, f"{exc.code}: {exc}"
        return result.text, None

    def should_translate_partial(self, segment_id: Hashable, now: float | None = None) -> bool:
        """True when a partial of `segment_id` may be translated now (at most one per
        `partial_min_interval_s`). Finals need no check; call `forget_segment` after one."""
        return self.partials.should_translate(segment_id, self._clock() if now is None else now)

    def forget_segment(self, segment_id: Hashable) -> None:
        self.partials.forget(segment_id)

    def _count_error(self, code: str) -> None:
        self.failures += 1
        self.errors_by_code[code] = self.errors_by_code.get(code, 0) + 1

    # --- status --------------------------------------------------------------------------

    def breaker_snapshot(self) -> dict[str, object] | None:
        return self.translator.breaker_snapshot() if self.translator is not None else None

    async def health(self) -> dict[str, Any]:
        """{"status": "healthy"|"unhealthy", "backend", "model", "breaker", "details"}; never raises."""
        if self.translator is None:
            details: dict[str, Any] = {"status": "unhealthy", "error": "translation is disabled (TRANSLATE_BACKEND=none)"}
        else:
            try:
                details = await self.translator.health()
            except Exception as exc:
                details = {"status": "unhealthy", "error": f"{exc.__class__.__name__}: {exc}"}
        return {
            "status": "healthy" if details.get("status") == "healthy" else "unhealthy",
            "backend": self.backend,
            "model": self.model_info,
            "breaker": self.breaker_snapshot(),
            "details": details,
        }

    def stats(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": self.model_info,
            "requests": self.requests,
            "cache_hits": self.cache.hits,
            "cache": self.cache.stats(),
            "backend_calls": self.backend_calls,
            "failures": self.failures,
            "errors_by_code": dict(self.errors_by_code),
            "breaker": self.breaker_snapshot(),
            "latency_ms": self.latency.summary_ms(),
            "partials": {"allowed": self.partials.allowed, "skipped": self.partials.skipped},
            "backend_stats": self.translator.stats() if self.translator is not None else {},
        }

    async def close(self) -> None:
        if self.translator is not None:
            await self.translator.close()
