"""The server side of RTMP's simple handshake (what FFmpeg, OBS and vMix accept as publishers).

C0 (version 3) + C1 (1536 bytes) in; S0 + S1 (time, zeros, random) + S2 (an echo of C1) out; then
C2 is read and ignored (clients that validate S2 only log a mismatch). S1 bytes 4..7 stay zero:
a non-zero version there would ask a client to check the Flash digest we do not compute.
"""

from __future__ import annotations

import asyncio
import os
import time

VERSION = 3
SIZE = 1536


class HandshakeError(ValueError):
    """The client did not speak plain RTMP (RTMPE, TLS, HTTP, garbage)."""


def server_hello(c1: bytes) -> bytes:
    """S0 + S1 + S2 for the client's C1."""
    s1 = (int(time.monotonic() * 1000) & 0xFFFFFFFF).to_bytes(4, "big") + b"\x00\x00\x00\x00" + os.urandom(SIZE - 8)
    return bytes([VERSION]) + s1 + c1


async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Run the handshake; raises HandshakeError, or asyncio.IncompleteReadError when the peer leaves.
    The caller bounds it in time."""
    c0 = await reader.readexactly(1)
    if c0[0] != VERSION:
        raise HandshakeError(f"unsupported RTMP version {c0[0]} (only plain RTMP, version 3)")
    c1 = await reader.readexactly(SIZE)
    writer.write(server_hello(c1))
    await writer.drain()
    await reader.readexactly(SIZE)  # C2
