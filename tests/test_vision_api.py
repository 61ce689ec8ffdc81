"""`POST /vision/describe` on a real aiohttp server (loopback), with the real embedded tagger; the
VLM path talks to `tests.openai_stub.OpenAIStub`, a local server following the OpenAI
chat-completions API (no VLM weights exist here)."""

from __future__ import annotations

import base64
import io
import json

import aiohttp
import pytest
import skimage.data
from aiohttp import web
from PIL import Image

from inference.vision.multiplexer import VlmConfig
from inference.vision.stage import VisionBackends, VisionSettings
from server.access import install_access
from server.errors import error_middleware
from server.routes_vision import DescribeError, add_vision_routes, describe_capability
from server.settings import SETTINGS_KEY, Settings
from tests.openai_stub import OpenAIStub


def astronaut_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def astronaut_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buffer, format="PNG")
    return buffer.getvalue()


class Api:
    """The vision routes behind the server's real access layer (error shape, body limits)."""

    def __init__(self, backends: VisionBackends, max_image_bytes: int = 16 * 1024 * 1024) -> None:
        self.app = web.Application(middlewares=[error_middleware])
        self.app[SETTINGS_KEY] = Settings(max_image_bytes=max_image_bytes)
        add_vision_routes(self.app, backends)
        install_access(self.app)
        self.backends = backends

    async def __aenter__(self) -> Api:
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/vision/describe"
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        await self.runner.cleanup()
        await self.backends.close()


def assert_astronaut_face(answer: dict) -> None:
    faces = [t for t in answer["tags"] if t["name"] == "face"]
    assert len(faces) == 1, answer
    x, y, w, h = faces[0]["box"]
    assert 160 < x + w / 2 < 290 and 60 < y + h / 2 < 170
    assert faces[0]["confidence"] >= 0.5
    assert answer["model"] == "opencv-haar-face+frame-stats"
    assert answer["frame_size"] == [512, 512]
    assert answer["latency_ms"] > 0


async def test_json_base64_image_gets_a_face_tag() -> None:
    async with Api(VisionBackends()) as api:
        body = {"image": base64.b64encode(astronaut_jpeg()).decode()}
        async with api.session.post(api.url, json=body) as response:
            assert response.status == 200
            assert_astronaut_face(await response.json())
        # a data URI works too, and description mode returns text
        body = {"image": "data:image/png;base64," + base64.b64encode(astronaut_png()).decode(), "mode": "description"}
        async with api.session.post(api.url, json=body) as response:
            answer = await response.json()
            assert response.status == 200 and "1 face" in answer["text"]


async def test_raw_jpeg_body_with_query_options() -> None:
    async with Api(VisionBackends()) as api:
        headers = {"Content-Type": "image/jpeg"}
        async with api.session.post(
            api.url, data=astronaut_jpeg(), headers=headers, params={"threshold": "0.5"}
        ) as response:
            assert response.status == 200
            assert_astronaut_face(await response.json())
        async with api.session.post(
            api.url, data=astronaut_jpeg(), headers=headers, params={"tag_list": "motion"}
        ) as response:
            assert response.status == 200 and (await response.json())["tags"] == []


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"json": {"image": "this is not base64!!"}}, 400, "invalid_image"),
        ({"json": {"image": base64.b64encode(b"GIF89a but not really").decode()}}, 400, "invalid_image"),
        ({"data": b"\x00\x01garbage", "headers": {"Content-Type": "image/jpeg"}}, 400, "invalid_image"),
        # parsed (depth-limited) by the access layer before the handler: its generic code
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "bad_request"),
        ({"json": {"mode": "tags"}}, 400, "invalid_request"),
        ({"json": {"image": "AAAA", "threshold": 3}}, 400, "invalid_request"),
        ({"data": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
    ],
)
async def test_bad_requests_are_4xx_json_errors(kwargs: dict, status: int, code: str) -> None:
    async with Api(VisionBackends()) as api:
        async with api.session.post(api.url, **kwargs) as response:
            assert response.status == status
            error = (await response.json())["error"]
            assert error["code"] == code and error["message"]


async def test_body_limit_is_413() -> None:
    async with Api(VisionBackends(), max_image_bytes=10_000) as api:
        async with api.session.post(api.url, data=astronaut_jpeg(), headers={"Content-Type": "image/jpeg"}) as response:
            assert response.status == 413
            assert (await response.json())["error"]["code"] == "payload_too_large"


async def test_unavailable_backends_are_503() -> None:
    async with Api(VisionBackends()) as api:
        for backend in ("vlm", "tensorrt", "no-such-backend"):
            body = {"image": base64.b64encode(astronaut_jpeg()).decode(), "backend": backend}
            async with api.session.post(api.url, json=body) as response:
                assert response.status == 503
                assert (await response.json())["error"]["code"] == "backend_unavailable"


async def test_vlm_backend_through_the_api_and_malformed_output_is_502() -> None:
    replies = iter(['{"tags": [{"name": "astronaut", "confidence": 0.97}]}', "no idea, sorry"])
    async with OpenAIStub(responder=lambda req: next(replies)) as stub:
        settings = VisionSettings(
            vlm=VlmConfig(model_id="stub-model", api_base_url=stub.base_url, tag_list=["astronaut", "cat"])
        )
        async with Api(VisionBackends(settings)) as api:
            body = {"image": base64.b64encode(astronaut_jpeg()).decode(), "backend": "vlm"}
            async with api.session.post(api.url, json=body) as response:
                answer = await response.json()
                assert response.status == 200, answer
                assert answer["tags"] == [{"name": "astronaut", "confidence": 0.97, "box": None}]
                assert answer["model"] == "stub-model" and answer["backend"] == "vlm"
            async with api.session.post(api.url, json=body) as response:
                assert response.status == 502
                assert (await response.json())["error"]["code"] == "bad_model_output"


async def test_describe_capability_for_byoc() -> None:
    backends = VisionBackends()
    try:
        body = json.dumps({"image": base64.b64encode(astronaut_jpeg()).decode(), "tag_list": ["face"]}).encode()
        assert_astronaut_face(await describe_capability(body, backends))
        with pytest.raises(DescribeError) as caught:
            await describe_capability({"image": "@@@"}, backends)
        assert caught.value.status == 400
    finally:
        await backends.close()
