"""Operator-configured endpoints (an OpenAI-compatible translator, a VLM) are exempt from the
outbound policy but not from TLS: a self-signed endpoint is refused unless TLS_CA_FILE trusts it
or TLS_INSECURE_HOSTS lists it. The endpoint is a small HTTPS server following the OpenAI
chat-completions API (no weights exist here); it records what it received."""

from __future__ import annotations

import numpy as np
import pytest
from aiohttp import web

from httpapi.outbound import TlsPolicy
from inference.translate.service import TranslateSettings, TranslationService
from inference.vision.base import VisionRequest
from inference.vision.multiplexer import VlmConfig, VlmMultiplexer
from tests.security.test_tls import HttpsServer, certificate  # noqa: F401  (fixture)


def chat_app() -> web.Application:
    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        text = "hola" if body["messages"][-1]["role"] == "user" else "?"
        return web.json_response(
            {
                "id": "c1",
                "object": "chat.completion",
                "model": body.get("model", "m"),
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


@pytest.fixture
async def https_llm(certificate):  # noqa: F811
    server = await HttpsServer(chat_app()).start(certificate)
    yield server
    await server.stop()


def translator(url: str, tls: TlsPolicy) -> TranslationService:
    settings = TranslateSettings(
        backends="vllm", vllm_endpoint=url, vllm_model="m", vllm_max_retries=0, vllm_logprobs=False
    )
    return TranslationService(settings, ssl_for=tls.ssl_for)


@pytest.mark.parametrize("how", ["default", "ca_file", "insecure_host"])
async def test_translation_endpoint_tls(https_llm, certificate, how):  # noqa: F811
    tls = {
        "default": TlsPolicy(),
        "ca_file": TlsPolicy(ca_file=str(certificate[0])),
        "insecure_host": TlsPolicy(insecure_hosts=["127.0.0.1"]),
    }[how]
    service = translator(https_llm.base_url, tls)
    try:
        result = await service.translate("hello", "en", "es")
    finally:
        await service.close()
    if how == "default":  # self-signed: refused before any HTTP request, the source comes back untranslated
        assert result.untranslated and not https_llm.requests
    else:
        assert result.text == "hola" and not result.untranslated and len(https_llm.requests) == 1


@pytest.mark.parametrize("trusted", [False, True])
async def test_vlm_endpoint_tls(https_llm, trusted):
    tls = TlsPolicy(insecure_hosts=["127.0.0.1"]) if trusted else TlsPolicy()
    config = VlmConfig(api_base_url=https_llm.base_url + "/v1", model_id="m", retry_attempts=1)
    vlm = VlmMultiplexer(config, ssl_for=tls.ssl_for)
    frame = np.full((32, 32, 3), 120, np.uint8)
    try:
        if trusted:
            result = await vlm.analyze(frame, VisionRequest(mode="description"))
            assert result.text == "hola" and len(https_llm.requests) == 1
        else:
            with pytest.raises(Exception):  # noqa: B017 - aiohttp and ssl raise several kinds here
                await vlm.analyze(frame, VisionRequest(mode="description"))
            assert not https_llm.requests  # no request got past the TLS handshake
    finally:
        await vlm.close()
