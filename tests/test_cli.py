"""`streamlens serve` as a real process: flags override the environment, SIGTERM/SIGINT stop it
gracefully (every stream stopped, exit status 0)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import aiohttp
import pytest

from server.cli import build_parser, settings_from_args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_flags_override_environment(monkeypatch):
    monkeypatch.setenv("PORT", "9100")
    monkeypatch.setenv("MAX_STREAMS", "7")
    monkeypatch.setenv("ENCODER_PRESET", "veryfast")
    args = build_parser().parse_args(["serve", "--port", "9200", "--set", "gop_seconds=1.5"])
    settings = settings_from_args(args)
    assert settings.port == 9200  # flag wins
    assert settings.max_streams == 7  # environment
    assert settings.encoder_preset == "veryfast"
    assert settings.gop_seconds == 1.5
    with pytest.raises(SystemExit):
        settings_from_args(build_parser().parse_args(["serve", "--set", "no_such_setting=1"]))


def test_set_reaches_every_section(monkeypatch):
    """`--set SECTION.FIELD=VALUE` overrides a feature section; its other fields keep their variables."""
    monkeypatch.setenv("ASR_BEAM_SIZE", "3")
    monkeypatch.setenv("VLLM_MODEL", "from-env")
    argv = ["serve", "--set", "asr.model=small", "--set", "translate.vllm_endpoint=http://127.0.0.1:9/v1"]
    argv += ["--set", "vision.interval=2.5", "--set", "gpu.min_free_mb=4096", "--set", "analysis.max_samples=7"]
    settings = settings_from_args(build_parser().parse_args(argv))
    assert settings.asr.model == "small" and settings.asr.beam_size == 3
    assert settings.translate.vllm_endpoint == "http://127.0.0.1:9/v1" and settings.translate.vllm_model == "from-env"
    assert settings.vision.interval == 2.5
    assert settings.gpu.min_free_mb == 4096
    assert settings.analysis.max_samples == 7
    for bad in ("nosection.x=1", "asr.no_such_field=1", "asr=1", "vision.interval=-1"):
        with pytest.raises(SystemExit):
            settings_from_args(build_parser().parse_args(["serve", "--set", bad]))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_serve_and_graceful_shutdown(sig):
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", MAX_STREAMS="9")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-streams",
        "2",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            health = {}
            for _ in range(300):  # up to ~30 s for the import, start-up and the speech model load
                try:
                    async with session.get(base + "/health") as resp:
                        health = await resp.json()
                    if health["status"] != "LOADING":
                        break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            else:
                pytest.fail(f"server did not come up: {health}")
            assert health["status"] == "IDLE" and health["capacity"] == 2  # the flag beat MAX_STREAMS=9
            # a running stream (its input channel exists but nothing is published yet)
            async with session.post(base + "/ai/trickle/sig-in/0", data=b"") as resp:
                assert resp.status == 200
            async with session.post(base + "/ai/trickle/sig-out/0", data=b"") as resp:
                assert resp.status == 200
            async with session.post(
                base + "/stream/start",
                json={"subscribe_url": base + "/ai/trickle/sig-in", "publish_url": base + "/ai/trickle/sig-out"},
            ) as resp:
                assert resp.status == 200
                manifest_id = (await resp.json())["manifest_id"]
            async with session.get(base + "/health") as resp:
                assert (await resp.json())["status"] == "OK"
        proc.send_signal(sig)
        # streams stop while the server still listens: an output on this same server closes cleanly
        output, _ = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0, output.decode()[-2000:]
        log = output.decode()
        assert "stopping 1 stream(s): server shutting down" in log
        assert f"[{manifest_id}] state LOADING → STOPPED" in log
        assert 'DELETE /ai/trickle/sig-out HTTP/1.1" 200' in log  # the output channel was closed
        assert "failed" not in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
