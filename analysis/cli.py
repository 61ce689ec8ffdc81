"""`streamlens analyze FILE_OR_URL (--prompt TEXT | --tags a,b,c) [--interval S] [--transcript out.vtt]
[--json out.json] [--server URL]`.

With `--server` the file (or URL) goes to that server as a job and its SSE events are followed;
without, the analysis runs in this process on the embedded models (a prompt needs
VISION_VLM_ENDPOINT). Progress is a bar on a terminal and plain lines otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import aiohttp

from analysis.subtitles import to_vtt
from httpapi.outbound import client_session


def add_analyze_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("analyze", help="answers, timed tags and transcripts for a video file or URL")
    parser.add_argument("source", metavar="FILE_OR_URL", help="a local video file or an http(s) URL")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--prompt", help="ask the VLM this about the video (TRU shape)")
    what.add_argument("--tags", help="comma-separated tags to find over time, e.g. face,text")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between sampled frames (tags)")
    parser.add_argument("--backend", choices=("embedded", "vlm"), default="embedded", help="tagging backend")
    parser.add_argument("--transcript", metavar="OUT.vtt", help="also transcribe the speech into this WebVTT file")
    parser.add_argument("--json", metavar="OUT.json", help="write the whole result here")
    parser.add_argument("--server", metavar="URL", help="run on this streamlens server instead of in-process")
    parser.add_argument("--token", default=os.environ.get("API_TOKEN"), help="bearer token for --server (API_TOKEN)")
    return parser


class Progress:
    """A bar on a TTY (redrawn in place), plain lines at most once a second otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._last = 0.0
        self._last_fraction = -1.0

    def update(self, progress: dict[str, Any]) -> None:
        fraction = float(progress.get("fraction") or 0.0)
        done, planned = progress.get("frames_done") or 0, progress.get("frames_planned")
        parts = [f"{done}/{planned} frames"] if planned else []
        eta = progress.get("eta_seconds")
        if eta is not None:
            parts.append(f"ETA {eta:.0f} s")
        tail = " ".join(filter(None, [", ".join(parts), f"({progress['phase']})" if progress.get("phase") else ""]))
        if self.tty:
            width = 30
            filled = int(width * fraction)
            self.out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}% {tail}\033[K")
            self.out.flush()
            return
        now = time.monotonic()
        if now - self._last >= 1.0 or fraction >= 1.0 and self._last_fraction < 1.0:
            self._last, self._last_fraction = now, fraction
            print(f"progress {fraction * 100:.0f}% {tail}", file=self.out, flush=True)

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def _is_url(source: str) -> bool:
    return urlsplit(source).scheme in ("http", "https")


def _request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(job kind, options) for the flags."""
    if args.prompt:
        return "inference", {"prompt": args.prompt}
    options: dict[str, Any] = {"frame_interval": args.interval, "backend": args.backend}
    if args.tags:
        options["tag_list"] = [t.strip() for t in args.tags.split(",") if t.strip()]
    if args.transcript:
        options["transcript"] = True
    if not args.tags and args.transcript:
        return "transcribe", {}
    return "analyze", options


# -- in-process --------------------------------------------------------------------------------------------


class _LocalContext:
    def __init__(self, path: str, progress: Progress, executor: ThreadPoolExecutor) -> None:
        self.id = "local"
        self.input_path = path
        self.threads = 1
        self._progress = progress
        self._executor = executor
        self._state: dict[str, Any] = {"fraction": 0.0, "frames_done": 0, "frames_planned": None, "phase": None}

    async def call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def progress(self, *, frames_done=None, frames_planned=None, phase=None, fraction=None) -> None:
        state = self._state
        for key, value in (("frames_done", frames_done), ("frames_planned", frames_planned), ("phase", phase)):
            if value is not None:
                state[key] = value
        if fraction is None and state["frames_planned"]:
            fraction = state["frames_done"] / state["frames_planned"]
        state["fraction"] = fraction or 0.0
        self._progress.update(state)


async def _run_local(
    args: argparse.Namespace, kind: str, options: dict[str, Any], progress: Progress
) -> dict[str, Any]:
    from analysis.engine import AnalysisServices, run_job
    from analysis.inputs import fetch_url, remove_quietly
    from analysis.settings import AnalysisSettings
    from inference.asr.model import AsrSettings, shared_pool
    from inference.vision.stage import VisionBackends, VisionSettings

    settings = AnalysisSettings()
    vision = VisionBackends(VisionSettings())
    services = AnalysisServices(
        vision=vision,
        max_duration=settings.max_duration,
        max_samples=settings.max_samples,
        vlm_concurrency=settings.vlm_concurrency,
        transcript_window=settings.transcript_window,
        face_max_side=settings.face_max_side,
        input_formats=settings.input_formats,
        image_patch_size=settings.image_patch_size,
    )
    if kind == "inference" and vision.settings.vlm is None:
        raise SystemExit("--prompt needs a VLM: set VISION_VLM_ENDPOINT, or use --server")
    if args.transcript:
        services.asr = shared_pool(AsrSettings())
    download = None
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="analyze-cli")
    try:
        path = args.source
        if _is_url(path):
            from httpapi.outbound import default_policy

            handle, download = tempfile.mkstemp(suffix=".video")
            os.close(handle)
            progress.update({"fraction": 0.0, "phase": "downloading"})
            await fetch_url(
                path,
                Path(download),
                max_bytes=settings.max_bytes,
                timeout=settings.fetch_timeout,
                policy=default_policy(),
            )
            path = download
        elif not Path(path).is_file():
            raise SystemExit(f"no such file: {path}")
        return await run_job(_LocalContext(path, progress, executor), services, kind, options)
    finally:
        executor.shutdown(wait=False)
        remove_quietly(download)
        await vision.close()
        await services.close()


# -- against a server ---------------------------------------------------------------------------------------


async def _run_remote(
    args: argparse.Namespace, kind: str, options: dict[str, Any], progress: Progress
) -> dict[str, Any]:
    base = args.server.rstrip("/")
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    route = {"inference": "/v1/inference/url?async=true", "analyze": "/v1/analyze", "transcribe": "/v1/transcribe"}[
        kind
    ]
    async with client_session(
        None, headers=headers, timeout=aiohttp.ClientTimeout(total=None, sock_connect=30)
    ) as session:
        if _is_url(args.source):
            async with session.post(base + route, json={"video_url": args.source, **options}) as resp:
                accepted = await _json_or_exit(resp)
        else:
            if not Path(args.source).is_file():
                raise SystemExit(f"no such file: {args.source}")
            if kind == "inference":
                route = "/v1/inference/upload?async=true"
            form = aiohttp.FormData()
            for key, value in options.items():
                form.add_field(
                    key,
                    value
                    if isinstance(value, str)
                    else json.dumps(value)
                    if isinstance(value, list)
                    else str(value).lower()
                    if isinstance(value, bool)
                    else str(value),
                )
            with open(args.source, "rb") as handle:
                form.add_field("video", handle, filename=Path(args.source).name)
                async with session.post(base + route, data=form) as resp:
                    accepted = await _json_or_exit(resp)
        job = await _follow(session, base, accepted["job_id"], progress)
    if job["status"] != "completed":
        raise SystemExit(f"job {job['id']} {job['status']}: {job.get('error')}")
    return job["result"]


async def _json_or_exit(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        body = await resp.json(content_type=None)
    except ValueError:
        body = {"error": {"message": (await resp.text())[:200]}}
    if resp.status >= 400:
        raise SystemExit(f"server answered {resp.status}: {(body.get('error') or {}).get('message', body)}")
    return body


async def _follow(session: aiohttp.ClientSession, base: str, job_id: str, progress: Progress) -> dict[str, Any]:
    """Read the job's SSE stream until `end`; the `result` event carries the finished job."""
    job: dict[str, Any] | None = None
    async with session.get(f"{base}/v1/jobs/{job_id}/events") as resp:
        if resp.status != 200:
            await _json_or_exit(resp)
        event, data = "message", []
        async for raw in resp.content:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
                continue
            payload = json.loads("\n".join(data)) if data else {}
            if event == "progress":
                progress.update(payload)
            elif event == "result":
                job = payload
            elif event == "end":
                break
            event, data = "message", []
    if job is None:  # the stream ended early (server restart?): ask once
        async with session.get(f"{base}/v1/jobs/{job_id}") as resp:
            job = await _json_or_exit(resp)
    return job


# -- output -----------------------------------------------------------------------------------------------


def _print_result(kind: str, result: dict[str, Any], out: TextIO) -> None:
    if kind == "inference":
        print(result["text"], file=out)
        return
    for name, spans in (result.get("tags") or {}).items():
        times = ", ".join(f"{s['start']:.1f}-{s['end']:.1f}s" for s in spans)
        print(f"{name}: {times}", file=out)
    if "tags" in result and not result["tags"]:
        print("no tags found", file=out)
    transcript = result.get("transcript")
    if transcript:
        print(f"transcript ({transcript.get('language') or '?'}): {transcript['text']}", file=out)


def run_analyze(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    if not (args.prompt or args.tags or args.transcript):
        raise SystemExit("analyze needs --prompt TEXT, --tags a,b,c or --transcript OUT.vtt")
    if args.interval <= 0:
        raise SystemExit("--interval must be positive")
    kind, options = _request(args)
    progress = Progress(err)
    runner = _run_remote if args.server else _run_local
    from analysis.engine import JobFailed
    from analysis.inputs import InputError

    try:
        result = asyncio.run(runner(args, kind, options, progress))
    except (JobFailed, InputError) as exc:
        raise SystemExit(f"analysis failed: {exc.message}") from None
    finally:
        progress.close()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.transcript:
        transcript = result.get("transcript")
        if not transcript:
            raise SystemExit("the result has no transcript")
        Path(args.transcript).write_text(to_vtt(transcript["segments"]))
    _print_result(kind, result, out)
    return 0
