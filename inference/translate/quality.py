"""Confidence (0..1) and quality flags for one translation.

The score starts from the backend's own evidence (`TranslationResult.backend_score`: token
probabilities from an LLM's logprobs, the share of words Apertium knew, a Triton model's own
score) and is lowered by checks any translation can be put through:

- `length_ratio`: the translation is far shorter or longer than the source (a truncated or
  run-on answer);
- `copied_source`: the "translation" is the source text again (the backend gave up);
- `no_backend_score`: the backend gave no evidence, so the score is a prior, not a measurement.

Backends add their own flags (`unknown_words` from Apertium, `low_token_probability`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace

from .base import TranslationResult, same_language

# Without evidence from the backend a translation starts at this score.
PRIOR_SCORE = 0.7
# A translation whose length is outside [MIN_RATIO, MAX_RATIO] × the source's is suspicious.
MIN_LENGTH_RATIO = 0.33
MAX_LENGTH_RATIO = 3.0
SHORT_TEXT_CHARS = 12  # texts this short vary too much in length to judge by it
LENGTH_RATIO_FACTOR = 0.6
COPIED_SOURCE_FACTOR = 0.3
LOW_TOKEN_PROBABILITY = 0.5

_WORD_RE = re.compile(r"\w+", re.UNICODE)


def logprob_score(logprobs: Iterable[float]) -> float | None:
    """exp(mean token log-probability): the geometric mean of the tokens' probabilities."""
    values = [float(v) for v in logprobs if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return None
    return max(0.0, min(1.0, math.exp(sum(values) / len(values))))


def known_word_score(total_words: int, unknown_words: int) -> float:
    """The share of words the backend knew (Apertium marks the others)."""
    if total_words <= 0:
        return 1.0
    return max(0.0, 1.0 - unknown_words / total_words)


def _normalized(text: str) -> str:
    return " ".join(_WORD_RE.findall(text.lower()))


def assess(result: TranslationResult, source_text: str) -> TranslationResult:
    """The result with `confidence` and `quality_flags` filled in."""
    if result.untranslated:
        return replace(
            result, confidence=0.0, quality_flags=tuple(dict.fromkeys((*result.quality_flags, "untranslated")))
        )
    flags: list[str] = list(result.quality_flags)
    source = source_text.strip()
    translated = result.text.strip()
    if not source:
        return replace(result, confidence=1.0, quality_flags=tuple(flags))
    if same_language(result.source_language, result.target_language):
        return replace(result, confidence=1.0, quality_flags=tuple(flags))

    score = result.backend_score
    if score is None:
        score = PRIOR_SCORE
        flags.append("no_backend_score")
    if len(source) >= SHORT_TEXT_CHARS:
        ratio = len(translated) / len(source)
        if ratio < MIN_LENGTH_RATIO or ratio > MAX_LENGTH_RATIO:
            flags.append("length_ratio")
            score *= LENGTH_RATIO_FACTOR
    normalized_source = _normalized(source)
    if normalized_source and _normalized(translated) == normalized_source and _has_words(normalized_source):
        flags.append("copied_source")
        score *= COPIED_SOURCE_FACTOR
    return replace(result, confidence=round(max(0.0, min(1.0, score)), 4), quality_flags=tuple(dict.fromkeys(flags)))


def _has_words(normalized: str) -> bool:
    # Numbers, names and one-word interjections ("OK") legitimately come back unchanged.
    words = [w for w in normalized.split() if not w.isdigit()]
    return len(words) >= 2


def untranslated_result(
    text: str, source_lang: str, target_lang: str, reason_flags: Sequence[str] = ()
) -> TranslationResult:
    """The source text passed through, marked untranslated (every backend failed)."""
    return assess(
        TranslationResult(
            text=text.strip(),
            source_language=source_lang,
            target_language=target_lang,
            model_info="none",
            backend="none",
            untranslated=True,
            quality_flags=tuple(reason_flags),
        ),
        text,
    )
