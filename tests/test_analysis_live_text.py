"""On-screen text (RapidOCR) in live streams' embedded vision: a stream whose vision params ask for
`text` gets `text` tags with the words read, on the same VisionStage path as faces."""

from __future__ import annotations

import av

from inference.vision.embedded import TextTag
from inference.vision.stage import VisionBackends, VisionSettings, VisionStage
from tests.analysis_media import text_card
from tests.conftest import wait_until
from tests.test_vision_stage import Feeder, drain, start_stage


async def test_live_stream_text_tags_carry_the_words() -> None:
    backends = VisionBackends(VisionSettings())
    stage = VisionStage(backends, {"vision": {"interval": 0.5, "backend": "embedded", "tag_list": ["text", "face"]}})
    bus, _reports = await start_stage(stage)
    sub = bus.subscribe(kinds={"tags"})
    feeder = Feeder(stage, seconds=2.5)
    feeder.frame = av.VideoFrame.from_ndarray(text_card(640, 360, "LIVE CAPTION"), format="rgb24").reformat(
        format="yuv420p"
    )
    try:
        await feeder.run()
        # the first sample also loads the OCR models (a second or more on a busy machine)
        await wait_until(lambda: stage.stats()["published"] and not stage.stats()["in_flight"], timeout=15)
    finally:
        await stage.stop()
        await backends.close()
    events = await drain(sub)
    assert events, stage.stats()
    for event in events:
        texts = [t for t in event.tags if t.name == "text"]
        assert texts and isinstance(texts[0], TextTag) and texts[0].words.upper() == "LIVE CAPTION"
        assert not [t for t in event.tags if t.name == "face"]
        # every sink formats the event dict: the words travel with the tag
        assert event.to_dict()["tags"][0]["words"].upper() == "LIVE CAPTION"
