"""Settings of recorded-video analysis: env prefix ``ANALYSIS_`` (plus the shared ``DATA_DIR``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# media containers only: no playlists (hls, concat), image sequences, subtitles or text demuxers, which
# open further files or read a text file as pictures
INPUT_FORMATS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,mpegts,mpeg,flv,avi,asf,mp3,wav,ogg,aac,flac,h264,hevc,m4v,ivf"


class AnalysisSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ANALYSIS_", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(
        Path("./data"),
        validation_alias=AliasChoices("DATA_DIR", "data_dir"),
        description="DATA_DIR: where the jobs database and uploaded inputs live",
    )
    workers: int = Field(1, ge=1, le=16, description="ANALYSIS_WORKERS: jobs that run at once")
    max_queued: int = Field(16, ge=0, le=10_000, description="ANALYSIS_MAX_QUEUED: jobs waiting to run; beyond it 503")
    retention_days: float = Field(7.0, gt=0, description="ANALYSIS_RETENTION_DAYS: finished jobs are kept this long")
    max_jobs: int = Field(10_000, ge=10, description="ANALYSIS_MAX_JOBS: rows kept; the oldest finished go first")
    max_bytes: int = Field(
        2 * 1024**3, ge=1024, description="ANALYSIS_MAX_BYTES: largest input (upload or download), bytes; beyond it 413"
    )
    disk_budget: int = Field(
        16 * 1024**3,
        ge=1024 * 1024,
        description="ANALYSIS_DISK_BUDGET: bytes all inputs on disk (uploads, downloads) may take",
    )
    fetch_timeout: float = Field(600.0, gt=0, description="ANALYSIS_FETCH_TIMEOUT: seconds to download a video_url")
    max_duration: float = Field(6 * 3600.0, gt=0, description="ANALYSIS_MAX_DURATION: longest video accepted, seconds")
    max_samples: int = Field(20_000, ge=1, description="ANALYSIS_MAX_SAMPLES: most frames one tagging job samples")
    vlm_concurrency: int = Field(
        4, ge=1, le=64, description="ANALYSIS_VLM_CONCURRENCY: VLM requests in flight per tagging job"
    )
    tag_threads: int = Field(
        2, ge=1, le=16, description="ANALYSIS_TAG_THREADS: threads per job for the embedded models (low priority)"
    )
    niceness: int = Field(10, ge=0, le=19, description="ANALYSIS_NICENESS: nice value of analysis threads (live first)")
    wait_timeout: float = Field(
        3600.0, gt=0, description="ANALYSIS_WAIT_TIMEOUT: longest a synchronous /v1/inference call waits"
    )
    transcript_window: float = Field(
        300.0, ge=5, le=3600, description="ANALYSIS_TRANSCRIPT_WINDOW: seconds of audio per speech-model call"
    )
    face_max_side: int = Field(
        400,
        ge=160,
        le=4096,
        description="ANALYSIS_FACE_MAX_SIDE: longer side frames are scaled to for face detection "
        "(the smallest face found is 24 px there; raise it for small faces, at "
        "about (side/400)^2 the time)",
    )
    max_subscribers: int = Field(64, ge=1, description="ANALYSIS_MAX_SUBSCRIBERS: open job event streams, in all")
    upload_idle_timeout: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="ANALYSIS_UPLOAD_IDLE_TIMEOUT: seconds an upload may send nothing "
        "before it is dropped (408; its disk budget is given back)",
    )
    upload_timeout: float = Field(
        3600.0, gt=0, description="ANALYSIS_UPLOAD_TIMEOUT: seconds a whole multipart upload may take (408)"
    )
    max_request_bytes: int = Field(
        128 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="ANALYSIS_MAX_REQUEST_BYTES: largest job request (its options as JSON) "
        "stored with a job; beyond it 413 at submission",
    )
    db_budget: int = Field(
        1024**3,
        ge=1024 * 1024,
        description="ANALYSIS_DB_BUDGET: bytes the jobs database may hold; beyond it the oldest "
        "finished jobs are removed",
    )
    input_formats: str = Field(
        INPUT_FORMATS,
        min_length=1,
        description="ANALYSIS_INPUT_FORMATS: FFmpeg demuxers an input may be read with "
        "(comma-separated); anything else fails as an unsupported input format",
    )
    image_patch_size: int = Field(
        16,
        ge=1,
        le=64,
        validation_alias=AliasChoices("IMAGE_PATCH_SIZE", "ANALYSIS_IMAGE_PATCH_SIZE", "image_patch_size"),
        description="IMAGE_PATCH_SIZE: the VLM's patch side in pixels; prompt-answer frames "
        "have sides in multiples of twice it (16: Qwen3-VL, 32 px; 14: "
        "Qwen2.5-VL, 28 px)",
    )

    @property
    def db_path(self) -> Path:
        return self.data_dir / "analysis.sqlite3"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "analysis-inputs"
