"""Capability registration against a stand-in orchestrator.

The stand-in is a small aiohttp server on loopback that implements go-livepeer's
`/capability/register` and `/capability/unregister` (byoc/job_orchestrator.go): it checks the raw
`Authorization: <secret>` header (400 "invalid authorization" otherwise), records every call, and
can be told to fail the first N registrations with 500.
"""

from __future__ import annotations

import json
import logging
import ssl
import subprocess

import pytest
from aiohttp import web

from byoc.registration import CapabilityRegistration, OrchestratorRegistrar, RetryPlan
from byoc.service import LIVEPEER_KEY
from httpapi.outbound import TlsPolicy
from server.settings import SETTINGS_KEY, Settings
from tests.conftest import start_server, stop_server, wait_until

SECRET = "orch-s3cr3t-Zq81"


class StandInOrchestrator:
    def __init__(self, fail_first: int = 0, always_fail: bool = False) -> None:
        self.fail_first = fail_first
        self.always_fail = always_fail
        self.registers: list[dict] = []
        self.unregisters: list[dict] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _record(self, request: web.Request, into: list[dict]) -> web.Response | None:
        raw = await request.read()
        into.append({"headers": dict(request.headers), "raw": raw})
        if request.headers.get("Authorization") != SECRET:
            return web.Response(status=400, text="invalid authorization")
        return None

    async def register(self, request: web.Request) -> web.Response:
        refused = await self._record(request, self.registers)
        if refused is not None:
            return refused
        if self.always_fail or len(self.registers) <= self.fail_first:
            return web.Response(status=500, text="not now")
        json.loads(self.registers[-1]["raw"])  # go-livepeer unmarshals the body
        return web.Response(status=200, text="ok", content_type="application/json")

    async def unregister(self, request: web.Request) -> web.Response:
        refused = await self._record(request, self.unregisters)
        return refused or web.Response(status=200, text="ok")

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> StandInOrchestrator:
        app = web.Application()
        app.router.add_post("/capability/register", self.register)
        app.router.add_post("/capability/unregister", self.unregister)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        scheme = "https" if ssl_context else "http"
        self.url = f"{scheme}://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def orchestrator():
    stand_in = await StandInOrchestrator(fail_first=2).start()
    yield stand_in
    await stand_in.stop()


def worker_settings(orch_url: str, **overrides) -> Settings:
    values = dict(
        host="127.0.0.1",
        port=0,
        orch_url=orch_url,
        orch_secret=SECRET,
        auth_token="worker-token",
        capability_url="http://127.0.0.1:8935/",
        max_streams=3,
        register_retry_initial_delay=0.05,
        register_retry_max_delay=0.2,
        register_retry_attempts=10,
    )
    values.update(overrides)
    return Settings(**values)


async def test_registers_with_retries_and_unregisters_on_shutdown(orchestrator, caplog):
    caplog.set_level(logging.DEBUG)
    server = await start_server(worker_settings(orchestrator.url))
    try:
        # start-up does not wait for the orchestrator: the server answers at once
        assert (await server.session.get(server.url("/health"))).status == 200
        assert await wait_until(lambda: len(orchestrator.registers) >= 3, timeout=10)
        registrar = server.app[LIVEPEER_KEY].registrar
        assert await wait_until(lambda: registrar.state == "registered", timeout=5)
        assert len(orchestrator.registers) == 3  # two 500s, then 200; no more calls after that
        for call in orchestrator.registers:
            assert call["headers"]["Authorization"] == SECRET  # raw secret, not "Bearer ..."
            assert call["headers"]["Content-Type"] == "application/json"
            assert json.loads(call["raw"]) == {
                "name": "streamlens",
                "description": "streamlens: live captions, translation and vision on video streams",
                "url": "http://127.0.0.1:8935",
                "capacity": 3,
                "price_per_unit": 0,
                "price_scaling": 1,
                "currency": "wei",
                "token": "worker-token",  # the orchestrator will send it as Bearer
            }
        health = await (await server.session.get(server.url("/health"))).json()
        assert health["livepeer"]["registration"]["state"] == "registered"
        assert health["livepeer"]["registration"]["attempts"] == 3

        # answering the orchestrator with 401 makes it drop the capability: register again
        resp = await server.session.post(
            server.url("/stream/params"), json={"a": 1}, headers={"Authorization": "Bearer stale-token"}
        )
        assert resp.status == 401
        assert await wait_until(lambda: len(orchestrator.registers) == 4, timeout=5)
    finally:
        await stop_server(server)
    assert len(orchestrator.unregisters) == 1
    unregister = orchestrator.unregisters[0]
    assert unregister["headers"]["Authorization"] == SECRET and unregister["raw"] == b"streamlens"

    logged = "\n".join(f"{r.getMessage()} {r.args!r} {r.__dict__!r}" for r in caplog.records)
    assert "registered capability 'streamlens'" in logged
    assert SECRET not in logged  # the secret never reaches the logs
    assert SECRET not in repr(server.app[SETTINGS_KEY]) and SECRET not in repr(registrar)
    assert SECRET not in json.dumps(health)


async def test_keeps_retrying_slowly_without_blocking(make_server):
    stand_in = await StandInOrchestrator(always_fail=True).start()
    try:
        server = await make_server(
            orch_url=stand_in.url,
            orch_secret=SECRET,
            capability_url="http://w:1",
            register_retry_initial_delay=0.02,
            register_retry_attempts=2,
            register_retry_slow_interval=0.3,
            capability_name="slow-cap",
            capability_capacity=2,
            capability_price_per_unit=7,
            capability_price_scaling=3,
            capability_currency="eth",
            capability_token="cap-token",
            capability_description="d",
        )
        assert await wait_until(lambda: len(stand_in.registers) >= 4, timeout=5)
        registrar = server.app[LIVEPEER_KEY].registrar
        assert registrar.state == "retrying" and "500" in registrar.last_error
        assert [registrar.retry.delay(n) for n in (1, 2, 3)] == [0.02, 0.3, 0.3]
        body = json.loads(stand_in.registers[0]["raw"])
        assert body == {
            "name": "slow-cap",
            "description": "d",
            "url": "http://w:1",
            "capacity": 2,
            "price_per_unit": 7,
            "price_scaling": 3,
            "currency": "eth",
            "token": "cap-token",
        }
        assert (await server.session.get(server.url("/health"))).status == 200
    finally:
        await stand_in.stop()


async def test_wrong_secret_and_unreachable_orchestrator():
    stand_in = await StandInOrchestrator().start()
    registration = CapabilityRegistration(name="x", url="http://w:1")
    wrong = OrchestratorRegistrar(stand_in.url, "not-the-secret", registration)
    try:
        assert await wrong.register_once() is False
        assert wrong.last_error == "status 400: invalid authorization"
        right = OrchestratorRegistrar(stand_in.url + "/", SECRET, registration, retry=RetryPlan(initial_delay=0.01))
        assert await right.register_once() is True
        assert await right.unregister() is True
        await right.stop(unregister=False)
    finally:
        await wrong.stop(unregister=False)
        await stand_in.stop()
    # nothing listens there any more: a connection error, retried, never raised
    gone = OrchestratorRegistrar(
        stand_in.url, SECRET, registration, retry=RetryPlan(initial_delay=0.01, fast_attempts=3)
    )
    gone.start()
    assert await wait_until(lambda: gone.attempts >= 3, timeout=5)
    assert gone.state == "retrying" and gone.last_error
    await gone.stop()
    assert gone.state == "stopped"


def test_registration_is_off_without_url_and_secret():
    from byoc.mount import build_registrar

    assert build_registrar(Settings(orch_url="https://o:8935")) is None
    assert build_registrar(Settings(orch_secret="s")) is None
    registrar = build_registrar(Settings(orch_url="o:8935", orch_secret="s", port=9000))
    assert registrar.orch_url == "https://o:8935"
    assert registrar.registration.url.endswith(":9000") and registrar.registration.capacity == Settings().max_streams


async def test_self_signed_orchestrator_certificate_is_accepted_when_listed(tmp_path):
    """Orchestrators serve HTTPS with self-signed certificates; listed in TLS_INSECURE_HOSTS,
    registration works (unlisted, it is refused: tests/security/test_tls.py)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
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
            "/CN=orch",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    stand_in = await StandInOrchestrator().start(ssl_context=context)
    registrar = OrchestratorRegistrar(
        stand_in.url,
        SECRET,
        CapabilityRegistration(name="tls", url="http://w:1"),
        tls=TlsPolicy(insecure_hosts=["127.0.0.1"]),
    )
    try:
        assert stand_in.url.startswith("https://")
        assert await registrar.register_once() is True, registrar.last_error
        assert json.loads(stand_in.registers[0]["raw"])["name"] == "tls"
    finally:
        await registrar.stop(unregister=True)
        await stand_in.stop()
    assert stand_in.unregisters[0]["raw"] == b"tls"
