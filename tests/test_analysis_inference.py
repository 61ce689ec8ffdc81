"""The TRU routes (`/v1/inference/url`, `/v1/inference/upload`) and the VLM tag backend, against
`tests.openai_stub.OpenAIStub`: a local server following the OpenAI chat API (no VLM weights exist
here, so an OpenAI-compatible endpoint is the one part a stand-in replaces). The stub records each
request, so the frames the server sent can be decoded and measured."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import pytest
from PIL import Image

from analysis.sampler import PATCH
from server.settings import Settings
from tests.analysis_media import FileServer, face_between, video_form, wait_job, write_video
from tests.conftest import start_server, stop_server
from tests.openai_stub import OpenAIStub, image_urls, user_text


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tru")
    return write_video(str(folder / "clip.mp4"), 10, face_between(3.0, 6.0), fps=10)


@pytest.fixture
async def vlm_server(monkeypatch, tmp_path):
    servers = []

    async def factory(stub: OpenAIStub | None):
        monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
        if stub is not None:
            monkeypatch.setenv("VISION_VLM_ENDPOINT", stub.base_url)
            monkeypatch.setenv("VISION_VLM_MODEL", "qwen-stub")
        else:
            monkeypatch.delenv("VISION_VLM_ENDPOINT", raising=False)
        server = await start_server(Settings(host="127.0.0.1", port=0, asr_preload=False))
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await stop_server(server)


def sent_frames(request_json: dict) -> tuple[list[float], list[tuple[int, int]], str]:
    """(timestamps from the text parts, JPEG sizes of the image parts, the final prompt text)."""
    parts = request_json["messages"][-1]["content"]
    stamps = [
        float(m.group(1)) for p in parts if p["type"] == "text" and (m := re.match(r"Frame at ([\d.]+) s", p["text"]))
    ]
    sizes = []
    for url in image_urls(request_json):
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        sizes.append(image.size)
    # each image is preceded by its timestamp
    kinds = [p["type"] for p in parts]
    assert kinds[:-1] == ["text", "image_url"] * len(sizes) and kinds[-1] == "text"
    return stamps, sizes, parts[-1]["text"]


async def test_url_route_samples_by_fps_and_pixel_budgets_and_returns_the_answer(vlm_server, clip):
    async with OpenAIStub(model="qwen-stub", responder=lambda req: "A person appears, then leaves.") as stub:
        server = await vlm_server(stub)
        async with FileServer(str(Path(clip).parent)) as files:
            body = {
                "video_url": files.url("clip.mp4"),
                "prompt": "What happens?",
                "video_params": {
                    "fps": 1.0,
                    "max_frames": 768,
                    "min_pixels": 4096,
                    "max_pixels": 40000,
                    "total_pixels": 10**7,
                },
                "generation_params": {"max_tokens": 77, "temperature": 0.1},
            }
            resp = await server.session.post(server.url("/v1/inference/url"), json=body)
            answer = await resp.json()
        assert resp.status == 200, answer
        assert answer["text"] == "A person appears, then leaves." and answer["model"] == "qwen-stub"
        usage = answer["usage"]  # the server's own token counts, passed through
        assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert len(stub.chat_requests) == 1
        request = stub.chat_requests[0].json
        assert request["max_tokens"] == 77 and request["temperature"] == 0.1
        stamps, sizes, prompt = sent_frames(request)
        assert prompt == "What happens?"
        assert len(sizes) == 10 and stamps == sorted(stamps) and stamps[0] == 0.0  # 10 s at 1 fps
        assert [f["t"] for f in answer["frames"]] == stamps
        for width, height in sizes:
            assert width % PATCH == 0 and height % PATCH == 0 and 4096 <= width * height <= 40000
        assert [(f["width"], f["height"]) for f in answer["frames"]] == sizes
        assert answer["duration"] == pytest.approx(10.0, abs=0.2) and answer["timing"]["total_seconds"] > 0

        # max_frames caps the count (spread over the whole video); total_pixels shrinks each frame
        body["video_params"] = {"fps": 2.0, "max_frames": 4, "max_pixels": 262144, "total_pixels": 4 * 20000}
        async with FileServer(str(Path(clip).parent)) as files:
            body["video_url"] = files.url("clip.mp4")
            resp = await server.session.post(server.url("/v1/inference/url"), json=body)
            assert resp.status == 200, await resp.text()
        stamps, sizes, _ = sent_frames(stub.chat_requests[-1].json)
        assert len(sizes) == 4 and stamps == sorted(stamps) and stamps[0] > 0.5 and stamps[-1] > 7.0
        assert sum(w * h for w, h in sizes) <= 4 * 20000
        assert all(w % PATCH == 0 and h % PATCH == 0 for w, h in sizes)


async def test_upload_route_async_mode_and_vlm_faults(vlm_server, clip):
    async with OpenAIStub(model="qwen-stub", responder=lambda req: "It is a test clip.") as stub:
        server = await vlm_server(stub)
        resp = await server.session.post(
            server.url("/v1/inference/upload"), data=video_form(clip, prompt="Describe it", fps="0.5", max_tokens="32")
        )
        answer = await resp.json()
        assert resp.status == 200 and answer["text"] == "It is a test clip.", answer
        assert len(answer["frames"]) == 5 and stub.chat_requests[-1].json["max_tokens"] == 32
        resp = await server.session.post(
            server.url("/v1/inference/upload?async=true"), data=video_form(clip, prompt="Again")
        )
        accepted = await resp.json()
        assert resp.status == 202, accepted
        job = await wait_job(server.session, server.base_url, accepted["job_id"])
        assert job["status"] == "completed" and job["result"]["text"] == "It is a test clip."
        # a VLM that keeps failing: the job fails with the endpoint's error, 502 to a waiting caller
        stub.mode = "http_400"
        resp = await server.session.post(server.url("/v1/inference/upload"), data=video_form(clip, prompt="Hm"))
        body = await resp.json()
        assert resp.status == 502 and "HTTP 400" in body["error"]["message"], body
        resp = await server.session.post(server.url("/v1/inference/upload"), data=video_form(clip))
        assert resp.status == 400 and "prompt" in (await resp.json())["error"]["message"]


async def test_vlm_tag_backend_per_sample_with_lenient_parsing(vlm_server, clip):
    def answer(request_json: dict) -> str:
        return "```json\n{'tags': [{'name': 'person', 'confidence': '90%'}]}\n```"

    async with OpenAIStub(model="qwen-stub", responder=answer) as stub:
        server = await vlm_server(stub)
        resp = await server.session.post(
            server.url("/v1/analyze"), data=video_form(clip, tag_list="person,car", frame_interval="2", backend="vlm")
        )
        job = await wait_job(server.session, server.base_url, (await resp.json())["job_id"])
        assert job["status"] == "completed", job
        assert len(stub.chat_requests) == 5  # 10 s, one sample every 2 s
        assert job["result"]["tags"] == {"person": [{"start": 0.0, "end": 10.0, "confidence": 0.9}]}
        assert '["person", "car"]' in user_text(stub.chat_requests[0].json)  # the tag prompt names the list


async def test_no_vlm_configured_is_503_naming_the_setting(vlm_server, clip):
    server = await vlm_server(None)
    for resp in (
        await server.session.post(
            server.url("/v1/inference/url"), json={"video_url": "http://127.0.0.1/x.mp4", "prompt": "hi"}
        ),
        await server.session.post(server.url("/v1/inference/upload"), data=video_form(clip, prompt="hi")),
        await server.session.post(
            server.url("/v1/analyze"), json={"video_url": "http://127.0.0.1/x.mp4", "backend": "vlm"}
        ),
    ):
        body = await resp.json()
        assert resp.status == 503 and "VISION_VLM_ENDPOINT" in body["error"]["message"], body


async def test_video_inference_capability_for_livepeer(vlm_server, clip):
    from tests.test_feature_capabilities import livepeer_header

    async with OpenAIStub(model="qwen-stub", responder=lambda req: "Two scenes.") as stub:
        server = await vlm_server(stub)
        async with FileServer(str(Path(clip).parent)) as files:
            resp = await server.session.post(
                server.url("/process/request/video-inference"),
                json={"video_url": files.url("clip.mp4"), "prompt": "How many scenes?", "video_params": {"fps": 0.5}},
                headers={"Livepeer": livepeer_header("video-inference", timeout=60)},
            )
            body = await resp.json()
        assert resp.status == 200 and body["text"] == "Two scenes." and len(body["frames"]) == 5, body
        assert body["status"] == "completed" and body["job_id"].startswith("job_")
