"""The `rtmp` section of the settings tree: RTMP ingest, read from `RTMP_*` variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from rtmp.amf0 import AmfLimits
from rtmp.chunks import ChunkLimits
from rtmp.server import ServerLimits

OFF = 0
ANY_PORT = -1


class RtmpSettings(BaseSettings):
    """RTMP ingest settings (each description starts with its variable's name)."""

    model_config = SettingsConfigDict(env_prefix="RTMP_", case_sensitive=False, extra="ignore")

    port: int = Field(
        1935,
        ge=-1,
        le=65535,
        description="RTMP_PORT: TCP port of the RTMP listener, on the HTTP server's HOST; 0 = off, "
        "-1 = any free port (tests)",
    )
    public_host: str = Field(
        "",
        description="RTMP_PUBLIC_HOST: host name put in a stream's ingest_url; empty = the host the "
        "caller of POST /stream/start used",
    )
    reconnect_seconds: float = Field(
        30.0,
        gt=0,
        description="RTMP_RECONNECT_SECONDS: a stream whose publisher left is kept this long "
        "(DEGRADED_INPUT) for a reconnect with the same key, then stopped",
    )
    max_connections: int = Field(16, ge=1, description="RTMP_MAX_CONNECTIONS: RTMP connections open at once")
    handshake_timeout: float = Field(
        10.0, gt=0, description="RTMP_HANDSHAKE_TIMEOUT: seconds from connecting to publishing"
    )
    idle_timeout: float = Field(
        10.0, gt=0, description="RTMP_IDLE_TIMEOUT: a publisher that sends nothing this long is disconnected"
    )
    max_message_bytes: int = Field(
        8 << 20, ge=64 << 10, le=64 << 20, description="RTMP_MAX_MESSAGE_BYTES: largest RTMP message (a video frame)"
    )
    max_chunk_size: int = Field(
        65536, ge=128, le=1 << 24, description="RTMP_MAX_CHUNK_SIZE: largest Set Chunk Size a client may ask for"
    )
    queue_packets: int = Field(
        512, ge=16, description="RTMP_QUEUE_PACKETS: media packets waiting for the decoder (more are dropped)"
    )
    min_key_length: int = Field(
        16, ge=1, le=128, description="RTMP_MIN_KEY_LENGTH: shortest stream key a caller may choose"
    )

    @property
    def enabled(self) -> bool:
        return self.port != OFF

    def limits(self) -> ServerLimits:
        return ServerLimits(
            max_connections=self.max_connections,
            handshake_timeout=self.handshake_timeout,
            idle_timeout=self.idle_timeout,
            chunks=ChunkLimits(max_message=self.max_message_bytes, max_chunk_size=self.max_chunk_size),
            amf=AmfLimits(max_string=4096, max_items=256),
        )
