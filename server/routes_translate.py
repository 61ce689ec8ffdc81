"""HTTP API for translation: POST /translate, POST /translate/batch, GET /translate/health.

Bodies are validated with pydantic; every error answers `{"error": {"code", "message"}}`:
400 bad JSON / missing or invalid field / unsupported language pair, 413 too many or too long
texts, 503 backend down, disabled or circuit open, 504 backend timeout, 502 backend answered
nonsense. `translate_capability` serves the same request shapes for the BYOC `translate`
capability.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inference.translate import TranslationError, TranslationResult, TranslationService
from inference.translate.base import LANGUAGE_CODE_PATTERN, sum_usage

log = logging.getLogger(__name__)

TRANSLATION_SERVICE_KEY: web.AppKey[TranslationService] = web.AppKey("translation_service", TranslationService)

# ISO 639-1/3 code, optionally with a region: 'en', 'es', 'spa', 'en-US'
LanguageCode = Annotated[str, Field(pattern=LANGUAGE_CODE_PATTERN, max_length=24)]


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str = Field(min_length=1)
    source_lang: LanguageCode
    target_lang: LanguageCode


class BatchTranslateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    texts: list[str] = Field(min_length=1)
    source_lang: LanguageCode
    target_lang: LanguageCode


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response(error_body(code, message), status=status)


def _invalid(message: str) -> TranslationError:
    return TranslationError(message, code="invalid_request", http_status=400, retryable=False)


def _describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors()[:5]:
        field = ".".join(str(part) for part in err.get("loc", ())) or "body"
        problems.append(f"field '{field}': {err.get('msg', 'invalid')}")
    return "; ".join(problems)


def _parse(model: type[BaseModel], body: Any) -> Any:
    if not isinstance(body, dict):
        raise _invalid("request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _invalid(_describe_validation_error(exc)) from None


def single_response(result: TranslationResult) -> dict[str, Any]:
    return {
        "translated_text": result.text,
        "source_language": result.source_language,
        "target_language": result.target_language,
        "model_info": result.model_info,
        "usage": result.usage,
        "cached": result.cached,
    }


def batch_response(results: list[TranslationResult], model_info: str) -> dict[str, Any]:
    return {
        "translations": [
            {
                "translated_text": r.text,
                "source_language": r.source_language,
                "target_language": r.target_language,
                "cached": r.cached,
            }
            for r in results
        ],
        "model_info": results[0].model_info if results else model_info,
        "usage": sum_usage([r.usage for r in results]),
    }


def _check_limits(service: TranslationService, texts: list[str]) -> None:
    settings = service.settings
    if len(texts) > settings.max_batch_texts:
        raise TranslationError(
            f"{len(texts)} texts in one batch; the limit is {settings.max_batch_texts}",
            code="too_many_texts", http_status=413, retryable=False,
        )
    for i, text in enumerate(texts):
        if len(text) > settings.max_text_chars:
            raise TranslationError(
                f"text {i} has {len(text)} characters; the limit is {settings.max_text_chars}",
                code="text_too_long", http_status=413, retryable=False,
            )


async def translate_capability(body: dict[str, Any], service: TranslationService) -> dict[str, Any]:
    """The BYOC `translate` capability: `{"text", "source_lang", "target_lang"}` → the /translate
    answer, or `{"texts": [...], ...}` → the /translate/batch answer. Raises TranslationError
    (`.http_status`, `.code`, message) for bad input and backend failures."""
    if isinstance(body, dict) and "texts" in body:
        batch = _parse(BatchTranslateRequest, body)
        _check_limits(service, batch.texts)
        results = await service.translate_batch(batch.texts, batch.source_lang, batch.target_lang)
        return batch_response(results, service.model_info)
    single = _parse(TranslateRequest, body)
    _check_limits(service, [single.text])
    return single_response(await service.translate(single.text, single.source_lang, single.target_lang))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_errors(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except TranslationError as exc:
            if exc.http_status >= 500:
                log.warning("%s %s → %d %s: %s", request.method, request.path, exc.http_status, exc.code, exc)
            return error_response(exc.http_status, exc.code, str(exc))

    return wrapped


async def _read_json(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:  # JSONDecodeError and bad UTF-8 both derive from it
        raise _invalid("request body is not valid JSON") from None


@_json_errors
async def handle_translate(request: web.Request) -> web.StreamResponse:
    service = request.app[TRANSLATION_SERVICE_KEY]
    body = await _read_json(request)
    if isinstance(body, dict) and "texts" in body and "text" not in body:
        raise _invalid("field 'text' is required here; send 'texts' to /translate/batch")
    return web.json_response(await translate_capability(body, service))


@_json_errors
async def handle_translate_batch(request: web.Request) -> web.StreamResponse:
    service = request.app[TRANSLATION_SERVICE_KEY]
    body = await _read_json(request)
    batch = _parse(BatchTranslateRequest, body)
    _check_limits(service, batch.texts)
    results = await service.translate_batch(batch.texts, batch.source_lang, batch.target_lang)
    return web.json_response(batch_response(results, service.model_info))


async def handle_translate_health(request: web.Request) -> web.StreamResponse:
    report = await request.app[TRANSLATION_SERVICE_KEY].health()
    return web.json_response(report, status=200 if report["status"] == "healthy" else 503)


def add_translate_routes(app: web.Application, service: TranslationService) -> None:
    """Mount the translation API on `app` and keep `service` under TRANSLATION_SERVICE_KEY.
    The caller owns the service's lifetime (`await service.close()` on shutdown)."""
    app[TRANSLATION_SERVICE_KEY] = service
    from media.http_routes import Role, RouteTable

    table = RouteTable()
    table.add("POST", "/translate", handle_translate, role=Role.API, tag="translate", summary="Translate one text")
    table.add("POST", "/translate/batch", handle_translate_batch, role=Role.API, tag="translate",
              summary="Translate several texts")
    table.add("GET", "/translate/health", handle_translate_health, role=Role.API, tag="translate",
              summary="Translation backend health")
    table.mount(app)
