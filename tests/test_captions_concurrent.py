"""Several captioned trickle streams at once on one shared speech model: each stream, speaking
different sentences, gets its own finals; each one's lag is in its status, its events and
/metrics. Real trickle over loopback, real codecs, the embedded tiny.en model."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from server.features import ASR_KEY
from server.keys import TRICKLE_KEY
from tests.conftest import wait_until
from tests.media_gen import make_segments
from tests.speech import build_track, normalize_text, speech_tools_available, to_48k_int16
from tests.sse import SseReader
from tests.trickle_helpers import publish_realtime

pytestmark = pytest.mark.skipif(not speech_tools_available(), reason="needs espeak-ng and sox")

SPEECH = [
    ["We will meet at the library after lunch.", "The museum is closed during the winter."],
    ["The train to the city leaves from the north station.", "Please turn off the lights."],
    ["My brother likes to play the guitar in the evening.", "A small boat was sailing across the lake."],
]


async def test_every_concurrent_stream_gets_its_own_finals(server):
    pool = server.app[ASR_KEY]
    trickle = server.app[TRICKLE_KEY]
    streams = []
    for k, sentences in enumerate(SPEECH):
        track = build_track(sentences, pause_seconds=0.8, lead_seconds=0.5 + 0.3 * k, tail_seconds=1.5)
        segments = make_segments(int(np.ceil(track.duration)), 192, 192, audio_samples=to_48k_int16(track.audio))
        trickle.create_channel(f"talk{k}")
        resp = await server.session.post(
            server.url("/stream/start"),
            json={
                "subscribe_url": server.trickle_url(f"talk{k}"),
                "params": {"captions": {"enabled": True, "language": "en", "burn_in": False}},
            },
        )
        body = await resp.json()
        assert resp.status == 200, body
        reader = SseReader(server.session, server.url(f"/stream/{body['manifest_id']}/captions")).start()
        streams.append((body["manifest_id"], sentences, segments, reader))
    for _, _, _, reader in streams:
        await asyncio.wait_for(reader.connected.wait(), 5)
    batches_before = pool.counters.batches
    await asyncio.gather(
        *(
            publish_realtime(server.trickle_url(f"talk{k}"), segments, token=server.token("trickle"))
            for k, (_, _, segments, _) in enumerate(streams)
        )
    )

    def finals(reader):
        return [m.data for m in reader.of("final") if m.data["text"]]

    assert await wait_until(lambda: all(len(finals(r)) >= 2 for *_, r in streams), timeout=30), [
        [f["text"] for f in finals(r)] for *_, r in streams
    ]

    metrics = await (await server.session.get(server.url("/metrics"))).text()
    for manifest_id, sentences, _, reader in streams:
        # its own words, nobody else's
        heard = normalize_text(" ".join(f["text"] for f in finals(reader)))
        own = {w for s in sentences for w in normalize_text(s).split() if len(w) > 5}
        others = {
            w
            for other in SPEECH
            if other is not sentences
            for s in other
            for w in normalize_text(s).split()
            if len(w) > 5
        } - own
        assert len([w for w in own if w in heard]) >= len(own) - 1, (sentences, heard)
        assert not [w for w in others if w in heard], heard
        # one final per caption id; lag travels on every caption event
        ids = [f["id"] for f in finals(reader)]
        assert len(ids) == len(set(ids))
        assert all(m.data["lag"] >= 0 for m in reader.messages)
        status = await (await server.session.get(server.url(f"/stream/{manifest_id}/status"))).json()
        captions = status["stages"]["captions"]
        assert captions["finals"] >= 2 and captions["lag_seconds"] >= 0 and "max_lag_seconds" in captions
        assert f'streamlens_asr_lag_seconds{{manifest_id="{manifest_id}"}}' in metrics
    assert "streamlens_asr_batches_total" in metrics and "streamlens_asr_partials_skipped_total" in metrics
    assert pool.counters.batches > batches_before
    for manifest_id, *_, reader in streams:
        await server.session.delete(server.url(f"/stream/{manifest_id}"))
        await reader.stop()
    assert await wait_until(lambda: not pool.streams, timeout=10)  # stopped streams leave /metrics
