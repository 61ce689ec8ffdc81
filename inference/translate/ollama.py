"""Ollama as a translation backend, through its OpenAI-compatible API (`/v1/chat/completions`).

Why that API and not Ollama's native `/api/chat`: it is the protocol the vLLM backend already
speaks, so both share one HTTP client with the same prompts (context as prior turns), retries,
`logprobs` confidence and answer cleaning; Ollama documents logprobs and `/v1/models` on it.
What the native API adds (`keep_alive`, `options.num_ctx`) is set on the Ollama server or in the
model's Modelfile instead. Ollama has no `/health`, so health falls back to `/v1/models`.
"""

from __future__ import annotations

from typing import Any

from .openai_compat import OpenAICompatTranslator

DEFAULT_OLLAMA_ENDPOINT = "http://127.0.0.1:11434"


class OllamaTranslator(OpenAICompatTranslator):
    name = "ollama"

    def __init__(self, endpoint: str = DEFAULT_OLLAMA_ENDPOINT, model: str | None = None, **options: Any) -> None:
        # Ollama serves every pulled model: naming one avoids translating with whichever is first.
        if not model:
            raise ValueError("the ollama backend needs TRANSLATE_OLLAMA_MODEL (e.g. qwen2.5:3b)")
        options.setdefault("name", "ollama")
        super().__init__(endpoint, model, **options)
