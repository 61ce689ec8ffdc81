"""The one settings tree of the server (docs/reference/settings.md): built once, from the
environment and `.env`, overridden by `streamlens serve` flags (server/cli.py), and handed down.

The root `Settings` holds the server's own fields (each reads the environment variable of the same
name in upper case) and one typed section per feature (`settings.asr`, `.translate`, `.vision`,
`.gpu`, `.analysis`), each a pydantic-settings model reading its own documented variables
(ASR_*, TRANSLATE_*/VLLM_*/APERTIUM_*, VISION_*, GPU_*, ANALYSIS_*) when the root is built.
Tests give a section whole: `Settings(asr=AsrSettings(model="tiny"))`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from aiohttp import web
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from analysis.settings import AnalysisSettings
from httpapi.outbound import DEFAULT_OUTBOUND_DENY
from inference.asr.model import AsrSettings
from inference.gpu import GpuSettings
from inference.translate.service import TranslateSettings
from inference.vision.stage import VisionSettings
from media.outputs.hls import HlsSettings
from rtmp.settings import RtmpSettings

ENV_FILE = ".env"  # read by the root and by every section (variables in the environment win)

# section field → its model, in the order of docs/reference/settings.md
SECTIONS: dict[str, type[BaseSettings]] = {
    "translate": TranslateSettings,
    "asr": AsrSettings,
    "vision": VisionSettings,
    "gpu": GpuSettings,
    "analysis": AnalysisSettings,
    "rtmp": RtmpSettings,
    "hls": HlsSettings,
}


def secret_value(value: SecretStr | str | None) -> str | None:
    """The plain text of a secret setting; None when unset or empty."""
    if value is None:
        return None
    text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    return text or None


SectionT = TypeVar("SectionT", bound=BaseSettings)


def _section(model: type[SectionT]) -> Callable[[], SectionT]:
    # built when the root is, unless given: the section reads its own variables (and .env) then
    return lambda: model(_env_file=ENV_FILE)


class Settings(BaseSettings):
    """Every server field reads the environment variable of the same name in upper case."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", env_file=ENV_FILE)

    # -- feature sections (their own variables; `--set asr.model=small` on the command line) --------
    translate: TranslateSettings = Field(default_factory=_section(TranslateSettings))
    asr: AsrSettings = Field(default_factory=_section(AsrSettings))
    vision: VisionSettings = Field(default_factory=_section(VisionSettings))
    gpu: GpuSettings = Field(default_factory=_section(GpuSettings))
    analysis: AnalysisSettings = Field(default_factory=_section(AnalysisSettings))
    rtmp: RtmpSettings = Field(default_factory=_section(RtmpSettings))
    hls: HlsSettings = Field(default_factory=_section(HlsSettings))

    # -- server ------------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address to listen on (the Docker image sets 0.0.0.0)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    max_streams: int = Field(4, ge=1, description="Streams run at once; a start beyond it gets 503")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest JSON request body (bytes) → 413")
    max_image_bytes: int = Field(16 << 20, ge=1024, description="Largest image body of /vision/describe (bytes) → 413")
    malloc_mmap_threshold: int = Field(
        1 << 20,
        ge=0,
        le=32 << 20,
        description="Heap blocks at least this big (bytes) get their own mapping, returned to the OS when freed "
        "(glibc mallopt); 0 keeps glibc's dynamic threshold",
    )
    # -- access (README "Security"): a role whose own token is unset falls back to API_TOKEN, then
    # AUTH_TOKEN; non-public routes are open only when no token at all is set
    api_token: SecretStr | None = Field(
        None, description="Bearer token of the api role: stream lifecycle, translation, vision, analysis"
    )
    auth_token: SecretStr | None = Field(
        None, description="Bearer token of the livepeer role: BYOC and ai-runner routes"
    )
    trickle_token: SecretStr | None = Field(
        None, description="Bearer token of the trickle role: the built-in trickle server"
    )
    metrics_token: SecretStr | None = Field(None, description="Bearer token of the metrics role: /metrics")
    max_json_depth: int = Field(32, ge=2, le=256, description="Deepest nesting of a JSON body → 400")
    max_sdp_bytes: int = Field(64 << 10, ge=1024, description="Largest SDP offer or ICE fragment (bytes) → 413")
    body_read_timeout: float = Field(30.0, gt=0, description="Seconds a request body may take to arrive → 408")
    header_read_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a connection may take to send a complete request head, or stay idle "
        "between requests, before the server closes it",
    )
    sse_max_per_stream: int = Field(16, ge=1, description="Open SSE/event connections per stream; one more gets 503")
    pipeline_name: str = Field("streamlens", description="Pipeline name reported by /version")
    model_id: str = Field("streamlens", description="Model id reported by /version (ai-runner checks it on start)")
    static_dir: str = Field("", description="Folder of the demo pages (empty = the repository's static/)")
    cors_origins: str = Field(
        "", description="Comma-separated origins allowed to call from other sites (CORS); empty = same origin only"
    )
    allowed_hosts: str = Field(
        "",
        description="Comma-separated host names (no port) this server answers to besides localhost, "
        "127.0.0.0/8 and [::1]; '*' = any. With no token set only those are served (a DNS-rebinding "
        "page is refused); with tokens the Host is checked only when this is set",
    )

    # -- webrtc --------------------------------------------------------------------------------------
    ice_servers: str = Field(
        "",
        description='ICE servers for every WebRTC peer: JSON list of {"urls", "username", '
        '"credential"} or comma-separated stun:/turn: URLs; empty = host candidates only '
        "(aiortc's public STUN default is never used)",
    )
    webrtc_udp_port_min: int = Field(0, ge=0, le=65535, description="Lowest UDP port for ICE host candidates (0 = any)")
    webrtc_udp_port_max: int = Field(
        0, ge=0, le=65535, description="Highest UDP port for ICE host candidates (0 = any)"
    )
    webrtc_host_addresses: str = Field(
        "",
        description="Comma-separated local IPs ICE gathers on (empty = every "
        "interface but loopback; 127.0.0.1 for loopback-only use)",
    )
    whip_token: SecretStr | None = Field(None, description="Bearer token of the ingest role: WHIP publishers")
    whep_token: SecretStr | None = Field(
        None, description="Bearer token of the viewer role: WHEP, SSE, WebVTT of every stream"
    )
    whep_max_viewers: int = Field(8, ge=1, description="WHEP viewers per stream; one more gets 503")
    webrtc_video_codec: str = Field(
        "VP8",
        pattern="^(VP8|H264)$",
        description="Preferred video codec sent to peers (VP8: cheapest real-time encode; H264: libx264 zerolatency)",
    )
    webrtc_video_bitrate: int = Field(
        1_500_000, ge=100_000, le=20_000_000, description="Video bitrate sent to peers (bps)"
    )
    webrtc_audio_bitrate: int = Field(64_000, ge=6_000, le=510_000, description="Opus bitrate sent to peers (bps)")
    webrtc_h264_preset: str = Field("ultrafast", description="libx264 preset of the WebRTC output")
    webrtc_keyframe_interval: float = Field(2.0, gt=0, le=10, description="Seconds between keyframes sent to peers")
    webrtc_encoder_threads: int = Field(
        1, ge=1, le=16, description="Threads per WebRTC video encoder (1 keeps latency steady on busy machines)"
    )
    webrtc_video_queue_size: int = Field(3, ge=1, description="Decoded frames a WebRTC stream may hold (newest kept)")
    webrtc_connect_timeout: float = Field(20.0, gt=0, description="Seconds a new peer has to connect and send media")
    webrtc_media_timeout: float = Field(10.0, gt=0, description="A peer silent this long (no media, no RTCP) is closed")
    webrtc_status_interval: float = Field(1.0, gt=0, description="Seconds between data-channel status messages")

    # -- trickle server ----------------------------------------------------------------------------
    trickle_autocreate: bool = Field(True, description="Create trickle channels on first publish")
    trickle_idle_timeout: float = Field(300.0, gt=0, description="Seconds before an idle channel is swept")
    trickle_max_segment_bytes: int = Field(32 << 20, ge=1024, description="Largest trickle segment (bytes) → 413")
    trickle_max_channels: int = Field(256, ge=1, description="Channels the built-in server holds at once")
    trickle_max_total_bytes: int = Field(
        256 << 20, ge=1 << 20, description="Segment bytes held across all channels; a publish beyond it gets 503"
    )
    trickle_body_timeout: float = Field(
        30.0, gt=0, description="A segment POST whose body stalls this long (s) is closed"
    )
    trickle_max_subscribers_per_channel: int = Field(
        16, ge=1, description="Readers waiting on one channel; one more gets 503"
    )
    trickle_max_subscribers: int = Field(512, ge=1, description="Readers across all channels; one more gets 503")

    # -- outbound URL policy and TLS (URLs a caller gives: trickle channels, video URLs) -----------
    outbound_deny: str = Field(
        DEFAULT_OUTBOUND_DENY,
        description="Comma-separated CIDRs and host names the server never contacts for a caller",
    )
    outbound_allow: str = Field("", description="When set, the only CIDRs and host names contacted for a caller")
    tls_ca_file: str | None = Field(None, description="PEM file of extra CA certificates (a private CA)")
    tls_insecure_hosts: str = Field(
        "",
        description="Comma-separated hosts whose TLS certificates are NOT checked "
        "(self-signed orchestrators); ORCH_SECRET goes to no other unverified host",
    )

    # -- media pipeline ----------------------------------------------------------------------------
    video_queue_size: int = Field(
        30,
        ge=1,
        description="Decoded frames waiting for the video worker (newest kept); absorbs one 1 s burst at 30 fps",
    )
    encoder_preset: str = Field("superfast", description="libx264 preset")
    encoder_tune: str = Field("zerolatency", description="libx264 tune")
    encoder_crf: int = Field(23, ge=0, le=51, description="libx264 constant rate factor")
    gop_seconds: float = Field(2.0, gt=0, le=10, description="Keyframe interval = output segment length")
    input_timeout: float = Field(60.0, gt=0, description="Seconds without input before a stream is stopped")
    output_stall_timeout: float = Field(5.0, gt=0, description="Output stalled this long while input flows → ERROR")
    min_input_fps: float = Field(15.0, ge=0, description="Input fps below this → DEGRADED_INPUT")
    asr_preload: bool = Field(True, description="Load the speech model at start-up (/health says LOADING meanwhile)")
    debug_frame_delay_ms: float = Field(0.0, ge=0, description="Artificial per-frame delay (benchmarks only)")

    # -- livepeer ----------------------------------------------------------------------------------
    # BYOC capability registration (byoc/registration.py): on when ORCH_URL and ORCH_SECRET are set.
    orch_url: str | None = Field(None, description="Orchestrator URL to register with, e.g. https://orch:8935")
    orch_secret: SecretStr | None = Field(
        None, description="Orchestrator secret (sent raw as Authorization; never logged)"
    )
    capability_name: str = Field("streamlens", description="BYOC capability name registered with the orchestrator")
    capability_url: str | None = Field(
        None, description="URL the orchestrator calls this worker at (default http://<hostname>:<port>)"
    )
    capability_description: str = Field(
        "streamlens: live captions, translation and vision on video streams",
        description="Capability description sent at registration",
    )
    capability_capacity: int | None = Field(None, ge=1, description="Capacity registered (default MAX_STREAMS)")
    capability_price_per_unit: int = Field(0, ge=0, description="Price per compute unit (integer)")
    capability_price_scaling: int = Field(1, ge=1, description="Price scaling (integer)")
    capability_currency: str = Field(
        "wei", description="Price currency: wei or eth (others need an orchestrator price feed)"
    )
    capability_token: SecretStr | None = Field(
        None, description="Token the orchestrator sends as Bearer (default AUTH_TOKEN)"
    )
    register_retry_initial_delay: float = Field(1.0, gt=0, description="First registration retry delay (s), doubling")
    register_retry_max_delay: float = Field(
        30.0, gt=0, description="Longest delay between fast registration retries (s)"
    )
    register_retry_attempts: int = Field(6, ge=1, description="Fast registration attempts before slow retries")
    register_retry_slow_interval: float = Field(
        60.0, gt=0, description="Registration retry period after the fast attempts (s)"
    )
    register_timeout: float = Field(10.0, gt=0, description="Timeout of one (un)registration request (s)")
    register_refresh_interval: float = Field(
        0.0, ge=0, description="Re-register this often (s) to survive orchestrator restarts; 0 = off"
    )
    # Stream side channels (byoc/channels.py)
    events_interval: float = Field(
        10.0, gt=0, le=25, description="Seconds between status events (gateway gives up after 30 s)"
    )
    events_error_min_interval: float = Field(1.0, ge=0, description="At most one error event per this many seconds")
    data_flush_interval: float = Field(0.333, gt=0, description="Seconds between data-channel segments (JSON lines)")
    data_keepalive_interval: float = Field(
        25.0, gt=0, description="Data-channel keepalive line after this many idle seconds"
    )
    control_end_stops_stream: bool = Field(
        True, description="Stop a stream when its control channel ends (as ai-runner)"
    )
    capability_default_timeout: float = Field(
        60.0, gt=0, description="Batch capability timeout without a Livepeer header (s)"
    )

    # -- typed views used by the access policy (server/access.py) --------------------------------
    def tokens(self) -> dict[str, str | None]:
        """Each role's token setting (TOKEN_SETTINGS of server/access.py) as plain text; None when unset."""
        return {
            "api_token": secret_value(self.api_token),
            "auth_token": secret_value(self.auth_token),
            "whip_token": secret_value(self.whip_token),
            "whep_token": secret_value(self.whep_token),
            "trickle_token": secret_value(self.trickle_token),
            "metrics_token": secret_value(self.metrics_token),
        }

    def size_limit(self, name: str) -> int:
        """The byte limit a route declares by setting name (RouteSpec.max_body, e.g. "max_image_bytes")."""
        value = getattr(self, name) if name in type(self).model_fields else None
        if not isinstance(value, int):
            raise KeyError(f"{name!r} is not a size limit setting")
        return value


# the app's settings (server/app.py); here, not in server/keys.py, because modules that
# server/keys.py imports read it
SETTINGS_KEY = web.AppKey("settings", Settings)
