"""nginx with Debian's `libnginx-mod-rtmp` as the RTMP platform tests push to (YouTube's stand-in).

`RtmpPlatform` writes a config into a temp dir (the rtmp module loaded by path, `daemon off`, no
master process, an ephemeral loopback port, logs and pid in the temp dir), starts nginx, waits
until the port accepts, and kills it on `stop()`. `restart()` brings it back on the same port (a
platform that disappears and comes back). `record()` copies what a publisher sends to a file with
FFmpeg (`-c copy`), for ffprobe and FFmpeg's `subcc` to read back.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
START_TIMEOUT_S = 10.0

CONFIG = """
load_module {module};
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}
rtmp {{
    server {{
        listen 127.0.0.1:{port};
        chunk_size 4096;
        application live {{
            live on;
            record off;
        }}
    }}
}}
"""


def available() -> bool:
    return Path(NGINX).exists() and RTMP_MODULE.exists()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def port_open(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


class RtmpPlatform:
    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="nginx-rtmp-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        (self.tmp / "nginx.conf").write_text(CONFIG.format(module=RTMP_MODULE, tmp=self.tmp, port=self.port))

    def url(self, key: str) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{key}"

    async def start(self) -> RtmpPlatform:
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.tmp), "-c", str(self.tmp / "nginx.conf"), "-e", str(self.tmp / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while not await port_open(self.port):
            if self.process.poll() is not None or loop.time() > deadline:
                raise RuntimeError(f"nginx-rtmp did not start: {self.error_log()[-2000:]}")
            await asyncio.sleep(0.05)
        return self

    async def kill(self) -> None:
        """Gone at once, as a crashed platform: every connection is reset."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            await asyncio.to_thread(self.process.wait, 10)
        self.process = None

    async def restart(self) -> None:
        await self.kill()
        await self.start()

    async def stop(self) -> None:
        await self.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def error_log(self) -> str:
        path = self.tmp / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def record(self, key: str, seconds: float, name: str = "out.flv", wall_limit: float | None = None) -> Path:
        """Play `key` and copy `seconds` of it unchanged (`-c copy`) into a file; after
        `wall_limit` seconds (default `seconds` + 20) FFmpeg is told to stop and what it has is kept."""
        out = self.tmp / name
        process = await asyncio.create_subprocess_exec(
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-rw_timeout",
            "10000000",
            "-i",
            self.url(key),
            "-t",
            str(seconds),
            "-c",
            "copy",
            "-y",
            str(out),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None and process.stderr is not None
        try:
            await asyncio.wait_for(process.wait(), wall_limit or seconds + 20)
        except TimeoutError:
            process.stdin.write(b"q")  # FFmpeg's own "stop and finish the file"
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        stderr = await process.stderr.read()
        if not out.exists():
            raise RuntimeError(f"recording {key} failed: {stderr.decode(errors='replace')[-1000:]}")
        return out
