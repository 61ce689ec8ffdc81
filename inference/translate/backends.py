"""The ordered list of translation backends (`TRANSLATE_BACKENDS`), each behind its own circuit
breaker and time limit, tried in order until one answers.

    vllm,triton,apertium  →  try vLLM; if it is down, slow, answering garbage or its breaker is
                             open, try Triton; then Apertium; then hand the source text back
                             marked `untranslated` (never a stalled caption).

What moves on to the next backend: a timeout, a connection error, 5xx/429, an answer that is not
a translation, an open breaker, a pair the backend cannot do, a request it refuses (4xx). Only
the first three kinds count against a breaker (a refusal proves the backend is up). Bad input
(an invalid language code) is the caller's and is raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from inference.resilience import CircuitBreaker, CircuitOpenError

from .base import ContextTurn, TranslationError, TranslationResult, Translator, UnsupportedLanguagePairError
from .quality import assess, untranslated_result

log = logging.getLogger(__name__)

# Errors that are the caller's fault: no other backend would do better.
CALLER_ERRORS = frozenset({"invalid_language", "text_too_long", "too_many_texts", "invalid_request"})


def _is_backend_failure(exc: Exception) -> bool:
    """Counts against the breaker: the backend is down, slow or broken (not: it said no)."""
    if isinstance(exc, TranslationError):
        return exc.retryable and exc.code not in CALLER_ERRORS
    return True


@dataclass
class BackendSlot:
    translator: Translator
    breaker: CircuitBreaker
    timeout: float
    answered: int = 0
    failed: int = 0
    skipped_open: int = 0
    unsupported: int = 0
    last_error: str | None = None

    @property
    def name(self) -> str:
        return self.translator.name

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.translator.model_info,
            "breaker": self.breaker.snapshot(),
            "answered": self.answered,
            "failed": self.failed,
            "skipped_open": self.skipped_open,
            "unsupported": self.unsupported,
            "last_error": self.last_error,
            "timeout_s": self.timeout,
        }


@dataclass
class ChainOutcome:
    results: list[TranslationResult]
    tried: list[str] = field(default_factory=list)  # backends that failed before the answer


class BackendChain:
    def __init__(
        self,
        translators: Sequence[Translator],
        *,
        timeout: float = 10.0,
        timeouts: dict[str, float] | None = None,
        breaker_threshold: int = 5,
        breaker_reset_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slots = [
            BackendSlot(
                t,
                CircuitBreaker(
                    f"translate:{t.name}",
                    failure_threshold=max(1, breaker_threshold),
                    reset_timeout=breaker_reset_s,
                    clock=clock,
                ),
                (timeouts or {}).get(t.name, timeout),
            )
            for t in translators
        ]
        self.fallbacks = 0  # answers that were the source text, untranslated

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.slots]

    @property
    def uses_context(self) -> bool:
        return any(s.translator.uses_context for s in self.slots)

    async def translate(self, text: str, source: str, target: str, context: Sequence[ContextTurn] = ()) -> ChainOutcome:
        return await self._run([text], source, target, context, single=True)

    async def translate_batch(self, texts: Sequence[str], source: str, target: str) -> ChainOutcome:
        return await self._run(list(texts), source, target, (), single=False)

    async def _run(
        self, texts: list[str], source: str, target: str, context: Sequence[ContextTurn], single: bool
    ) -> ChainOutcome:
        if not self.slots:
            raise TranslationError(
                "translation is disabled (TRANSLATE_BACKENDS=none)",
                code="translation_disabled",
                retryable=False,
            )
        tried: list[str] = []
        unsupported: list[Translator] = []
        errors: list[str] = []
        for slot in self.slots:

            async def attempt(slot: BackendSlot = slot) -> list[TranslationResult]:
                async def call() -> list[TranslationResult]:
                    if single:
                        return [await slot.translator.translate(texts[0], source, target, context)]
                    return list(await slot.translator.translate_batch(texts, source, target))

                try:
                    results = await asyncio.wait_for(call(), slot.timeout)
                except TimeoutError:
                    raise TranslationError(
                        f"{slot.name} did not answer within {slot.timeout:.1f} s",
                        code="backend_timeout",
                    ) from None
                _check_answer(slot.name, texts, results)
                return results

            try:
                results = await slot.breaker.call(attempt, is_failure=_is_backend_failure)
            except CircuitOpenError:
                slot.skipped_open += 1
                tried.append(slot.name)
                errors.append(f"{slot.name}: circuit open")
                continue
            except UnsupportedLanguagePairError:
                slot.unsupported += 1
                unsupported.append(slot.translator)
                continue
            except TranslationError as exc:
                if exc.code in CALLER_ERRORS:
                    raise
                slot.failed += 1
                slot.last_error = f"{exc.code}: {exc}"
                tried.append(slot.name)
                errors.append(f"{slot.name}: {exc.code}")
                log.warning("translation backend %s failed (%s); trying the next one", slot.name, slot.last_error)
                continue
            except Exception as exc:  # a backend bug must not take the chain down
                slot.failed += 1
                slot.last_error = f"internal_error: {exc.__class__.__name__}: {exc}"
                tried.append(slot.name)
                errors.append(f"{slot.name}: internal_error")
                log.exception("translation backend %s raised unexpectedly", slot.name)
                continue
            slot.answered += 1
            assessed = [assess(replace(r, backend=r.backend or slot.name), t) for r, t in zip(results, texts)]
            return ChainOutcome(assessed, tried)

        if len(unsupported) == len(self.slots):
            raise UnsupportedLanguagePairError(source, target, await self.available_pairs())
        self.fallbacks += 1
        log.warning(
            "every translation backend failed for %s->%s (%s); passing the source text through",
            source,
            target,
            "; ".join(errors),
        )
        return ChainOutcome([untranslated_result(t, source, target) for t in texts], tried)

    async def available_pairs(self) -> list[str]:
        """'apertium: en->es, es->en' per backend, for error messages."""
        described = []
        for slot in self.slots:
            try:
                support = await slot.translator.language_support()
            except Exception as exc:  # a listing must never fail the request that asks for it
                described.append(f"{slot.name}: unknown ({exc.__class__.__name__})")
                continue
            pairs = support.describe()
            described.append(f"{slot.name}: {', '.join(pairs) if pairs else 'none installed'}")
        return described

    async def languages(self) -> list[dict[str, Any]]:
        """For GET /translate/languages: every backend's pairs and whether it is usable now."""
        listed = []
        for slot in self.slots:
            entry: dict[str, Any] = {"backend": slot.name, "breaker": slot.breaker.state}
            try:
                support = await slot.translator.language_support()
            except Exception as exc:
                entry.update(pairs=[], any_pair=False, languages=[], error=f"{exc.__class__.__name__}: {exc}")
            else:
                entry.update(
                    pairs=[{"source": s, "target": t} for s, t in support.pairs],
                    any_pair=support.any_pair,
                    languages=list(support.languages),
                )
            listed.append(entry)
        return listed

    def snapshot(self) -> list[dict[str, Any]]:
        return [s.snapshot() for s in self.slots]

    async def close(self) -> None:
        for slot in self.slots:
            try:
                await slot.translator.close()
            except Exception:
                log.exception("closing translation backend %s failed", slot.name)


def _check_answer(name: str, texts: list[str], results: list[TranslationResult]) -> None:
    """An answer with the wrong count, or empty for a non-empty text, is garbage."""
    if len(results) != len(texts):
        raise TranslationError(
            f"{name} answered {len(results)} translations for {len(texts)} texts",
            code="bad_backend_response",
        )
    for text, result in zip(texts, results):
        if text.strip() and not result.text.strip():
            raise TranslationError(f"{name} answered an empty translation", code="bad_backend_response")
