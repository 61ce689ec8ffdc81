"""Vision on a live trickle stream: the embedded face tagger sees a real photograph, its tags
arrive as events over SSE, and the boxes are drawn on the output video."""

from __future__ import annotations

import asyncio

import numpy as np
from skimage import data as skdata

from media.manager import STREAMS_KEY
from server.keys import TRICKLE_KEY
from tests.conftest import wait_until
from tests.media_gen import decode_ts, make_segments, picture_i420
from tests.sse import SseReader
from tests.trickle_helpers import OutputCollector, publish_realtime


async def test_face_tags_flow_as_events_and_boxes_are_drawn(server):
    trickle = server.app[TRICKLE_KEY]
    trickle.create_channel("astro")
    trickle.create_channel("astro-out")
    photo = skdata.astronaut()  # 512x512 RGB, a face in the upper middle
    segments = make_segments(4, 512, 512, picture=photo, stamp_ids=False)

    resp = await server.session.post(
        server.url("/stream/start"),
        json={
            "subscribe_url": server.trickle_url("astro"),
            "publish_url": server.trickle_url("astro-out"),
            "params": {"vision": {"enabled": True, "interval": 0.5, "backend": "embedded"}},
        },
    )
    body = await resp.json()
    assert resp.status == 200, body
    manifest_id = body["manifest_id"]
    events = SseReader(server.session, server.url(f"/stream/{manifest_id}/events?kinds=tags")).start()
    await asyncio.wait_for(events.connected.wait(), 5)
    collector = OutputCollector(server.trickle_url("astro-out"), token=server.token("trickle")).start()
    await publish_realtime(server.trickle_url("astro"), segments, token=server.token("trickle"))

    assert await wait_until(
        lambda: any(any(t["name"] == "face" for t in m.data["tags"]) for m in events.of("tags")), timeout=10
    )
    tag_event = next(m for m in events.of("tags") if any(t["name"] == "face" for t in m.data["tags"]))
    face = next(t for t in tag_event.data["tags"] if t["name"] == "face")
    x, y, w, h = face["box"]
    assert 150 <= x + w / 2 <= 330 and 40 <= y + h / 2 <= 200  # the astronaut's face
    assert tag_event.data["model"] == "opencv-haar-face+frame-stats"
    assert tag_event.data["latency_ms"] > 0 and tag_event.data["pts"] is not None

    stream = server.app[STREAMS_KEY].get(manifest_id)
    assert await wait_until(lambda: stream.frames_out + stream.frames_dropped >= stream.frames_in >= 115, timeout=10)
    resp = await server.session.delete(server.url(f"/stream/{manifest_id}"))
    assert resp.status == 200
    await asyncio.wait_for(collector.ended.wait(), 10)
    await asyncio.wait_for(events.ended.wait(), 10)  # the SSE feed ends with the stream

    frames, _ = decode_ts(collector.data())
    original = picture_i420(photo, 512, 512)[:512].astype(int)
    # along the box's top edge the output is drawn bright (luma 235) where the photo was not
    edge_diffs = []
    for frame in frames[-30:]:
        luma = frame.to_ndarray()[:512].astype(int)
        edge = luma[int(y), int(x) + 4 : int(x + w) - 4]
        edge_diffs.append(np.mean(edge - original[int(y), int(x) + 4 : int(x + w) - 4]))
    assert max(edge_diffs) > 40
    await collector.stop()
    await events.stop()
