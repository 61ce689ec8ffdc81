"""Shared set-up for the translation tests: the translation routes behind the server's real
middleware (error shape, access roles and tokens, body parsing), on a loopback port."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from inference.translate import TranslationService
from server.access import install_access
from server.errors import error_middleware
from server.routes_translate import add_translate_routes
from server.settings import SETTINGS_KEY, Settings
from tests.openai_stub import user_text

SPANISH = {
    "Hello world": "Hola mundo",
    "The cat is black": "El gato es negro",
    "Good morning": "Buenos días",
    "Maria bought a car.": "María compró un coche.",
    "She drives it every day.": "Ella lo conduce todos los días.",
}


def spanish_responder(request: dict[str, Any]) -> str:
    text = user_text(request)
    return SPANISH.get(text, f"ES[{text}]")


async def serve(service: TranslationService, **settings: Any) -> TestClient:
    app = web.Application(client_max_size=1024 * 1024, middlewares=[error_middleware])
    app[SETTINGS_KEY] = Settings(asr_preload=False, **settings)
    install_access(app)
    add_translate_routes(app, service)
    client = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    return client


async def expect_error(resp: Any, status: int, code: str) -> str:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert body["error"]["code"] == code, body
    return body["error"]["message"]
