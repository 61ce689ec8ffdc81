"""Translation: Apertium offline by default, or an OpenAI-compatible (vLLM) server.

    service = TranslationService(TranslateSettings(backend="apertium"))
    text, error = await service.translate_for_captions("Hello world", "en", "es")
"""

from .apertium import ApertiumTranslator
from .base import (
    TranslationError,
    TranslationResult,
    Translator,
    UnsupportedLanguagePairError,
    language_name,
)
from .cache import LRUCache
from .openai_compat import OpenAICompatTranslator
from .service import PartialRateLimiter, TranslateSettings, TranslationService, build_translator

__all__ = [
    "ApertiumTranslator",
    "LRUCache",
    "OpenAICompatTranslator",
    "PartialRateLimiter",
    "TranslateSettings",
    "TranslationError",
    "TranslationResult",
    "TranslationService",
    "Translator",
    "UnsupportedLanguagePairError",
    "build_translator",
    "language_name",
]
