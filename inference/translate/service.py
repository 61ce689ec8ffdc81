"""TranslationService: the one object the rest of the server talks to for translation.

It owns the ordered backend list (backends.py: breakers, fallback), the sessions (sessions.py:
history and context), a bounded LRU cache keyed on text *and* context, language detection for
`source_lang: "auto"`, stats, and the partial-caption rate limiter. `translate_for_captions`
returns an error value instead of raising so a failing backend can never take a caption stream
down with it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from ssl import SSLContext
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inference.openai_client import chat_completions_url
from media.stats import LatencyWindow

from .apertium import ApertiumTranslator
from .backends import BackendChain
from .base import (
    BoundedConcurrency,
    ContextTurn,
    TranslationError,
    TranslationResult,
    Translator,
    same_language,
    split_language_code,
)
from .cache import LRUCache
from .langdetect import AUTO, detect_language
from .ollama import DEFAULT_OLLAMA_ENDPOINT, OllamaTranslator
from .openai_compat import OpenAICompatTranslator
from .quality import assess
from .sessions import SessionStore, TranslationSession
from .triton import TritonTranslator, parse_pairs

# url → the `ssl` argument of aiohttp for that endpoint (the server's TlsPolicy.ssl_for)
SslFor = Callable[[str], "SSLContext | bool"]

log = logging.getLogger(__name__)

BackendName = Literal["apertium", "openai", "vllm", "ollama", "triton", "none"]
BACKEND_KINDS = ("apertium", "openai", "vllm", "ollama", "triton")


def _env(*names: str) -> AliasChoices:
    """Env var names of a backend's own settings (APERTIUM_*, VLLM_*: no TRANSLATE_ prefix); the field
    name itself stays accepted as a keyword."""
    return AliasChoices(*names)


class TranslateSettings(BaseSettings):
    """Translation settings; each description starts with its environment variable."""

    model_config = SettingsConfigDict(
        env_prefix="TRANSLATE_", case_sensitive=False, extra="ignore", populate_by_name=True
    )

    backends: str = Field(
        "",
        description="TRANSLATE_BACKENDS: ordered, comma-separated: vllm (= openai), ollama, triton, apertium; "
        "each is tried when the ones before it fail. Unset → TRANSLATE_BACKEND, else vllm,apertium when "
        "VLLM_ENDPOINT is set, else apertium",
    )
    backend: BackendName | None = Field(
        None, description="TRANSLATE_BACKEND: one backend (older form of TRANSLATE_BACKENDS); none disables translation"
    )
    cache_size: int = Field(1024, ge=0, description="TRANSLATE_CACHE_SIZE: LRU entries (0 disables)")
    max_text_chars: int = Field(5000, ge=1, description="TRANSLATE_MAX_TEXT_CHARS: longest text accepted")
    max_batch_texts: int = Field(64, ge=1, description="TRANSLATE_MAX_BATCH_TEXTS: most texts in one batch")
    max_pending: int = Field(64, ge=0, description="TRANSLATE_MAX_PENDING: callers allowed to wait for a backend slot")
    latency_window: int = Field(512, ge=1, description="samples kept for latency percentiles")
    backend_timeout_s: float = Field(
        10.0,
        gt=0,
        description="TRANSLATE_BACKEND_TIMEOUT_S: longest wait for one remote backend (vLLM, Ollama, "
        "Triton) before the next is tried; Apertium uses APERTIUM_TIMEOUT_S",
    )
    breaker_threshold: int = Field(
        5,
        ge=1,
        description="TRANSLATE_BREAKER_THRESHOLD: consecutive failures that open a backend's breaker",
    )
    breaker_reset_s: float = Field(
        30.0,
        gt=0,
        description="TRANSLATE_BREAKER_RESET_S: seconds a breaker stays open before a probe",
    )

    # -- context and sessions
    context_sentences: int = Field(
        3, ge=0, le=20, description="TRANSLATE_CONTEXT_SENTENCES: earlier sentences of the session in an LLM prompt"
    )
    context_max_chars: int = Field(
        2000, ge=0, description="TRANSLATE_CONTEXT_MAX_CHARS: most characters of context (source + translation)"
    )
    session_ttl: float = Field(900.0, gt=0, description="TRANSLATE_SESSION_TTL: seconds an unused session is kept")
    max_sessions: int = Field(
        1024, ge=1, description="TRANSLATE_MAX_SESSIONS: sessions kept; the least recently used goes first"
    )
    session_history: int = Field(50, ge=1, description="TRANSLATE_SESSION_HISTORY: translations kept per session")
    session_max_pending: int = Field(
        16,
        ge=0,
        description="TRANSLATE_SESSION_MAX_PENDING: requests waiting on one session (its sentences go in order)",
    )

    # -- WebSocket /translate/stream
    ws_max_in_flight: int = Field(
        8, ge=1, description="TRANSLATE_WS_MAX_IN_FLIGHT: messages one connection has in work"
    )
    ws_send_timeout_s: float = Field(
        5.0, gt=0, description="TRANSLATE_WS_SEND_TIMEOUT_S: a client that does not read a reply this long is closed"
    )
    ws_max_bad_messages: int = Field(
        3, ge=1, description="TRANSLATE_WS_MAX_BAD_MESSAGES: invalid messages before the connection is closed"
    )
    ws_max_message_bytes: int = Field(64 << 10, ge=1024, description="TRANSLATE_WS_MAX_MESSAGE_BYTES: largest message")
    ws_max_connections: int = Field(
        64, ge=1, description="TRANSLATE_WS_MAX_CONNECTIONS: open /translate/stream sockets"
    )

    # -- Apertium
    apertium_binary: str = Field(
        "apertium", validation_alias=_env("APERTIUM_BINARY", "apertium_binary"), description="APERTIUM_BINARY"
    )
    apertium_data_dir: str | None = Field(
        None,
        validation_alias=_env("APERTIUM_DATA_DIR", "apertium_data_dir"),
        description="APERTIUM_DATA_DIR: passed as `apertium -d`",
    )
    apertium_timeout_s: float = Field(
        10.0, gt=0, validation_alias=_env("APERTIUM_TIMEOUT_S", "apertium_timeout_s"), description="APERTIUM_TIMEOUT_S"
    )
    apertium_max_concurrency: int = Field(
        2,
        ge=1,
        validation_alias=_env("APERTIUM_MAX_CONCURRENCY", "apertium_max_concurrency"),
        description="APERTIUM_MAX_CONCURRENCY: subprocesses at once",
    )

    # -- vLLM / any OpenAI-compatible server
    vllm_endpoint: str | None = Field(
        None,
        validation_alias=_env("VLLM_ENDPOINT", "vllm_endpoint"),
        description="VLLM_ENDPOINT: base URL, with or without /v1",
    )
    vllm_model: str | None = Field(
        None,
        validation_alias=_env("VLLM_MODEL", "vllm_model"),
        description="VLLM_MODEL: unset → first model of /v1/models",
    )
    vllm_api_key: SecretStr | None = Field(
        None,
        validation_alias=_env("VLLM_API_KEY", "vllm_api_key"),
        description="VLLM_API_KEY: sent as a Bearer token",
    )
    vllm_timeout_s: float = Field(
        30.0,
        gt=0,
        validation_alias=_env("VLLM_TIMEOUT_S", "vllm_timeout_s"),
        description="VLLM_TIMEOUT_S: per HTTP attempt",
    )
    vllm_max_retries: int = Field(
        2,
        ge=0,
        validation_alias=_env("VLLM_MAX_RETRIES", "vllm_max_retries"),
        description="VLLM_MAX_RETRIES: retries after the first attempt",
    )
    vllm_retry_base_delay_s: float = Field(
        0.25,
        ge=0,
        validation_alias=_env("VLLM_RETRY_BASE_DELAY_S", "vllm_retry_base_delay_s"),
        description="VLLM_RETRY_BASE_DELAY_S",
    )
    vllm_retry_max_delay_s: float = Field(
        4.0,
        ge=0,
        validation_alias=_env("VLLM_RETRY_MAX_DELAY_S", "vllm_retry_max_delay_s"),
        description="VLLM_RETRY_MAX_DELAY_S",
    )
    vllm_max_concurrency: int = Field(
        8,
        ge=1,
        validation_alias=_env("VLLM_MAX_CONCURRENCY", "vllm_max_concurrency"),
        description="VLLM_MAX_CONCURRENCY: requests in flight",
    )
    vllm_max_output_tokens: int = Field(
        1024,
        ge=16,
        validation_alias=_env("VLLM_MAX_OUTPUT_TOKENS", "vllm_max_output_tokens"),
        description="VLLM_MAX_OUTPUT_TOKENS: cap on max_tokens",
    )
    vllm_temperature: float = Field(
        0.0, ge=0, le=2, validation_alias=_env("VLLM_TEMPERATURE", "vllm_temperature"), description="VLLM_TEMPERATURE"
    )
    vllm_system_prompt: str | None = Field(
        None,
        validation_alias=_env("VLLM_SYSTEM_PROMPT", "vllm_system_prompt"),
        description="VLLM_SYSTEM_PROMPT: template with {source} and {target} language names",
    )
    vllm_extra_body: dict[str, Any] = Field(
        default_factory=dict,
        validation_alias=_env("VLLM_EXTRA_BODY", "vllm_extra_body"),
        description='VLLM_EXTRA_BODY (JSON): extra request fields, e.g. {"chat_template_kwargs": {"enable_thinking": false}}',
    )
    vllm_logprobs: bool = Field(
        True,
        validation_alias=_env("VLLM_LOGPROBS", "vllm_logprobs"),
        description="VLLM_LOGPROBS: ask for token log-probabilities (the confidence evidence); off for servers that refuse it",
    )
    llm_languages: str = Field(
        "",
        description="TRANSLATE_LLM_LANGUAGES: comma-separated codes the LLM backends may translate between "
        "(empty: every language streamlens names)",
    )

    # -- Ollama (its OpenAI-compatible /v1 API)
    ollama_endpoint: str = Field(DEFAULT_OLLAMA_ENDPOINT, description="TRANSLATE_OLLAMA_ENDPOINT: Ollama's base URL")
    ollama_model: str | None = Field(
        None, description="TRANSLATE_OLLAMA_MODEL: model tag, e.g. qwen2.5:3b (required for ollama)"
    )

    # -- Triton (KServe v2 HTTP)
    triton_url: str = Field("http://127.0.0.1:8000", description="TRANSLATE_TRITON_URL: Triton's HTTP endpoint")
    triton_model: str = Field(
        "translator", description="TRANSLATE_TRITON_MODEL: model name (see README for its tensors)"
    )
    triton_pairs: str = Field(
        "en-es", description="TRANSLATE_TRITON_PAIRS: comma-separated pairs the model can do, e.g. en-es,es-en"
    )

    @field_validator("vllm_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        chat_completions_url(value)  # raises ValueError → a clear settings error
        return value.strip()

    @field_validator("backends")
    @classmethod
    def _check_backends(cls, value: str) -> str:
        names = [n.strip().lower() for n in value.split(",") if n.strip()]
        unknown = [n for n in names if n not in BACKEND_KINDS and n != "none"]
        if unknown:
            raise ValueError(f"unknown translation backend(s) {unknown}; choose from {', '.join(BACKEND_KINDS)}")
        if len(set(names)) != len(names):
            raise ValueError("a backend is listed twice")
        return ",".join(names)

    @field_validator("triton_pairs")
    @classmethod
    def _check_pairs(cls, value: str) -> str:
        parse_pairs(value)
        return value

    @property
    def backend_list(self) -> list[str]:
        """The backends to try, in order ([] when translation is off)."""
        if self.backends:
            names = self.backends.split(",")
        elif self.backend is not None:
            names = [self.backend]
        else:
            names = ["openai", "apertium"] if self.vllm_endpoint else ["apertium"]
        return [n for n in names if n != "none"]

    @property
    def effective_backend(self) -> str:
        """The first backend tried ('none' when translation is off)."""
        names = self.backend_list
        return names[0] if names else "none"


def build_translator(name: str, settings: TranslateSettings, ssl_for: SslFor | None = None) -> Translator:
    """One backend by its TRANSLATE_BACKENDS name. `ssl_for(url)`: the TLS choice for an HTTPS
    endpoint (the server's TlsPolicy: TLS_CA_FILE, TLS_INSECURE_HOSTS); default verified."""
    ssl_of = ssl_for or (lambda _url: True)
    languages = tuple(c.strip() for c in settings.llm_languages.split(",") if c.strip())
    if name == "apertium":
        return ApertiumTranslator(
            binary=settings.apertium_binary,
            data_dir=settings.apertium_data_dir,
            timeout=settings.apertium_timeout_s,
            max_concurrency=settings.apertium_max_concurrency,
            max_pending=settings.max_pending,
        )
    llm_options: dict[str, Any] = dict(
        timeout=settings.vllm_timeout_s,
        max_retries=settings.vllm_max_retries,
        retry_base_delay=settings.vllm_retry_base_delay_s,
        retry_max_delay=settings.vllm_retry_max_delay_s,
        max_concurrency=settings.vllm_max_concurrency,
        max_pending=settings.max_pending,
        max_output_tokens=settings.vllm_max_output_tokens,
        temperature=settings.vllm_temperature,
        system_prompt=settings.vllm_system_prompt,
        request_logprobs=settings.vllm_logprobs,
        languages=languages,
    )
    if name in ("openai", "vllm"):
        if not settings.vllm_endpoint:
            raise ValueError(f"translation backend {name} needs VLLM_ENDPOINT")
        return OpenAICompatTranslator(
            settings.vllm_endpoint,
            settings.vllm_model,
            api_key=settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None,
            extra_body=settings.vllm_extra_body,
            name=name,
            ssl=ssl_of(settings.vllm_endpoint),
            **llm_options,
        )
    if name == "ollama":
        return OllamaTranslator(
            settings.ollama_endpoint, settings.ollama_model, ssl=ssl_of(settings.ollama_endpoint), **llm_options
        )
    if name == "triton":
        return TritonTranslator(
            settings.triton_url,
            settings.triton_model,
            pairs=parse_pairs(settings.triton_pairs),
            timeout=settings.backend_timeout_s,
            max_concurrency=settings.vllm_max_concurrency,
            max_pending=settings.max_pending,
        )
    raise ValueError(f"unknown translation backend {name!r}")


def build_translators(settings: TranslateSettings, ssl_for: SslFor | None = None) -> list[Translator]:
    return [build_translator(name, settings, ssl_for) for name in settings.backend_list]


class CaptionTranslation(tuple):
    """What `translate_for_captions` returns: unpacks as `(text, error)` like before, and also
    carries `confidence`, `quality_flags` and `backend` for the caption event."""

    confidence: float | None
    quality_flags: tuple[str, ...]
    backend: str

    def __new__(
        cls,
        text: str | None,
        error: str | None,
        *,
        confidence: float | None = None,
        quality_flags: Sequence[str] = (),
        backend: str = "",
    ) -> CaptionTranslation:
        self = super().__new__(cls, (text, error))
        self.confidence = confidence
        self.quality_flags = tuple(quality_flags)
        self.backend = backend
        return self

    @property
    def text(self) -> str | None:
        return self[0]

    @property
    def error(self) -> str | None:
        return self[1]


CacheKey = tuple[str, str, str, str]


class TranslationService:
    """Backends + sessions + cache + stats. `translate`/`translate_batch` raise TranslationError
    (for the HTTP API) only for bad input, an unsupported pair or disabled translation; when every
    backend fails they answer the source text marked `untranslated`. `translate_for_captions`
    never raises."""

    def __init__(
        self,
        settings: TranslateSettings | None = None,
        translator: Translator | Sequence[Translator] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        ssl_for: SslFor | None = None,
    ) -> None:
        self.settings = settings or TranslateSettings()
        self._clock = clock
        if translator is None:
            translators = build_translators(self.settings, ssl_for)
        elif isinstance(translator, Translator):
            translators = [translator]
        else:
            translators = list(translator)
        self.chain = BackendChain(
            translators,
            timeout=self.settings.backend_timeout_s,
            # Apertium is local: its own limit (it kills its pipeline on expiry) is the one that counts
            timeouts={"apertium": self.settings.apertium_timeout_s + 1.0},
            breaker_threshold=self.settings.breaker_threshold,
            breaker_reset_s=self.settings.breaker_reset_s,
            clock=clock,
        )
        self.backend = ",".join(self.chain.names) or "none"
        self.sessions = SessionStore(
            self.settings.max_sessions, self.settings.session_history, self.settings.session_ttl, clock=clock
        )
        self.cache: LRUCache[CacheKey, TranslationResult] = LRUCache(self.settings.cache_size)
        self.latency = LatencyWindow(self.settings.latency_window)
        self.requests = 0
        self.failures = 0
        self.backend_calls = 0
        self.untranslated = 0
        self.detections = 0
        self.errors_by_code: dict[str, int] = {}  # keys are a small fixed set of codes

    @property
    def enabled(self) -> bool:
        return bool(self.chain.slots)

    @property
    def model_info(self) -> str:
        return self.chain.slots[0].translator.model_info if self.chain.slots else "none"

    # --- translation ---------------------------------------------------------------------

    def _check_input(self, texts: Sequence[str], source: str, target: str) -> None:
        if not self.chain.slots:
            raise TranslationError(
                "translation is disabled (TRANSLATE_BACKENDS=none)",
                code="translation_disabled",
                retryable=False,
            )
        if len(texts) > self.settings.max_batch_texts:
            raise TranslationError(
                f"{len(texts)} texts in one batch; the limit is {self.settings.max_batch_texts}",
                code="too_many_texts",
                retryable=False,
            )
        for text in texts:
            if len(text) > self.settings.max_text_chars:
                raise TranslationError(
                    f"text has {len(text)} characters; the limit is {self.settings.max_text_chars}",
                    code="text_too_long",
                    retryable=False,
                )
        if source != AUTO:
            split_language_code(source)  # validates both codes before any work
        split_language_code(target)

    def _key(self, text: str, source: str, target: str, context: Sequence[ContextTurn]) -> CacheKey:
        digest = ""
        if context:
            joined = "\x1f".join(f"{t.source}\x1e{t.translation}" for t in context)
            digest = hashlib.blake2b(joined.encode("utf-8"), digest_size=12).hexdigest()
        return (source.lower(), target.lower(), " ".join(text.split()), digest)

    async def translate(
        self, text: str, source_lang: str, target_lang: str, session_id: str | None = None
    ) -> TranslationResult:
        """Translate one text (cached; in its session's context when `session_id` is given)."""
        return (await self.translate_batch([text], source_lang, target_lang, session_id))[0]

    async def translate_batch(
        self, texts: Sequence[str], source_lang: str, target_lang: str, session_id: str | None = None
    ) -> list[TranslationResult]:
        """Translate texts in order. With a session, each text sees the ones before it.
        Raises TranslationError (bad input, unsupported pair, disabled), never anything else."""
        self.requests += len(texts)
        try:
            self._check_input(texts, source_lang, target_lang)
            source = await self._resolve_source(texts, source_lang)
            if session_id is None:
                return await self._translate_independent(list(texts), source, target_lang)
            session = self.sessions.open(session_id)
            if session.gate is None:
                session.gate = BoundedConcurrency(1, self.settings.session_max_pending, f"session {session_id}")
            return await session.gate.run(lambda: self._translate_in_session(session, list(texts), source, target_lang))
        except TranslationError as exc:
            self._count_error(exc.code)
            raise
        except Exception as exc:  # a bug must still surface as a clean error value
            log.exception("translation failed unexpectedly")
            self._count_error("internal_error")
            raise TranslationError(f"translation failed: {exc}", code="internal_error") from exc

    async def _resolve_source(self, texts: Sequence[str], source_lang: str) -> str:
        if source_lang != AUTO:
            return source_lang
        detected = await detect_language(" ".join(texts))
        self.detections += 1
        if detected is None:
            raise TranslationError(
                "could not detect the source language; send source_lang",
                code="language_not_detected",
                retryable=False,
            )
        return detected.code

    def _passthrough(self, text: str, source: str, target: str) -> TranslationResult | None:
        """Empty texts and same-language requests need no backend."""
        if text.strip() and not same_language(source, target):
            return None
        result = TranslationResult(text.strip(), source, target, self.model_info, backend="none")
        return assess(result, text)

    async def _translate_independent(self, texts: list[str], source: str, target: str) -> list[TranslationResult]:
        results: list[TranslationResult | None] = [None] * len(texts)
        missing: dict[CacheKey, list[int]] = {}
        for i, text in enumerate(texts):
            results[i] = self._passthrough(text, source, target)
            if results[i] is not None:
                continue
            key = self._key(text, source, target, ())
            hit = self.cache.get(key)
            if hit is not None:
                results[i] = replace(hit, source_language=source, target_language=target, cached=True, usage=None)
            else:
                missing.setdefault(key, []).append(i)
        if missing:
            keys = list(missing)
            fresh = await self._call_backends([texts[missing[k][0]] for k in keys], source, target, ())
            for key, result in zip(keys, fresh):
                if not result.untranslated:
                    self.cache.put(key, result)
                for n, i in enumerate(missing[key]):
                    # usage belongs to the one backend call; duplicates report none
                    results[i] = result if n == 0 else replace(result, usage=None, cached=True)
        return [r for r in results if r is not None]

    async def _translate_in_session(
        self, session: TranslationSession, texts: list[str], source: str, target: str
    ) -> list[TranslationResult]:
        if not self.chain.uses_context:
            results = await self._translate_independent(texts, source, target)
            for text, translated in zip(texts, results):
                if text.strip():
                    session.add(translated, text)
            return results
        results = []
        for text in texts:  # one by one: each sentence's prompt carries the ones before it
            result = self._passthrough(text, source, target)
            if result is None:
                context = session.context(
                    source, target, self.settings.context_sentences, self.settings.context_max_chars
                )
                key = self._key(text, source, target, context)
                hit = self.cache.get(key)
                if hit is not None:
                    result = replace(hit, source_language=source, target_language=target, cached=True, usage=None)
                else:
                    (result,) = await self._call_backends([text], source, target, context)
                    if not result.untranslated:
                        self.cache.put(key, result)
            if text.strip():
                session.add(result, text)
            results.append(result)
        return results

    async def _call_backends(
        self, texts: list[str], source: str, target: str, context: Sequence[ContextTurn]
    ) -> list[TranslationResult]:
        started = self._clock()
        self.backend_calls += 1
        if len(texts) == 1:
            outcome = await self.chain.translate(texts[0], source, target, context)
        else:
            outcome = await self.chain.translate_batch(texts, source, target)
        self.latency.add(max(0.0, self._clock() - started))
        self.untranslated += sum(1 for r in outcome.results if r.untranslated)
        return outcome.results

    async def translate_for_captions(
        self, text: str, source_lang: str, target_lang: str, session: str | None = None
    ) -> CaptionTranslation:
        """`(translated_text, None)` or `(None, "code: message")`, with `.confidence`,
        `.quality_flags` and `.backend`. Never raises (cancellation aside), so the caption stage
        can publish the source caption and carry on. `session` (the stream's manifest id) makes
        one session per stream and target language: `f"{session}:{target_lang}"`."""
        session_id = f"{session}:{target_lang}" if session else None
        try:
            result = await self.translate(text, source_lang, target_lang, session_id)
        except TranslationError as exc:
            log.warning("caption translation %s->%s failed: %s", source_lang, target_lang, exc)
            return CaptionTranslation(None, f"{exc.code}: {exc}", confidence=0.0, quality_flags=("untranslated",))
        if result.untranslated:
            return CaptionTranslation(
                None,
                "untranslated: every translation backend failed",
                confidence=0.0,
                quality_flags=result.quality_flags,
                backend="none",
            )
        return CaptionTranslation(
            result.text, None, confidence=result.confidence, quality_flags=result.quality_flags, backend=result.backend
        )

    def _count_error(self, code: str) -> None:
        self.failures += 1
        self.errors_by_code[code] = self.errors_by_code.get(code, 0) + 1

    # --- sessions and languages -----------------------------------------------------------

    def session_snapshot(self, session_id: str) -> dict[str, Any] | None:
        return self.sessions.snapshot(session_id)

    def end_session(self, session_id: str) -> bool:
        return self.sessions.delete(session_id)

    async def languages(self) -> dict[str, Any]:
        return {"backends": await self.chain.languages(), "auto_detect": True}

    # --- status --------------------------------------------------------------------------

    def breaker_snapshot(self) -> dict[str, object] | None:
        return self.chain.slots[0].breaker.snapshot() if self.chain.slots else None

    async def health(self) -> dict[str, Any]:
        """{"status": "healthy"|"unhealthy", "backend", "model", "breaker", "details", "backends"};
        healthy when at least one backend is. Never raises."""
        reports = []
        for slot in self.chain.slots:
            try:
                details = await slot.translator.health()
            except Exception as exc:
                details = {"status": "unhealthy", "error": f"{exc.__class__.__name__}: {exc}"}
            if slot.breaker.state == "open":
                details = {**details, "status": "unhealthy", "error": "circuit open after repeated failures"}
            reports.append({"backend": slot.name, "breaker": slot.breaker.snapshot(), **details})
        if not reports:
            first: dict[str, Any] = {
                "status": "unhealthy",
                "error": "translation is disabled (TRANSLATE_BACKENDS=none)",
            }
        else:
            first = reports[0]
        healthy = any(r.get("status") == "healthy" for r in reports)
        return {
            "status": "healthy" if healthy else "unhealthy",
            "backend": self.backend,
            "model": self.model_info,
            "breaker": self.breaker_snapshot(),
            "details": first,
            "backends": reports,
        }

    def stats(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": self.model_info,
            "requests": self.requests,
            "cache_hits": self.cache.hits,
            "cache": self.cache.stats(),
            "backend_calls": self.backend_calls,
            "untranslated": self.untranslated,
            "failures": self.failures,
            "errors_by_code": dict(self.errors_by_code),
            "breaker": self.breaker_snapshot(),
            "backends": self.chain.snapshot(),
            "sessions": self.sessions.stats(),
            "detections": self.detections,
            "latency_ms": self.latency.summary_ms(),
            "backend_stats": {s.name: s.translator.stats() for s in self.chain.slots},
        }

    async def close(self) -> None:
        await self.chain.close()
