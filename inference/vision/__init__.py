"""Vision on live frames: backends (embedded OpenCV tagger, OpenAI-compatible VLM multiplexer,
TensorRT engine), the shared backend registry and the per-stream sampling stage.

Images passed to backends are RGB ``uint8`` arrays ``(h, w, 3)``; see `inference.vision.base`.
Importing this package never imports torch or tensorrt.
"""

from inference.vision.base import (
    BackendBusy,
    BackendUnavailable,
    VisionBackend,
    VisionRequest,
    VisionResult,
)
from inference.vision.embedded import EMBEDDED_MODEL_NAME, EMBEDDED_TAGS, EmbeddedTagger
from inference.vision.multiplexer import VlmConfig, VlmMultiplexer
from inference.vision.openai_vlm import VlmEndpointConfig
from inference.vision.stage import VisionBackends, VisionParams, VisionSettings, VisionStage
from inference.vision.tensorrt_backend import TensorRtConfig

__all__ = [
    "EMBEDDED_MODEL_NAME",
    "EMBEDDED_TAGS",
    "BackendBusy",
    "BackendUnavailable",
    "EmbeddedTagger",
    "TensorRtConfig",
    "VisionBackend",
    "VisionBackends",
    "VisionParams",
    "VisionRequest",
    "VisionResult",
    "VisionSettings",
    "VisionStage",
    "VlmConfig",
    "VlmEndpointConfig",
    "VlmMultiplexer",
]
