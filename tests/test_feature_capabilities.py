"""The translate and describe features as Livepeer BYOC batch capabilities (real Apertium, real
OpenCV tagger), reached the way an orchestrator forwards them."""

from __future__ import annotations

import base64
import io
import json

from PIL import Image
from skimage import data as skdata


def livepeer_header(capability: str, timeout: int = 30) -> str:
    payload = {
        "request": json.dumps({}),
        "parameters": json.dumps({}),
        "capability": capability,
        "timeout_seconds": timeout,
    }
    return base64.b64encode(json.dumps(payload).encode()).decode()


async def test_translate_capability(server):
    resp = await server.session.post(
        server.url("/process/request/translate"),
        json={"text": "The cat is black", "source_lang": "en", "target_lang": "es"},
        headers={"Livepeer": livepeer_header("translate")},
    )
    body = await resp.json()
    assert resp.status == 200, body
    assert "gato" in body["translated_text"].lower()
    # the orchestrator forwards to the bare path when the registered URL ends in /process/request
    resp = await server.session.post(
        server.url("/translate"), json={"text": "Hello", "source_lang": "en", "target_lang": "xx"}
    )
    assert resp.status == 400
    caps = await (await server.session.get(server.url("/process/capabilities"))).json()
    names = json.dumps(caps)
    assert "translate" in names and "describe" in names and "text-reversal" in names


async def test_describe_capability(server):
    buf = io.BytesIO()
    Image.fromarray(skdata.astronaut()).save(buf, format="JPEG")
    image = base64.b64encode(buf.getvalue()).decode()
    resp = await server.session.post(server.url("/process/request/describe"), json={"image": image, "mode": "tags"})
    body = await resp.json()
    assert resp.status == 200, body
    assert any(tag["name"] == "face" and tag["box"] for tag in body["tags"])
    resp = await server.session.post(server.url("/process/request/describe"), json={"image": "bm90IGFuIGltYWdl"})
    assert resp.status == 400
