"""A minimal RTMP publisher over a real loopback socket, for the tests that need to send what
FFmpeg never would (bad versions, hostile chunk sizes, AMF bombs) or to read the server's replies."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from rtmp import amf0
from rtmp.chunks import COMMAND_AMF0, SET_CHUNK_SIZE, ChunkReader, ChunkWriter, Message, control


class RawRtmpClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.out = ChunkWriter()
        self.chunks = ChunkReader()
        self.received: list[Message] = []

    @classmethod
    async def connect(cls, port: int) -> RawRtmpClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def handshake(self, version: int = 3) -> None:
        self.writer.write(bytes([version]) + bytes(8) + os.urandom(1528))
        await self.writer.drain()
        s0s1s2 = await asyncio.wait_for(self.reader.readexactly(1 + 1536 * 2), 5)
        self.writer.write(s0s1s2[1:1537])  # C2 = S1
        await self.writer.drain()

    async def send(self, *messages: Message) -> None:
        self.writer.write(b"".join(self.out.encode(m) for m in messages))
        await self.writer.drain()

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, *values: Any, msid: int = 0) -> None:
        await self.send(Message(COMMAND_AMF0, amf0.encode_all(*values), 0, msid, 3))

    async def next_command(self, timeout: float = 5.0) -> list[Any]:
        """The next AMF0 command the server sends (control messages are read past)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            while self.received:
                message = self.received.pop(0)
                if message.msg_type == COMMAND_AMF0:
                    return amf0.decode_all(message.payload)
            data = await asyncio.wait_for(self.reader.read(65536), max(0.01, deadline - loop.time()))
            if not data:
                raise ConnectionError("server closed the connection")
            self.received.extend(self.chunks.feed(data))

    async def publish(self, key: str, app: str = "live") -> str:
        """connect → createStream → publish; the onStatus code the server answers the publish with."""
        await self.command("connect", 1, {"app": app, "type": "nonprivate", "tcUrl": f"rtmp://127.0.0.1/{app}"})
        reply = await self.next_command()
        if reply[0] != "_result":
            return str(reply[3].get("code")) if len(reply) > 3 and isinstance(reply[3], dict) else str(reply[0])
        await self.send(control(SET_CHUNK_SIZE, 4096))
        self.out.chunk_size = 4096
        await self.command("createStream", 2, None)
        await self.next_command()
        await self.command("publish", 3, None, key, "live", msid=1)
        status = await self.next_command()
        return str(status[3]["code"])

    async def closed_by_server(self, timeout: float = 5.0) -> bool:
        """True once the server closes the connection (anything it still sends is read past)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while loop.time() < deadline:
                data = await asyncio.wait_for(self.reader.read(65536), deadline - loop.time())
                if not data:
                    return True
        except ConnectionError:  # a reset is a close too
            return True
        except TimeoutError:
            return False
        return False

    def close(self) -> None:
        self.writer.close()
