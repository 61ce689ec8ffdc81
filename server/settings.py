"""Server settings: environment variables, overridable by CLI flags (see README "Settings")."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every field reads the environment variable of the same name in upper case."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # -- server ------------------------------------------------------------------------------------
    host: str = Field("0.0.0.0", description="Address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    max_streams: int = Field(4, ge=1, description="Streams run at once; a start beyond it gets 503")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest JSON request body (bytes) → 413")
    api_token: str | None = Field(None, description="Bearer token for the public stream API (off when unset)")
    auth_token: str | None = Field(None, description="Bearer token for Livepeer routes (off when unset)")
    pipeline_name: str = Field("streamlens", description="Pipeline name reported by /version")
    model_id: str = Field("streamlens", description="Model id reported by /version (ai-runner checks it on start)")
    cors_origins: str = Field("*", description="Access-Control-Allow-Origin for browser-facing routes")

    # -- trickle server ----------------------------------------------------------------------------
    trickle_autocreate: bool = Field(True, description="Create trickle channels on first publish")
    trickle_idle_timeout: float = Field(300.0, gt=0, description="Seconds before an idle channel is swept")
    trickle_max_segment_bytes: int = Field(32 << 20, ge=1024, description="Largest trickle segment (bytes) → 413")
    trickle_max_channels: int = Field(256, ge=1, description="Channels the built-in server holds at once")

    # -- media pipeline ----------------------------------------------------------------------------
    video_queue_size: int = Field(16, ge=1, description="Decoded frames waiting for the video worker (newest kept)")
    encoder_preset: str = Field("superfast", description="libx264 preset")
    encoder_tune: str = Field("zerolatency", description="libx264 tune")
    encoder_crf: int = Field(23, ge=0, le=51, description="libx264 constant rate factor")
    gop_seconds: float = Field(2.0, gt=0, le=10, description="Keyframe interval = output segment length")
    input_timeout: float = Field(60.0, gt=0, description="Seconds without input before a stream is stopped")
    output_stall_timeout: float = Field(5.0, gt=0, description="Output stalled this long while input flows → ERROR")
    min_input_fps: float = Field(15.0, ge=0, description="Input fps below this → DEGRADED_INPUT")
    debug_frame_delay_ms: float = Field(0.0, ge=0, description="Artificial per-frame delay (benchmarks only)")
