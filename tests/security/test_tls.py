"""TLS verified by default (issue 9 item 5), against a real HTTPS server on loopback with a
self-signed certificate made by the `openssl` CLI: verification fails unless TLS_CA_FILE names
the certificate or TLS_INSECURE_HOSTS lists the host; ORCH_SECRET never reaches an unverified
host, nor a plain-http host that is not loopback."""

from __future__ import annotations

import json
import logging
import ssl
import subprocess
from pathlib import Path

import pytest
from aiohttp import web

from byoc.registration import CapabilityRegistration, OrchestratorRegistrar
from httpapi.outbound import OutboundPolicy, TlsPolicy
from server.settings import Settings
from trickle.client import TricklePublisher, TrickleSubscriber
from trickle.server import TrickleServer

SECRET = "orch-secret-never-logged-Q7"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


class HttpsServer:
    """An HTTPS aiohttp server on 127.0.0.1 that counts the HTTP requests it got (a request
    counts only once the TLS handshake succeeded)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.requests: list[web.Request] = []
        self.runner: web.AppRunner | None = None
        self.base_url = ""

        @web.middleware
        async def record(request: web.Request, handler):
            self.requests.append(request)
            return await handler(request)

        app.middlewares.append(record)

    async def start(self, certificate: tuple[Path, Path]) -> HttpsServer:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*certificate)
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.base_url = f"https://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def https_trickle(certificate):
    app = web.Application()
    trickle = TrickleServer()
    trickle.add_routes(app)
    server = await HttpsServer(app).start(certificate)
    yield server, trickle
    await server.stop()


async def publish_and_read(url: str, policy: OutboundPolicy) -> bytes | None:
    publisher = TricklePublisher(url, policy=policy)
    subscriber = TrickleSubscriber(url, policy=policy, start_seq=0, max_retries=2, retry_delay=0.05)
    try:
        writer = await publisher.next_segment()
        await writer.write(b"segment-over-tls")
        await writer.close(timeout=5)
        segment = await subscriber.next_segment()
        if segment is None:
            return None
        return await segment.read()
    finally:
        await subscriber.close()
        await publisher.close()


async def test_self_signed_trickle_server_is_refused_by_default(https_trickle):
    server, trickle = https_trickle
    policy = OutboundPolicy.from_settings(Settings())
    assert await publish_and_read(server.base_url + "/ai/trickle/ch", policy) is None
    assert server.requests == []  # no HTTP request got past the handshake
    assert trickle.stats()["segments_published"] == 0


async def test_tls_ca_file_makes_the_certificate_trusted(https_trickle, certificate):
    server, trickle = https_trickle
    policy = OutboundPolicy.from_settings(Settings(tls_ca_file=str(certificate[0])))
    assert await publish_and_read(server.base_url + "/ai/trickle/ch", policy) == b"segment-over-tls"
    assert trickle.stats()["segments_published"] == 1


async def test_tls_insecure_hosts_skips_verification_for_that_host_only(https_trickle):
    server, _ = https_trickle
    policy = OutboundPolicy.from_settings(Settings(tls_insecure_hosts="127.0.0.1"))
    assert await publish_and_read(server.base_url + "/ai/trickle/ch", policy) == b"segment-over-tls"
    assert policy.ssl_for("https://orch.example:8935/x") is policy.tls.context
    assert policy.ssl_for("https://127.0.0.1:1/x") is False


# -- registration: ORCH_SECRET ------------------------------------------------------------------
@pytest.fixture
async def https_orchestrator(certificate):
    registers: list[dict] = []

    async def register(request: web.Request) -> web.Response:
        registers.append({"auth": request.headers.get("Authorization"), "body": await request.json()})
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/capability/register", register)
    app.router.add_post("/capability/unregister", register)
    server = await HttpsServer(app).start(certificate)
    yield server, registers
    await server.stop()


def registrar(url: str, tls: TlsPolicy) -> OrchestratorRegistrar:
    return OrchestratorRegistrar(url, SECRET, CapabilityRegistration(name="tls-cap", url="http://w:1"), tls=tls)


async def test_secret_is_not_sent_to_an_unverified_orchestrator(https_orchestrator, caplog):
    server, registers = https_orchestrator
    caplog.set_level(logging.DEBUG)
    worker = registrar(server.base_url, TlsPolicy())
    try:
        assert await worker.register_once() is False
    finally:
        await worker.stop(unregister=True)
    assert registers == [] and server.requests == []
    assert "TLS_INSECURE_HOSTS" in worker.last_error and "certificate" in worker.last_error
    assert SECRET not in caplog.text and SECRET not in json.dumps(worker.snapshot())


@pytest.mark.parametrize("how", ["ca_file", "insecure_host"])
async def test_secret_goes_to_a_verified_or_listed_orchestrator(https_orchestrator, certificate, how):
    server, registers = https_orchestrator
    tls = TlsPolicy(ca_file=str(certificate[0])) if how == "ca_file" else TlsPolicy(insecure_hosts=["127.0.0.1"])
    worker = registrar(server.base_url, tls)
    try:
        assert await worker.register_once() is True, worker.last_error
    finally:
        await worker.stop(unregister=False)
    assert registers[0]["auth"] == SECRET and registers[0]["body"]["name"] == "tls-cap"


async def test_secret_over_plain_http_only_to_loopback_or_a_listed_host(caplog):
    caplog.set_level(logging.DEBUG)
    for url in ("http://10.255.255.1:8935", "http://orch.example:8935"):
        worker = registrar(url, TlsPolicy())
        worker.start()  # refuses at once: no task, no connection
        assert worker.state == "refused" and worker._task is None
        assert await worker.register_once() is False and worker.attempts == 1
        assert "plain http" in worker.last_error
        await worker.stop()
    assert "ORCH_SECRET not sent" in caplog.text and SECRET not in caplog.text
    assert registrar("http://orch.example:8935", TlsPolicy(insecure_hosts=["orch.example"])).refusal is None
    assert registrar("http://127.0.0.1:8935", TlsPolicy()).refusal is None
    assert registrar("http://localhost:8935", TlsPolicy()).refusal is None


def test_unreadable_ca_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="TLS_CA_FILE .* cannot be loaded"):
        TlsPolicy(ca_file=str(tmp_path / "missing.pem"))
