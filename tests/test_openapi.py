"""OpenAPI 3.1 from the route declarations, and a schemathesis run against the real server.

The server runs as `streamlens serve` in a subprocess on a loopback port (schemathesis calls it with
`requests` from the test thread). Outbound connections are confined to 127.0.0.1 by the outbound
policy, so fuzzed URLs never leave the machine. The run is bounded: a few examples per operation.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from httpapi.routes import registry_of
from server.app import create_app
from server.openapi import openapi_document
from server.settings import Settings

# every role's token set, each different: an operation is called with the token of its declared role
TOKENS = {
    "api": "fuzz-api-token",
    "livepeer": "fuzz-livepeer-token",
    "ingest": "fuzz-ingest-token",
    "viewer": "fuzz-viewer-token",
    "trickle": "fuzz-trickle-token",
    "metrics": "fuzz-metrics-token",
}
TOKEN_ENV = {
    "API_TOKEN": TOKENS["api"],
    "AUTH_TOKEN": TOKENS["livepeer"],
    "WHIP_TOKEN": TOKENS["ingest"],
    "WHEP_TOKEN": TOKENS["viewer"],
    "TRICKLE_TOKEN": TOKENS["trickle"],
    "METRICS_TOKEN": TOKENS["metrics"],
}
EXAMPLES_PER_OPERATION = int(os.environ.get("STREAMLENS_FUZZ_EXAMPLES", "8"))


def test_every_declared_route_is_documented_with_its_role():
    app = create_app(Settings())
    doc = openapi_document(app)
    assert doc["openapi"] == "3.1.0"
    ops = {(method.upper(), path): op for path, methods in doc["paths"].items() for method, op in methods.items()}
    for spec in registry_of(app).specs:
        if spec.hidden or spec.method == "OPTIONS":
            continue
        op = ops[(spec.method, spec.path)]
        assert op["x-role"] == [r.value for r in spec.roles]
        if spec.public:
            assert op["security"] == []
        else:
            assert {"api"} <= {k for req in op["security"] for k in req} or op["security"], spec.path
            assert "401" in op["responses"]
    start = ops[("POST", "/stream/start")]
    assert {k for req in start["security"] for k in req} == {"api", "livepeer"}  # one route, two roles
    body = start["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/StartRequest"}
    assert "subscribe_url" in doc["components"]["schemas"]["StartRequest"]["properties"]
    assert set(doc["components"]["securitySchemes"]) >= {"api", "livepeer", "ingest", "viewer", "trickle", "metrics"}
    error = doc["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def live_server():
    port = _free_port()
    env = dict(
        os.environ,
        **TOKEN_ENV,
        ASR_PRELOAD="false",
        MAX_STREAMS="2",
        OUTBOUND_ALLOW="127.0.0.1/32",
        INPUT_TIMEOUT="3",
        WEBRTC_CONNECT_TIMEOUT="2",
        LOG_LEVEL="WARNING",
        DATA_DIR=tempfile.mkdtemp(prefix="streamlens-fuzz-"),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(base + "/health", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("streamlens serve did not start: " + proc.stderr.read().decode()[-2000:])
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@schemathesis.serializer("application/sdp", "application/trickle-ice-sdpfrag")
def _sdp_text(_ctx, value) -> bytes:
    """SDP bodies are text; fuzzed values arrive as strings (or bytes for binary formats)."""
    return value if isinstance(value, bytes) else str(value).encode()


def no_undeclared_server_error(ctx, response, case) -> bool | None:
    """No 5xx, except a 503 the operation declares (capacity, a busy backend)."""
    declared = {str(code) for code in case.operation.definition.raw.get("responses", {})}
    if response.status_code >= 500 and not (response.status_code == 503 and "503" in declared):
        raise AssertionError(f"{response.status_code} from {case.method} {case.formatted_path}: {response.text[:300]}")
    return None


CHECKS = [
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
]


def operation_headers(operation) -> dict[str, str]:
    """The bearer of the first role the operation declares (none for public routes)."""
    for requirement in operation.definition.raw.get("security", []):
        for role in requirement:
            if role in TOKENS:
                return {"Authorization": f"Bearer {TOKENS[role]}"}
    return {}


def test_fuzz_the_api_from_its_description(live_server):
    """With every role's token set: no 5xx but a declared 503, and every response matches the
    document (status codes, content types, bodies). Operations are driven one by one
    (schemathesis' pytest loader predates pytest 9)."""
    schema = schemathesis.openapi.from_url(live_server + "/openapi.json")
    operations, examples, failures = 0, 0, []
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
        def run(case):
            nonlocal examples
            examples += 1
            response = case.call(headers=operation_headers(operation), timeout=30)  # noqa: B023 - run() runs here
            no_undeclared_server_error(None, response, case)
            case.validate_response(response, checks=CHECKS)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # one failing operation must not hide the others
            failures.append(f"{operation.label}: {str(exc)[:600]}")
    print(f"schemathesis: {operations} operations, {examples} examples, {len(failures)} failures")
    assert not failures, "\n\n".join(failures)
    assert operations >= 40 and examples >= operations
