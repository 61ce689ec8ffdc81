"""Getting a job's video onto disk: a caller's `video_url`, or a multipart upload.

Both stream to a file in chunks with a byte cap (`ANALYSIS_MAX_BYTES`), so an input is never whole
in memory. A URL is fetched through the outbound URL policy (checked before connecting, and again
by the policy's connector on the resolved address at connect time) with redirects refused, under a
time cap (`ANALYSIS_FETCH_TIMEOUT`). An upload that stalls (`ANALYSIS_UPLOAD_IDLE_TIMEOUT`) or runs
too long (`ANALYSIS_UPLOAD_TIMEOUT`) is dropped with 408. A partial file is removed on every failure path.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from httpapi.outbound import OutboundPolicy, client_session

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 32


class InputError(Exception):
    """The input could not be obtained. `code` says why, in the project's error-code vocabulary
    ("payload_too_large", "insufficient_storage", ...); the edge maps it to an HTTP status
    (httpapi/errors.py)."""

    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def remove_quietly(path: str | os.PathLike | None) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove %s: %s", path, exc)


# a full disk, a full quota, the process's file-size limit: no room, not a fault of the server's code
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _write_error(exc: OSError) -> InputError:
    if exc.errno in _NO_ROOM:
        return InputError(
            f"the server has no room to store the video ({exc.strerror}); try again later or with a smaller file",
            code="insufficient_storage",
        )
    return InputError(f"the video could not be stored: {exc.strerror or exc}", code="internal_error")


def _too_large(max_bytes: int) -> InputError:
    return InputError(
        f"the video is larger than the server's limit of {max_bytes} bytes "
        "(ANALYSIS_MAX_BYTES, within what ANALYSIS_DISK_BUDGET has left)",
        code="payload_too_large",
    )


async def fetch_url(url: str, dest: Path, *, max_bytes: int, timeout: float, policy: Any = None) -> int:
    """Download `url` to `dest`; returns the byte count. Raises InputError (the file is removed)."""
    if policy is not None:
        try:
            await policy.check_url(url, what="video_url")
        except Exception as exc:
            if type(exc).__name__ == "OutboundDenied":
                raise InputError(f"video_url refused by the outbound policy: {exc}", code="forbidden") from None
            raise
    written = 0
    try:
        # the outbound policy's session refuses denied addresses at connect time too
        async with client_session(
            policy if isinstance(policy, OutboundPolicy) else None,
            timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 15)),
        ) as session:
            extra = {"ssl": policy.ssl_for(url)} if hasattr(policy, "ssl_for") else {}
            async with session.get(url, allow_redirects=False, **extra) as response:
                if 300 <= response.status < 400:
                    location = response.headers.get("Location", "")
                    raise InputError(
                        f"video_url answered HTTP {response.status} (redirect to {location[:200]!r}); "
                        "redirects are not followed: give the final URL",
                        code="bad_request",
                    )
                if response.status >= 400:
                    raise InputError(
                        f"video_url answered HTTP {response.status} {response.reason or ''}".strip(), code="bad_request"
                    )
                if response.content_length is not None and response.content_length > max_bytes:
                    raise _too_large(max_bytes)
                try:
                    with open(dest, "wb") as out:
                        async for chunk in response.content.iter_chunked(CHUNK):
                            written += len(chunk)
                            if written > max_bytes:
                                raise _too_large(max_bytes)
                            await asyncio.to_thread(out.write, chunk)
                except OSError as exc:
                    raise _write_error(exc) from None
    except InputError:
        remove_quietly(dest)
        raise
    except TimeoutError:
        remove_quietly(dest)
        raise InputError(
            f"downloading video_url took longer than {timeout:g} s (ANALYSIS_FETCH_TIMEOUT)", code="timeout"
        ) from None
    except aiohttp.ClientError as exc:
        remove_quietly(dest)
        if "outbound policy" in str(exc):  # the policy connector refused the resolved address
            raise InputError(f"video_url refused by the outbound policy: {exc}", code="forbidden") from None
        raise InputError(f"video_url could not be fetched: {exc}", code="bad_request") from None
    except BaseException:
        remove_quietly(dest)
        raise
    return written


class _Deadline:
    """Reads of one upload: each may wait at most `idle` seconds for data, all of them together end
    by `total` seconds from the start (a slow drip does not hold the disk budget forever)."""

    def __init__(self, idle: float, total: float) -> None:
        self.idle = idle
        self.total = total
        self._loop = asyncio.get_running_loop()
        self._end = self._loop.time() + total

    async def read(self, awaitable: Any) -> Any:
        remaining = self._end - self._loop.time()
        limit = min(self.idle, remaining)
        try:
            if limit <= 0:
                raise TimeoutError
            async with asyncio.timeout(limit):
                return await awaitable
        except ConnectionError as exc:  # the client went away mid-body: nobody is left to answer
            raise InputError(f"the upload was interrupted: {exc}", code="bad_request") from None
        except TimeoutError:
            if hasattr(awaitable, "close"):
                awaitable.close()  # a coroutine never started
            if limit < self.idle:
                raise InputError(
                    f"the upload took longer than {self.total:g} s (ANALYSIS_UPLOAD_TIMEOUT)", code="request_timeout"
                ) from None
            raise InputError(
                f"the upload sent nothing for {self.idle:g} s (ANALYSIS_UPLOAD_IDLE_TIMEOUT)", code="request_timeout"
            ) from None


async def save_upload(
    request: web.Request,
    dest: Path,
    *,
    max_bytes: int,
    file_field: str = "video",
    idle_timeout: float = 60.0,
    total_timeout: float = 3600.0,
) -> tuple[str | None, dict[str, str]]:
    """Stream a multipart body: the `file_field` part to `dest`, other parts as short text fields.
    Returns (file name, fields). Raises InputError (413 over the cap, 408 when the client stalls for
    `idle_timeout` or the whole body takes over `total_timeout`); the file is removed on every failure."""
    if not request.content_type.startswith("multipart/"):
        raise InputError("expected a multipart/form-data body", code="unsupported_media_type")
    fields: dict[str, str] = {}
    filename: str | None = None
    got_file = False
    clock = _Deadline(idle_timeout, total_timeout)
    try:
        reader = await clock.read(request.multipart())
        while True:
            part = await clock.read(reader.next())
            if part is None:
                break
            if len(fields) >= MAX_FIELDS:
                raise InputError(f"too many form fields (at most {MAX_FIELDS})", code="bad_request")
            if part.name == file_field:
                if got_file:
                    raise InputError(f"only one '{file_field}' part is allowed", code="bad_request")
                got_file = True
                filename = (part.filename or "")[:255] or None
                written = 0
                try:
                    with open(dest, "wb") as out:
                        while chunk := await clock.read(part.read_chunk(CHUNK)):
                            written += len(chunk)
                            if written > max_bytes:
                                raise _too_large(max_bytes)
                            await asyncio.to_thread(out.write, chunk)
                except OSError as exc:  # writing (reading errors are InputErrors by now)
                    raise _write_error(exc) from None
                if written == 0:
                    raise InputError(f"the '{file_field}' part is empty", code="bad_request")
            elif part.name:
                fields[part.name] = await _read_field(part, clock)
    except InputError:
        remove_quietly(dest)
        raise
    except (ValueError, AssertionError, LookupError, aiohttp.ClientError, HttpProcessingError) as exc:
        remove_quietly(dest)
        reason = getattr(exc, "message", None) or str(exc)
        raise InputError(
            f"unreadable multipart body: {' '.join(str(reason).split())[:200]}", code="bad_request"
        ) from None
    except BaseException:
        remove_quietly(dest)
        raise
    if not got_file:
        raise InputError(f"the form has no '{file_field}' file part", code="bad_request")
    return filename, fields


async def _read_field(part: Any, clock: _Deadline) -> str:
    """A text part, read in chunks so a long one is refused without holding it in memory."""
    data = bytearray()
    while chunk := await clock.read(part.read_chunk(MAX_FIELD_BYTES)):
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise InputError(f"form field {part.name!r} is too long", code="bad_request")
    text = bytes(part.decode(bytes(data)))  # a Content-Transfer-Encoding, as `read(decode=True)` did
    if len(text) > MAX_FIELD_BYTES:
        raise InputError(f"form field {part.name!r} is too long", code="bad_request")
    return text.decode("utf-8", errors="replace")
