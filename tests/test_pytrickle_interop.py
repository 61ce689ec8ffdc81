"""Interoperability with pytrickle, livepeer's Python trickle library (PyPI `pytrickle`).

pytrickle pins `av<=14.2` and needs torch, which clash with this project's PyAV/aiortc, so it lives
in its own virtualenv, created here on first use and cached:
`${XDG_CACHE_HOME:-~/.cache}/streamlens/venv-pytrickle-0.1.6` (or `$PYTRICKLE_VENV`). torch is
pinned to 2.13.0, whose CPU wheel is on this machine's disk, and av to 14.2.0 (the newest release
pytrickle accepts that has a cp311 wheel; 14.4.0 would build from source and fail). If the venv
cannot be built the tests FAIL with pip's output — they are not skipped, so a broken interop setup
is never mistaken for a pass. `STREAMLENS_SKIP_PYTRICKLE=1` skips them on purpose.

pytrickle's TricklePublisher / TrickleSubscriber run in a subprocess (tests/interop/pytrickle_client.py)
against the server's built-in trickle server (with its trickle token in token mode, which pytrickle
0.1.6 can only send through its session's default headers): pytrickle → streamlens and streamlens → pytrickle
segment by segment, and pytrickle playing the gateway of a whole live stream.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from media.manager import STREAMS_KEY
from server.keys import TRICKLE_KEY
from tests.conftest import wait_until
from tests.interop.gateway import LivepeerGateway
from tests.media_gen import make_segments
from tests.trickle_helpers import token_policy
from trickle.client import TricklePublisher, TrickleSubscriber

INTEROP_DIR = Path(__file__).parent / "interop"
# Outside the repository: never committed by accident, and reused by every clone on this machine
# (CI runs in a fresh clone); the name carries the pytrickle version, so a bump builds a new one.
_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "streamlens"
VENV = Path(os.environ.get("PYTRICKLE_VENV") or _CACHE / "venv-pytrickle-0.1.6")
SCRIPT = INTEROP_DIR / "pytrickle_client.py"
REQUIREMENTS = ["torch==2.13.0", "av==14.2.0", "pytrickle==0.1.6"]
CREATE_TIMEOUT_S = 900
SCRIPT_TIMEOUT_S = 120

pytestmark = pytest.mark.skipif(
    os.environ.get("STREAMLENS_SKIP_PYTRICKLE") == "1", reason="STREAMLENS_SKIP_PYTRICKLE=1"
)


def _venv_python() -> Path:
    return VENV / "bin" / "python"


def _venv_ready() -> bool:
    python = _venv_python()
    if not python.exists():
        return False
    probe = subprocess.run(
        [str(python), "-c", "import pytrickle, av; assert av.__version__ == '14.2.0'"], capture_output=True, timeout=120
    )
    return probe.returncode == 0


@pytest.fixture(scope="session")
def pytrickle_python() -> Path:
    """The pytrickle venv's interpreter, building the venv once (under a lock) when missing."""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / f"{VENV.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _venv_ready():
            started = time.monotonic()
            steps = [
                [sys.executable, "-m", "venv", "--clear", str(VENV)],
                [str(_venv_python()), "-m", "pip", "install", "--quiet", *REQUIREMENTS],
            ]
            for step in steps:
                result = subprocess.run(step, capture_output=True, text=True, timeout=CREATE_TIMEOUT_S)
                if result.returncode != 0:
                    pytest.fail(
                        f"could not build the pytrickle venv ({' '.join(step)}):\n"
                        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
                    )
            print(f"\npytrickle venv created in {time.monotonic() - started:.1f} s at {VENV}")
            assert _venv_ready(), "pytrickle venv built but `import pytrickle, av` fails"
    return _venv_python()


async def run_pytrickle(python: Path, *args: str, token: str | None = None) -> dict:
    """Run the pytrickle script; `token` (the server's trickle token, None in open mode) goes to it
    in the environment."""
    env = {**os.environ, "STREAMLENS_TRICKLE_TOKEN": token or ""}
    process = await asyncio.create_subprocess_exec(
        str(python), str(SCRIPT), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), SCRIPT_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"pytrickle script {args[0]} timed out") from None
    assert process.returncode == 0, f"pytrickle script failed:\n{stderr.decode()[-4000:]}"
    return json.loads(stdout.decode().strip().splitlines()[-1])


def write_segments(tmp_path: Path, segments: list[bytes]) -> list[str]:
    paths = []
    for index, data in enumerate(segments):
        path = tmp_path / f"seg{index}.ts"
        path.write_bytes(data)
        paths.append(str(path))
    return paths


def digest(data: bytes) -> dict:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


async def test_pytrickle_publisher_to_streamlens_subscriber(server, pytrickle_python, tmp_path):
    server.app[TRICKLE_KEY].create_channel("py-in")
    segments = make_segments(3, 128, 128)
    received: list[bytes] = []

    async def read_three() -> None:
        async with TrickleSubscriber(
            server.trickle_url("py-in"), policy=token_policy(server.token("trickle"))
        ) as subscriber:
            while len(received) < len(segments):
                segment = await subscriber.next_segment()
                if segment is None:
                    return
                parts = []
                while chunk := await segment.read():
                    parts.append(chunk)
                received.append(b"".join(parts))

    reader = asyncio.create_task(read_three())  # waiting on seq 0 before pytrickle publishes
    result = await run_pytrickle(
        pytrickle_python,
        "publish",
        server.trickle_url("py-in"),
        *write_segments(tmp_path, segments),
        token=server.token("trickle"),
    )
    await asyncio.wait_for(reader, 10)
    assert result["pytrickle_version"] == "0.1.6"
    assert result["sent"] == [digest(s) for s in segments]
    assert received == segments  # byte for byte, in order
    channel = server.app[TRICKLE_KEY].stats()["per_channel"]["py-in"]
    assert channel["mime"].lower() == "video/mp2t"


async def test_streamlens_publisher_to_pytrickle_subscriber(server, pytrickle_python):
    server.app[TRICKLE_KEY].create_channel("py-out")
    segments = make_segments(3, 128, 128)
    async with TricklePublisher(
        server.trickle_url("py-out"), policy=token_policy(server.token("trickle"))
    ) as publisher:
        for data in segments:
            writer = await publisher.next_segment()
            await writer.write(data[: len(data) // 3])
            await writer.write(data[len(data) // 3 :])
            assert await writer.close() == 200
        result = await run_pytrickle(
            pytrickle_python,
            "subscribe",
            server.trickle_url("py-out"),
            str(len(segments)),
            "0",
            token=server.token("trickle"),
        )
    assert result["received"] == [digest(s) for s in segments]


async def test_pytrickle_plays_the_gateway_of_a_live_stream(make_server, pytrickle_python, tmp_path):
    """pytrickle's clients feed a BYOC stream, read its output and events; the output decodes with
    pytrickle's pinned PyAV and every output segment starts with a decodable keyframe."""
    server = await make_server(events_interval=1.0)
    mid = "py-gw-1"
    gateway = LivepeerGateway(server, mid, data=False)
    resp = await server.session.post(server.url("/stream/start"), json=gateway.body, headers=gateway.headers())
    assert resp.status == 200, await resp.text()
    files = write_segments(tmp_path, make_segments(3, 256, 256))
    script = asyncio.create_task(
        run_pytrickle(
            pytrickle_python, "gateway", server.trickle_url("").rstrip("/"), mid, *files, token=server.token("trickle")
        )
    )
    stream = server.app[STREAMS_KEY].get(mid)
    assert await wait_until(lambda: stream.frames_in >= 80 and stream.frames_out >= 80, timeout=30)
    await asyncio.sleep(1.5)  # the last output segment is published when the stream stops
    resp = await server.session.post(server.url("/stream/stop"), headers=gateway.headers())
    assert resp.status == 200
    result = await asyncio.wait_for(script, SCRIPT_TIMEOUT_S)
    assert result["sent"] == 3
    assert result["output_segments"] >= 2
    assert result["decoded_frames"] >= 0.8 * stream.frames_in
    assert result["first_segment_frames"] > 0
    types = {(e["queue_event_type"], e["type"]) for e in result["events"]}
    assert ("ai_stream_events", "status") in types
    assert ("stream_trace", "runner_receive_stream_request") in types or (
        "stream_trace",
        "runner_receive_first_ingest_segment",
    ) in types
    await gateway.close()
