"""The translator interface, its result and error types, and language-code helpers.

Every backend (Apertium, an OpenAI-compatible server) speaks this interface so the caption
stage, the HTTP API and the BYOC capability never care which one runs.
"""

from __future__ import annotations

import asyncio
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from inference.openai_client import Usage  # token counts, the OpenAI shape every backend reports

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class TranslationResult:
    text: str
    source_language: str
    target_language: str
    model_info: str
    usage: Usage | None = None  # {prompt_tokens, completion_tokens, total_tokens} when the backend counts
    cached: bool = False
    # Which backend answered ("none" for a source text passed through untranslated).
    backend: str = ""
    # The backend's own evidence, 0..1 (token probabilities, share of known words), None if it has none.
    backend_score: float | None = None
    # Final score 0..1 after the quality checks (see quality.py); None until assessed.
    confidence: float | None = None
    quality_flags: tuple[str, ...] = ()
    untranslated: bool = False


@dataclass(frozen=True)
class ContextTurn:
    """One earlier sentence of the same session and its translation (prompt context)."""

    source: str
    translation: str


@dataclass(frozen=True)
class LanguageSupport:
    """What one backend can translate: explicit `pairs` ((source, target) codes as callers
    write them), or any pair among `languages` when `any_pair` (LLM backends)."""

    pairs: tuple[tuple[str, str], ...] = ()
    languages: tuple[str, ...] = ()
    any_pair: bool = False

    def describe(self) -> list[str]:
        if self.any_pair:
            return [f"any pair of {', '.join(self.languages)}"] if self.languages else []
        return [f"{s}->{t}" for s, t in self.pairs]


class TranslationError(Exception):
    """A translation that could not be done. `code` is stable (used in API errors and stats; the
    HTTP status for each code is the edge's, httpapi/errors.py); `retryable` says whether trying
    again later may help (backend down) or not (unsupported pair)."""

    def __init__(self, message: str, *, code: str = "translation_failed", retryable: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable

    @property
    def message(self) -> str:
        return str(self)


class UnsupportedLanguagePairError(TranslationError):
    def __init__(self, source: str, target: str, available: Sequence[str]) -> None:
        listed = ", ".join(available) if available else "none installed"
        super().__init__(
            f"language pair {source}->{target} is not supported; available pairs: {listed}",
            code="unsupported_language_pair",
            retryable=False,
        )
        self.available = list(available)


def sum_usage(usages: Sequence[Usage | None]) -> Usage | None:
    """Adds token counts; None when no item had any."""
    present = [u for u in usages if u]
    if not present:
        return None
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    return {k: sum(int(u.get(k, 0)) for u in present) for k in keys}


async def gather_all_or_cancel(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Await all calls together; on the first failure cancel the rest and raise that error
    (unwrapped from the TaskGroup's ExceptionGroup)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_as_coroutine(c)) for c in calls]
    except BaseExceptionGroup as grouped:
        first = grouped.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [t.result() for t in tasks]


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


class BoundedConcurrency:
    """A semaphore that also caps how many callers may wait for it: past `max_pending` waiters a
    call is refused at once (counted) instead of queueing without bound."""

    def __init__(self, max_concurrency: int, max_pending: int, name: str) -> None:
        self._semaphore = asyncio.Semaphore(max(1, max_concurrency))
        self.max_concurrency = max(1, max_concurrency)
        self.max_pending = max(0, max_pending)
        self.name = name
        self._waiting = 0
        self.in_flight = 0
        self.rejected = 0

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        if self._semaphore.locked() and self._waiting >= self.max_pending:
            self.rejected += 1
            raise TranslationError(
                f"{self.name} is overloaded ({self.in_flight} running, {self._waiting} waiting)",
                code="overloaded",
            )
        self._waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self._waiting -= 1
        self.in_flight += 1
        try:
            return await call()
        finally:
            self.in_flight -= 1
            self._semaphore.release()

    def snapshot(self) -> dict[str, int]:
        return {
            "max_concurrency": self.max_concurrency,
            "in_flight": self.in_flight,
            "waiting": self._waiting,
            "rejected": self.rejected,
        }


class Translator(ABC):
    """One translation backend. Implementations must be safe to call concurrently from one
    event loop and must never block it."""

    name: str = "translator"

    @property
    def model_info(self) -> str:
        return self.name

    # True for backends that read `context` (LLMs); the service skips building it otherwise.
    uses_context: bool = False

    @abstractmethod
    async def translate(
        self, text: str, source_lang: str, target_lang: str, context: Sequence[ContextTurn] = ()
    ) -> TranslationResult:
        """Translate one text, seeing earlier sentences of its session; raises TranslationError."""

    async def translate_batch(
        self, texts: Sequence[str], source_lang: str, target_lang: str
    ) -> list[TranslationResult]:
        """Translate several texts, results in input order; raises the first TranslationError.
        Backends bound their own concurrency, so starting them together is safe."""
        return await gather_all_or_cancel([self.translate(t, source_lang, target_lang) for t in texts])

    @abstractmethod
    async def language_support(self) -> LanguageSupport:
        """The pairs this backend can do (for GET /translate/languages and 400 messages)."""

    @abstractmethod
    async def health(self) -> dict[str, Any]:
        """{"status": "healthy"|"unhealthy", ...details}; never raises."""

    def breaker_snapshot(self) -> dict[str, object] | None:
        """The circuit breaker's state, for backends that have one."""
        return None

    def stats(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        """Release sessions/processes; safe to call twice."""


# --- language codes -------------------------------------------------------------------------

# ISO 639-1 → ISO 639-3 (the codes Apertium names its pairs with) and English names (for LLM prompts).
_LANGUAGES: dict[str, tuple[str, str]] = {
    "af": ("afr", "Afrikaans"),
    "an": ("arg", "Aragonese"),
    "ar": ("ara", "Arabic"),
    "ast": ("ast", "Asturian"),
    "be": ("bel", "Belarusian"),
    "bg": ("bul", "Bulgarian"),
    "br": ("bre", "Breton"),
    "bs": ("bos", "Bosnian"),
    "ca": ("cat", "Catalan"),
    "cs": ("ces", "Czech"),
    "cy": ("cym", "Welsh"),
    "da": ("dan", "Danish"),
    "de": ("deu", "German"),
    "el": ("ell", "Greek"),
    "en": ("eng", "English"),
    "eo": ("epo", "Esperanto"),
    "es": ("spa", "Spanish"),
    "et": ("est", "Estonian"),
    "eu": ("eus", "Basque"),
    "fa": ("fas", "Persian"),
    "fi": ("fin", "Finnish"),
    "fr": ("fra", "French"),
    "ga": ("gle", "Irish"),
    "gl": ("glg", "Galician"),
    "he": ("heb", "Hebrew"),
    "hi": ("hin", "Hindi"),
    "hr": ("hrv", "Croatian"),
    "hu": ("hun", "Hungarian"),
    "id": ("ind", "Indonesian"),
    "is": ("isl", "Icelandic"),
    "it": ("ita", "Italian"),
    "ja": ("jpn", "Japanese"),
    "kk": ("kaz", "Kazakh"),
    "ko": ("kor", "Korean"),
    "lt": ("lit", "Lithuanian"),
    "lv": ("lav", "Latvian"),
    "mk": ("mkd", "Macedonian"),
    "ms": ("msa", "Malay"),
    "mt": ("mlt", "Maltese"),
    "nb": ("nob", "Norwegian Bokmål"),
    "nl": ("nld", "Dutch"),
    "nn": ("nno", "Norwegian Nynorsk"),
    "no": ("nob", "Norwegian"),
    "oc": ("oci", "Occitan"),
    "pl": ("pol", "Polish"),
    "pt": ("por", "Portuguese"),
    "ro": ("ron", "Romanian"),
    "ru": ("rus", "Russian"),
    "se": ("sme", "Northern Sami"),
    "sk": ("slk", "Slovak"),
    "sl": ("slv", "Slovenian"),
    "sq": ("sqi", "Albanian"),
    "sr": ("srp", "Serbian"),
    "sv": ("swe", "Swedish"),
    "sw": ("swa", "Swahili"),
    "th": ("tha", "Thai"),
    "tr": ("tur", "Turkish"),
    "uk": ("ukr", "Ukrainian"),
    "ur": ("urd", "Urdu"),
    "vi": ("vie", "Vietnamese"),
    "zh": ("zho", "Chinese"),
}
_NAMES_BY_ISO3 = {iso3: name for iso3, name in _LANGUAGES.values()}

LANGUAGE_CODE_PATTERN = r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8}){0,2}$"
_LANGUAGE_CODE_RE = re.compile(LANGUAGE_CODE_PATTERN)


def split_language_code(code: str) -> tuple[str, str | None]:
    """'en-US' → ('en', 'US'); 'spa' → ('spa', None). Raises TranslationError on junk."""
    code = code.strip()
    if not _LANGUAGE_CODE_RE.match(code):
        raise TranslationError(f"invalid language code {code!r}", code="invalid_language", retryable=False)
    parts = re.split(r"[-_]", code)
    base = parts[0].lower()
    region = parts[1].upper() if len(parts) > 1 else None
    return base, region


def to_iso639_3(base: str) -> str:
    """'en' → 'eng'; three-letter codes pass through."""
    return _LANGUAGES[base][0] if base in _LANGUAGES else base


def language_name(code: str) -> str:
    """An English name for prompts: 'es' → 'Spanish', 'pt-BR' → 'Portuguese (BR)'; unknown codes
    come back as given so the model still sees something meaningful."""
    try:
        base, region = split_language_code(code)
    except TranslationError:
        return code
    name = _LANGUAGES[base][1] if base in _LANGUAGES else _NAMES_BY_ISO3.get(base, code)
    return f"{name} ({region})" if region else name


KNOWN_LANGUAGES: tuple[str, ...] = tuple(sorted(code for code in _LANGUAGES if len(code) == 2))


def to_iso639_1(code: str) -> str:
    """'spa' → 'es', 'eng_US' → 'en-US' (Apertium mode parts to the codes callers send)."""
    base, _, region = code.partition("_")
    short = next((two for two, (three, _name) in _LANGUAGES.items() if three == base and len(two) == 2), base)
    return f"{short}-{region}" if region else short


def is_known_language(code: str) -> bool:
    try:
        base, _ = split_language_code(code)
    except TranslationError:
        return False
    return base in _LANGUAGES or base in _NAMES_BY_ISO3


def same_language(source: str, target: str) -> bool:
    try:
        (sb, sr), (tb, tr) = split_language_code(source), split_language_code(target)
    except TranslationError:
        return False
    return to_iso639_3(sb) == to_iso639_3(tb) and (sr == tr or sr is None or tr is None)
