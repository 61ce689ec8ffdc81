"""Triton Inference Server as a translation backend (KServe v2 HTTP, via `tritonclient[http]`).

The served model's contract (any Triton backend: Python, TensorRT-LLM ensemble, ONNX):

    inputs   TEXT         BYTES  [batch, 1]   UTF-8 source sentences
             SOURCE_LANG  BYTES  [batch, 1]   e.g. "en"
             TARGET_LANG  BYTES  [batch, 1]   e.g. "es"
    outputs  TRANSLATION  BYTES  [batch, 1]   UTF-8 translations, same order
             CONFIDENCE   FP32   [batch, 1]   optional: the model's own 0..1 score

A batch is one inference request (Triton's dynamic batcher may merge requests further).
The pairs the model can do are a setting (`TRANSLATE_TRITON_PAIRS`), since KServe metadata
describes tensors, not languages. `tritonclient` is imported only when this backend is used.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import (
    BoundedConcurrency,
    ContextTurn,
    LanguageSupport,
    TranslationError,
    TranslationResult,
    Translator,
    UnsupportedLanguagePairError,
    split_language_code,
)

log = logging.getLogger(__name__)

INPUT_TEXT, INPUT_SOURCE, INPUT_TARGET = "TEXT", "SOURCE_LANG", "TARGET_LANG"
OUTPUT_TEXT, OUTPUT_CONFIDENCE = "TRANSLATION", "CONFIDENCE"


def parse_pairs(spec: str) -> tuple[tuple[str, str], ...]:
    """'en-es,es-en' or 'en->es' → (('en', 'es'), ('es', 'en'))."""
    pairs = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        source, sep, target = item.replace("->", ">").replace("-", ">", 1).partition(">")
        if not sep or not source or not target:
            raise ValueError(f"a language pair is written source-target (e.g. en-es), got {item!r}")
        pairs.append((source.strip().lower(), target.strip().lower()))
    return tuple(pairs)


def _host_port(url: str) -> tuple[str, bool]:
    """tritonclient wants 'host:port' plus an ssl flag, not a URL."""
    url = url.strip().rstrip("/")
    if url.startswith("https://"):
        return url[len("https://") :], True
    if url.startswith("http://"):
        return url[len("http://") :], False
    return url, False


class TritonTranslator(Translator):
    name = "triton"

    def __init__(
        self,
        url: str,
        model: str,
        *,
        pairs: Sequence[tuple[str, str]] = (("en", "es"),),
        model_version: str = "",
        timeout: float = 10.0,
        max_concurrency: int = 8,
        max_pending: int = 64,
    ) -> None:
        self.url = url
        self.host, self.ssl = _host_port(url)
        self.model = model
        self.model_version = model_version
        self.pairs = tuple(pairs)
        self.timeout = timeout
        self.max_concurrency = max(1, max_concurrency)
        self._limiter = BoundedConcurrency(self.max_concurrency, max_pending, "triton")
        self._client: Any = None
        self._has_confidence: bool | None = None  # from the model's metadata, asked once
        self.requests = 0
        self.failures = 0

    @property
    def model_info(self) -> str:
        return f"triton:{self.model}"

    def _get_client(self) -> Any:
        if self._client is None:
            try:
                from tritonclient.http.aio import InferenceServerClient
            except ImportError as exc:  # the `triton` extra is not installed
                raise TranslationError(
                    "the triton backend needs tritonclient: pip install 'streamlens[triton]'",
                    code="backend_unavailable",
                    retryable=False,
                ) from exc
            self._client = InferenceServerClient(
                self.host, ssl=self.ssl, conn_limit=self.max_concurrency + 1, conn_timeout=self.timeout
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def language_support(self) -> LanguageSupport:
        return LanguageSupport(pairs=self.pairs)

    def _check_pair(self, source_lang: str, target_lang: str) -> None:
        source, _ = split_language_code(source_lang)
        target, _ = split_language_code(target_lang)
        if (source, target) not in self.pairs and (source_lang.lower(), target_lang.lower()) not in self.pairs:
            raise UnsupportedLanguagePairError(source_lang, target_lang, [f"{s}->{t}" for s, t in self.pairs])

    async def translate(
        self, text: str, source_lang: str, target_lang: str, context: Sequence[ContextTurn] = ()
    ) -> TranslationResult:
        # The tensor contract has no context input: each sentence is translated alone.
        return (await self.translate_batch([text], source_lang, target_lang))[0]

    async def translate_batch(
        self, texts: Sequence[str], source_lang: str, target_lang: str
    ) -> list[TranslationResult]:
        self._check_pair(source_lang, target_lang)
        if not texts:
            return []
        return await self._limiter.run(lambda: self._infer(list(texts), source_lang, target_lang))

    async def _infer(self, texts: list[str], source_lang: str, target_lang: str) -> list[TranslationResult]:
        from tritonclient.http import InferInput, InferRequestedOutput
        from tritonclient.utils import InferenceServerException

        client = self._get_client()
        count = len(texts)
        inputs = []
        for name, values in (
            (INPUT_TEXT, texts),
            (INPUT_SOURCE, [source_lang] * count),
            (INPUT_TARGET, [target_lang] * count),
        ):
            tensor = InferInput(name, [count, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[v.encode("utf-8")] for v in values], dtype=np.object_))
            inputs.append(tensor)
        self.requests += 1
        try:
            with_confidence = await self._model_has_confidence(client)
            outputs = [InferRequestedOutput(OUTPUT_TEXT, binary_data=True)]
            if with_confidence:
                outputs.append(InferRequestedOutput(OUTPUT_CONFIDENCE, binary_data=True))
            result = await asyncio.wait_for(
                client.infer(self.model, inputs, model_version=self.model_version, outputs=outputs), self.timeout
            )
        except TimeoutError as exc:
            self.failures += 1
            raise TranslationError(
                f"triton did not answer within {self.timeout:.1f} s", code="backend_timeout"
            ) from exc
        except InferenceServerException as exc:
            self.failures += 1
            raise TranslationError(f"triton inference failed: {exc}", code="backend_error") from exc
        except Exception as exc:  # aiohttp connection errors and the like
            self.failures += 1
            raise TranslationError(
                f"cannot reach triton at {self.url}: {exc.__class__.__name__}: {exc}", code="backend_unavailable"
            ) from exc
        return self._results(result, texts, source_lang, target_lang, with_confidence)

    async def _model_has_confidence(self, client: Any) -> bool:
        if self._has_confidence is None:
            metadata = await asyncio.wait_for(
                client.get_model_metadata(self.model, model_version=self.model_version), self.timeout
            )
            names = {o.get("name") for o in metadata.get("outputs", [])}
            if OUTPUT_TEXT not in names:
                raise TranslationError(
                    f"triton model {self.model!r} has no {OUTPUT_TEXT} output (outputs: {sorted(names)})",
                    code="bad_backend_response",
                )
            self._has_confidence = OUTPUT_CONFIDENCE in names
        return self._has_confidence

    def _results(
        self, result: Any, texts: list[str], source_lang: str, target_lang: str, with_confidence: bool
    ) -> list[TranslationResult]:
        translated = result.as_numpy(OUTPUT_TEXT)
        scores = result.as_numpy(OUTPUT_CONFIDENCE) if with_confidence else None
        if translated is None or translated.size != len(texts):
            self.failures += 1
            raise TranslationError(
                f"triton answered {0 if translated is None else translated.size} translations for {len(texts)} texts",
                code="bad_backend_response",
            )
        results = []
        for i, raw in enumerate(translated.reshape(-1)):
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            score = None
            if scores is not None and scores.size == len(texts):
                value = float(scores.reshape(-1)[i])
                score = min(1.0, max(0.0, value)) if np.isfinite(value) else None
            results.append(
                TranslationResult(
                    text=" ".join(text.split()),
                    source_language=source_lang,
                    target_language=target_lang,
                    model_info=self.model_info,
                    backend=self.name,
                    backend_score=score,
                )
            )
        return results

    async def health(self) -> dict[str, Any]:
        report: dict[str, Any] = {"url": self.url, "model": self.model}
        try:
            client = self._get_client()
            live = await asyncio.wait_for(client.is_server_ready(), min(self.timeout, 5.0))
            ready = live and await asyncio.wait_for(
                client.is_model_ready(self.model, model_version=self.model_version), min(self.timeout, 5.0)
            )
        except Exception as exc:  # health never raises
            report.update(status="unhealthy", error=f"{exc.__class__.__name__}: {exc}")
            return report
        report.update(status="healthy" if ready else "unhealthy", server_ready=bool(live), model_ready=bool(ready))
        return report

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "failures": self.failures, "concurrency": self._limiter.snapshot()}
