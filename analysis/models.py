"""Request and response models of recorded-video analysis (they feed validation and OpenAPI).

Shapes follow the two designs this feature comes from: the TRU VLM platform's
`/v1/inference/url` body (video_url, prompt, video_params, generation_params) and the VLM Engine's
`process_video` options (tag_list, frame_interval, threshold, return_timestamps, return_confidence).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

JobKind = Literal["inference", "analyze", "transcribe"]
JobStatus = Literal["queued", "running", "completed", "failed", "cancelled", "interrupted"]
MAX_URL = 4096
# list items are bounded too: a job's options are stored with it and listed (ANALYSIS_MAX_REQUEST_BYTES)
Tag = Annotated[str, StringConstraints(max_length=128)]
Language = Annotated[str, StringConstraints(max_length=16)]


def check_video_url(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("video_url must be an http:// or https:// URL")
    return value.strip()


def _split_list(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    return value


class VideoParams(BaseModel):
    """Frame sampling for a prompt answer (the TRU parameters)."""

    model_config = ConfigDict(extra="forbid")

    fps: float = Field(2.0, gt=0, le=30, description="frames sampled per second of video")
    max_frames: int = Field(768, ge=1, le=4096, description="at most this many frames, spread evenly")
    min_pixels: int = Field(4096, ge=784, le=16_777_216, description="smallest frame area (pixels)")
    max_pixels: int = Field(262_144, ge=784, le=16_777_216, description="largest frame area (pixels)")
    total_pixels: int = Field(20_000_000, ge=784, le=1_000_000_000, description="pixel budget over all frames")


class GenerationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(2048, ge=1, le=32_768)
    temperature: float = Field(0.7, ge=0.0, le=2.0)


class InferenceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., min_length=1, max_length=20_000)
    video_params: VideoParams = Field(default_factory=VideoParams)
    generation_params: GenerationParams = Field(default_factory=GenerationParams)


class InferenceUrlRequest(InferenceOptions):
    """`POST /v1/inference/url`."""

    video_url: str = Field(..., max_length=MAX_URL)
    _url = field_validator("video_url")(classmethod(lambda cls, v: check_video_url(v)))


class AnalyzeOptions(BaseModel):
    """Timed tags (and optionally the transcript) of a recorded video."""

    model_config = ConfigDict(extra="forbid")

    tag_list: list[Tag] = Field(
        default_factory=list, max_length=64, description="tags to look for; empty: face and text (embedded)"
    )
    frame_interval: float = Field(0.5, ge=0.05, le=3600, description="seconds between sampled frames")
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    return_timestamps: bool = True
    return_confidence: bool = True
    backend: Literal["embedded", "vlm"] = "embedded"
    transcript: bool = False
    translate_to: list[Language] = Field(default_factory=list, max_length=8)
    language: str | None = Field(None, max_length=16, description="spoken language; default ASR_LANGUAGE")

    _lists = field_validator("tag_list", "translate_to", mode="before")(classmethod(lambda cls, v: _split_list(v)))


class AnalyzeRequest(AnalyzeOptions):
    """`POST /v1/analyze` (JSON form; the multipart form sends `video` plus these as fields)."""

    video_url: str = Field(..., max_length=MAX_URL)
    _url = field_validator("video_url")(classmethod(lambda cls, v: check_video_url(v)))


class TranscribeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    translate_to: list[Language] = Field(default_factory=list, max_length=8)
    language: str | None = Field(None, max_length=16)

    _lists = field_validator("translate_to", mode="before")(classmethod(lambda cls, v: _split_list(v)))


class TranscribeRequest(TranscribeOptions):
    video_url: str = Field(..., max_length=MAX_URL)
    _url = field_validator("video_url")(classmethod(lambda cls, v: check_video_url(v)))


# -- responses -------------------------------------------------------------------------------------


class JobAccepted(BaseModel):
    job_id: str
    status: JobStatus = "queued"
    status_url: str
    events_url: str


class JobProgress(BaseModel):
    fraction: float
    frames_done: int
    frames_planned: int | None
    eta_seconds: float | None
    phase: str | None


class JobView(BaseModel):
    id: str
    kind: JobKind
    status: JobStatus
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: JobProgress
    request: dict[str, Any]
    request_truncated: bool = Field(
        False, description="in a list: long values of `request` are shortened (GET /v1/jobs/{id} has them whole)"
    )
    input_name: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    attempts: int = 0


class JobList(BaseModel):
    jobs: list[JobView]
    total: int
    limit: int
    offset: int


class FrameInfo(BaseModel):
    t: float
    width: int
    height: int


class InferenceAnswer(BaseModel):
    """The TRU answer shape."""

    job_id: str
    text: str
    model: str
    usage: dict[str, Any] | None
    frames: list[FrameInfo]
    duration: float
    timing: dict[str, float]


class HealthBasic(BaseModel):
    status: str
    version: str


class HealthDetailed(BaseModel):
    status: str
    version: str
    models: dict[str, Any]
    gpu: dict[str, Any]
    jobs: dict[str, Any]
