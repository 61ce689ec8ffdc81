"""Both WebVTT routes (live captions and a recorded video's transcript) go through the one writer
(media/captions.py), which escapes cue text as WebVTT requires: '&', '<' and '>'."""

from __future__ import annotations

import time

from media.events import CaptionEvent
from media.manager import STREAMS_KEY
from server.keys import RUNNER_KEY, TRICKLE_KEY
from tests.conftest import wait_until

HOSTILE = "Tom & Jerry <b>bold</b>"
ESCAPED = "Tom &amp; Jerry &lt;b&gt;bold&lt;/b&gt;"


async def test_live_captions_vtt_escapes_cue_text(make_server):
    server = await make_server(asr_preload=False)
    trickle = server.app[TRICKLE_KEY]
    trickle.create_channel("vtt-in")
    trickle.create_channel("vtt-out")
    resp = await server.session.post(
        server.url("/stream/start"),
        json={"subscribe_url": server.trickle_url("vtt-in"), "publish_url": server.trickle_url("vtt-out")},
    )
    manifest_id = (await resp.json())["manifest_id"]
    stream = server.app[STREAMS_KEY].get_active(manifest_id)
    stream.events.publish(CaptionEvent(text=HOSTILE, final=True, translations={"es": "Tom & Jerry <i>es</i>"}))
    assert await wait_until(lambda: stream.captions.finals())
    vtt = await (await server.session.get(server.url(f"/stream/{manifest_id}/captions.vtt"))).text()
    assert ESCAPED in vtt and "<b>" not in vtt and " & " not in vtt
    spanish = await (await server.session.get(server.url(f"/stream/{manifest_id}/captions.vtt?lang=es"))).text()
    assert "Tom &amp; Jerry &lt;i&gt;es&lt;/i&gt;" in spanish


async def test_transcript_vtt_escapes_cue_text(make_server):
    server = await make_server(asr_preload=False)
    segments = [{"start": 0.5, "end": 2.0, "text": HOSTILE, "translations": {"es": "a <b> & c"}}]
    await server.app[RUNNER_KEY].store.insert(
        {
            "id": "vttescape1",
            "kind": "analyze",
            "status": "completed",
            "created_at": time.time(),
            "finished_at": time.time(),
            "request": {},
            "result": {"transcript": {"language": "en", "segments": segments}},
        }
    )
    vtt = await (await server.session.get(server.url("/v1/jobs/vttescape1/transcript.vtt"))).text()
    assert vtt.startswith("WEBVTT") and ESCAPED in vtt and "<b>" not in vtt
    spanish = await (await server.session.get(server.url("/v1/jobs/vttescape1/transcript.vtt?lang=es"))).text()
    assert "a &lt;b&gt; &amp; c" in spanish
    srt = await (await server.session.get(server.url("/v1/jobs/vttescape1/transcript.srt"))).text()
    assert HOSTILE in srt  # SRT has no escaping: players show its text as written
