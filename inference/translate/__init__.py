"""Translation: an ordered list of backends (vLLM / any OpenAI-compatible server, Ollama, Triton,
Apertium offline by default) with breakers and fallback, sessions with context, confidence.

    service = TranslationService(TranslateSettings(backends="apertium"))
    text, error = await service.translate_for_captions("Hello world", "en", "es", session="stream-1")
"""

from .apertium import ApertiumTranslator
from .backends import BackendChain
from .base import (
    ContextTurn,
    LanguageSupport,
    TranslationError,
    TranslationResult,
    Translator,
    UnsupportedLanguagePairError,
    language_name,
)
from .cache import LRUCache
from .ollama import OllamaTranslator
from .openai_compat import OpenAICompatTranslator
from .service import (
    CaptionTranslation,
    TranslateSettings,
    TranslationService,
    build_translator,
    build_translators,
)
from .triton import TritonTranslator

__all__ = [
    "ApertiumTranslator",
    "BackendChain",
    "CaptionTranslation",
    "ContextTurn",
    "LRUCache",
    "LanguageSupport",
    "OllamaTranslator",
    "OpenAICompatTranslator",
    "TranslateSettings",
    "TranslationError",
    "TranslationResult",
    "TranslationService",
    "Translator",
    "TritonTranslator",
    "UnsupportedLanguagePairError",
    "build_translator",
    "build_translators",
    "language_name",
]
