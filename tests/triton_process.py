"""Start and stop the real Triton server of tests/triton_dictionary_model.py (for the Triton
tests and bench/bench_translate.py). It runs under `.venv-triton` (scripts/install_triton.sh)."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"
MODEL_SCRIPT = ROOT / "tests" / "triton_dictionary_model.py"
START_TIMEOUT_S = 180.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_triton_server() -> tuple[subprocess.Popen, str]:
    """Start the model server; returns it and its HTTP URL once the model is loaded."""
    http_port, grpc_port = _free_port(), _free_port()
    proc = subprocess.Popen(
        [str(TRITON_PYTHON), str(MODEL_SCRIPT), "--http-port", str(http_port), "--grpc-port", str(grpc_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + START_TIMEOUT_S
    tail: list[bytes] = []
    while time.monotonic() < deadline:
        if not selector.select(timeout=1.0):
            if proc.poll() is not None:
                break
            continue
        line = proc.stdout.readline()
        if not line:
            break
        tail = (tail + [line])[-30:]
        if b"STREAMLENS-TRITON-READY" in line:  # the model script's marker, maybe inside a line of tritonserver's log
            # keep draining its log (last lines kept) so a chatty server never blocks on a full pipe
            log_tail: deque[bytes] = deque(tail, maxlen=200)
            threading.Thread(target=lambda: log_tail.extend(iter(proc.stdout.readline, b"")), daemon=True).start()  # noqa: B023 - returns right after
            return proc, f"http://127.0.0.1:{http_port}"
    stop_triton_server(proc)
    raise RuntimeError("tritonserver did not start:\n" + b"".join(tail).decode("utf-8", "replace"))


def stop_triton_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own process group: the wrapper, tritonserver, stubs
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
