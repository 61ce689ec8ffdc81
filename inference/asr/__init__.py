"""Streaming speech recognition for live captions (faster-whisper + Silero VAD, utterance decodes
batched across streams).

Typical wiring (composition root):

    pool = AsrModelPool(AsrSettings())          # one per process: one loaded model for all streams
    pool.start_loading()                        # optional: load at server start (/health: LOADING)
    stage = CaptionStage(pool, translate=...)   # one per stream
"""

from inference.asr.audio import AudioRing, Resampler16k
from inference.asr.model import (
    AsrModelPool,
    AsrResult,
    AsrSegment,
    AsrSettings,
    AsrWord,
    UtteranceResult,
    resolve_model,
    shared_pool,
)
from inference.asr.policy import Word, clean_hypothesis, quietest_cut
from inference.asr.stage import CaptionParams, CaptionStage, TranslateFn
from inference.asr.streaming import StreamingTranscriber
from inference.asr.vad import StreamingVad, VadEvent

__all__ = [
    "AsrModelPool",
    "AsrResult",
    "AsrSegment",
    "AsrSettings",
    "AsrWord",
    "AudioRing",
    "CaptionParams",
    "CaptionStage",
    "Resampler16k",
    "StreamingTranscriber",
    "StreamingVad",
    "TranslateFn",
    "UtteranceResult",
    "VadEvent",
    "Word",
    "clean_hypothesis",
    "quietest_cut",
    "resolve_model",
    "shared_pool",
]
