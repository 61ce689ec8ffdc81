"""No token, secret or `?token=` value appears in a log line, an error body, a status or /metrics."""

from __future__ import annotations

import logging

from server.access import redact

SECRETS = dict(
    api_token="tok-API-7f3a",
    auth_token="tok-AUTH-91be",
    whep_token="tok-WHEP-0c2d",
    metrics_token="tok-METRICS-55aa",
    trickle_token="tok-TRICKLE-e1e1",
    whip_token="tok-WHIP-4b4b",
    orch_secret="tok-ORCH-SECRET-dd01",
)


async def test_secrets_never_reach_logs_bodies_status_or_metrics(make_server, orch_trickle, caplog):
    caplog.set_level(logging.DEBUG)
    server = await make_server(**SECRETS, orch_url="http://127.0.0.1:9/", capability_url="http://127.0.0.1:1")
    api = {"Authorization": f"Bearer {SECRETS['api_token']}"}
    resp = await server.session.post(
        server.url("/stream/start"),
        headers=api,
        json={"subscribe_url": orch_trickle.trickle_url("sec"), "manifest_id": "sec"},
    )
    assert resp.status == 200
    viewer = (await resp.json())["viewer_token"]
    seen: list[str] = []
    # right and wrong tokens, in headers and in the query string, on many kinds of route
    for token in (*SECRETS.values(), viewer, "tok-WRONG-0000"):
        for method, path in (
            ("GET", f"/stream/sec/captions.vtt?token={token}"),
            ("GET", f"/streams?token={token}"),
            ("GET", "/metrics"),
            ("POST", "/stream/start"),
            ("GET", "/stream/sec/status"),
            ("GET", f"/stream/missing/events?token={token}"),
        ):
            resp = await server.session.request(
                method,
                server.url(path),
                headers={"Authorization": f"Bearer {token}"},
                json={"subscribe_url": "ftp://x"} if method == "POST" else None,
            )
            seen.append(await resp.text())
    for path in ("/health", "/stream/sec/status", "/streams"):
        seen.append(await (await server.session.get(server.url(path), headers=api)).text())
    seen.append(
        await (
            await server.session.get(
                server.url("/metrics"), headers={"Authorization": f"Bearer {SECRETS['metrics_token']}"}
            )
        ).text()
    )
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "captions.vtt" in logged  # the access log did see these requests ...
    for secret in (*SECRETS.values(), viewer):
        assert secret not in logged, secret  # ... but never a secret
        for text in seen:
            assert secret not in text, (secret, text[:200])


def test_redaction_of_query_tokens():
    assert (
        redact('"GET /stream/a/events?token=abc123&kinds=tags HTTP/1.1"')
        == '"GET /stream/a/events?token=[redacted]&kinds=tags HTTP/1.1"'
    )
    assert redact("/x?kinds=a&access_token=zzz") == "/x?kinds=a&access_token=[redacted]"
