"""Recorded video over HTTP: prompt answers (TRU shape), timed tags, transcripts, and their jobs.

`server.features.install_analysis` builds the job runner from `settings.analysis`, starts and stops
it with the app, adds an "analysis" section to /health, mounts the routes below (`add_analysis_routes`)
and registers the BYOC batch capabilities `analyze` and `video-inference` (handlers below). Every route
is `api` but `/v1/health` (public). Errors are the one JSON shape.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from analysis.inputs import InputError, remove_quietly, save_upload
from analysis.models import (
    AnalyzeOptions,
    AnalyzeRequest,
    GenerationParams,
    HealthBasic,
    HealthDetailed,
    InferenceAnswer,
    InferenceOptions,
    InferenceUrlRequest,
    JobAccepted,
    JobList,
    JobView,
    TranscribeOptions,
    TranscribeRequest,
    VideoParams,
)
from analysis.runner import JobConflict, JobNotFound, JobRunner, QueueFull, RequestTooLarge
from analysis.subtitles import to_srt, to_vtt
from byoc.capabilities import CapabilityContext, CapabilityError, url_fetch_error
from httpapi.errors import ApiError, status_of, validation_message
from httpapi.json_body import JSONBodyError, loads_limited
from httpapi.routes import JSON, Role, RouteTable
from httpapi.sse import DISCONNECT_CHECK_SECONDS, SseWriter
from server import __version__
from server.errors import read_json
from server.keys import HEALTH_DETAILS_KEY, RUNNER_KEY

log = logging.getLogger(__name__)

MULTIPART = "multipart/form-data"
_SUMMARY_CHARS = 200  # in a job list, longer request strings are cut to this
_SUMMARY_ITEMS = 16  # and longer request lists to this many items

table = RouteTable()


def _runner(request: web.Request) -> JobRunner:
    return request.app[RUNNER_KEY]


def _summary(value: Any) -> tuple[Any, bool]:
    """(value with long strings and lists shortened, whether anything was)."""
    if isinstance(value, str) and len(value) > _SUMMARY_CHARS:
        return value[:_SUMMARY_CHARS] + "…", True
    if isinstance(value, list):
        items = [_summary(item) for item in value[:_SUMMARY_ITEMS]]
        return [item for item, _ in items], len(value) > _SUMMARY_ITEMS or any(cut for _, cut in items)
    if isinstance(value, dict):
        fields = {key: _summary(item) for key, item in value.items()}
        return {key: item for key, (item, _) in fields.items()}, any(cut for _, cut in fields.values())
    return value, False


def _job_summary(job: dict[str, Any]) -> dict[str, Any]:
    """A job as listed: no result, and the request without its long values (a page of jobs stays small)."""
    view = _job_view(job)
    view["request"], view["request_truncated"] = _summary(view["request"])
    return view


def _job_view(job: dict[str, Any]) -> dict[str, Any]:
    view = {
        "id": job["id"],
        "kind": job["kind"],
        "status": job["status"],
        "created_at": job["created_at"],
        "started_at": job.get("started_at"),
        "finished_at": job.get("finished_at"),
        "progress": {
            "fraction": job.get("progress") or 0.0,
            "frames_done": job.get("frames_done") or 0,
            "frames_planned": job.get("frames_planned"),
            "eta_seconds": job.get("eta_seconds"),
            "phase": job.get("phase"),
        },
        "request": job.get("request") or {},
        "input_name": job.get("input_name"),
        "result": job.get("result"),
        "error": job.get("error"),
        "attempts": job.get("attempts") or 0,
    }
    return view


def _accepted(job: dict[str, Any]) -> web.Response:
    body = {
        "job_id": job["id"],
        "status": job["status"],
        "status_url": f"/v1/jobs/{job['id']}",
        "events_url": f"/v1/jobs/{job['id']}/events",
    }
    return web.json_response(body, status=202, headers={"Location": body["status_url"]})


def _validate(model: type[BaseModel], data: dict[str, Any]) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, validation_message(exc)) from None


def _require_vlm(runner: JobRunner) -> None:
    if not runner.services.vlm_configured():
        raise ApiError(
            503,
            "no VLM is configured: set VISION_VLM_ENDPOINT (or VISION_VLM_ENDPOINTS) to an OpenAI-compatible server",
        )


def _require_asr(runner: JobRunner) -> None:
    if runner.services.asr is None:
        raise ApiError(503, "no speech model is configured on this server")


def _capacity(runner: JobRunner) -> None:
    try:
        runner.check_capacity()
    except QueueFull as exc:
        raise ApiError(503, str(exc), headers={"Retry-After": "30"}) from None


async def _submit(runner: JobRunner, kind: str, request: dict[str, Any], **upload: Any) -> dict[str, Any]:
    try:
        return await runner.submit(kind, request, **upload)
    except QueueFull as exc:
        raise ApiError(503, str(exc), headers={"Retry-After": "30"}) from None
    except RequestTooLarge as exc:
        raise ApiError(413, str(exc)) from None


async def _upload(request: web.Request, runner: JobRunner) -> tuple[str, Any, str | None, dict[str, str]]:
    """Stream the multipart body's `video` to disk. Returns (job id, path, file name, fields)."""
    _capacity(runner)  # refuse before reading a byte of a large body
    job_id = runner.new_id()
    path = runner.upload_path(job_id)
    settings = runner.settings
    try:
        # the budget is given back on every way out: done, refused, timed out, client gone, cancelled
        with runner.transfer_budget() as cap:
            filename, fields = await save_upload(
                request,
                path,
                max_bytes=cap,
                idle_timeout=settings.upload_idle_timeout,
                total_timeout=settings.upload_timeout,
            )
    except InputError as exc:
        log.info("upload refused: %s", exc.message)
        raise ApiError(status_of(exc), exc.message, code=exc.code) from None
    return job_id, path, filename, fields


def _failed_status(runner: JobRunner, job_id: str) -> int:
    """The status a synchronous caller of a failed job gets: the error table's for why it failed."""
    failure = runner.failure(job_id)
    return status_of(failure) if failure is not None else 422


def _form_options(fields: dict[str, str]) -> dict[str, Any]:
    """Multipart text fields → option values (lists may come as JSON or comma-separated)."""
    data: dict[str, Any] = {}
    for key, value in fields.items():
        text = value.strip()
        if text.startswith("["):
            try:
                data[key] = loads_limited(text)
                continue
            except JSONBodyError as exc:
                raise ApiError(400, f"form field {key!r} must be JSON: {exc}") from None
        data[key] = text
    return data


async def _wait_answer(runner: JobRunner, job: dict[str, Any], request: web.Request) -> web.Response:
    if request.query.get("async", "").lower() in ("1", "true", "yes"):
        return _accepted(job)
    job = await runner.wait(job["id"], runner.settings.wait_timeout)
    if job["status"] == "completed":
        return web.json_response({"job_id": job["id"], **job["result"]})
    if job["status"] in ("queued", "running"):
        return _accepted(job)
    if job["status"] == "failed":
        raise ApiError(_failed_status(runner, job["id"]), f"job {job['id']} failed: {job['error']}")
    raise ApiError(409, f"job {job['id']} was {job['status']}")


# -- prompt answers (TRU) ------------------------------------------------------------------------------


@table.post(
    "/v1/inference/url",
    role=Role.API,
    body=InferenceUrlRequest,
    response=InferenceAnswer,
    tag="analysis",
    errors=(400, 413, 415, 422, 502, 503),
    summary="Video URL + prompt → the VLM's answer (?async=true → 202 job)",
)
async def inference_url(request: web.Request) -> web.Response:
    runner = _runner(request)
    body = _validate(InferenceUrlRequest, await read_json(request))
    _require_vlm(runner)
    job = await _submit(runner, "inference", body.model_dump())
    return await _wait_answer(runner, job, request)


@table.post(
    "/v1/inference/upload",
    role=Role.API,
    stream_body=True,
    content_types=(MULTIPART,),
    tag="analysis",
    response=InferenceAnswer,
    errors=(400, 408, 413, 415, 422, 502, 503, 507),
    summary="Multipart `video` + `prompt` (+ fps, max_frames, max_tokens, temperature) → the VLM's answer",
)
async def inference_upload(request: web.Request) -> web.Response:
    runner = _runner(request)
    job_id, path, filename, fields = await _upload(request, runner)
    try:
        video = {k: fields[k] for k in VideoParams.model_fields if k in fields}
        generation = {k: fields[k] for k in GenerationParams.model_fields if k in fields}
        options = _validate(
            InferenceOptions,
            {"prompt": fields.get("prompt", ""), "video_params": video, "generation_params": generation},
        )
        _require_vlm(runner)  # after the body is known good: a bad request is a 400 either way
    except BaseException:
        remove_quietly(path)
        raise
    job = await _submit(runner, "inference", options.model_dump(), job_id=job_id, input_path=path, input_name=filename)
    return await _wait_answer(runner, job, request)


# -- tags and transcripts (jobs) ---------------------------------------------------------------------------


async def _json_or_upload(
    request: web.Request, runner: JobRunner, kind: str, url_model: type[BaseModel], options_model: type[BaseModel]
) -> web.Response:
    if request.content_type == MULTIPART:
        job_id, path, filename, fields = await _upload(request, runner)
        try:
            options = _validate(options_model, _form_options(fields))
            _check_backends(runner, options)
        except BaseException:
            remove_quietly(path)
            raise
        job = await _submit(runner, kind, options.model_dump(), job_id=job_id, input_path=path, input_name=filename)
    else:
        body = _validate(url_model, await read_json(request))
        _check_backends(runner, body)
        job = await _submit(runner, kind, body.model_dump())
    return _accepted(job)


def _check_backends(runner: JobRunner, options: BaseModel) -> None:
    if getattr(options, "backend", None) == "vlm":
        _require_vlm(runner)
    if getattr(options, "transcript", True):
        _require_asr(runner)


@table.post(
    "/v1/analyze",
    role=Role.API,
    stream_body=True,
    content_types=(JSON, MULTIPART),
    status=202,
    response=JobAccepted,
    errors=(400, 408, 413, 503, 507),
    tag="analysis",
    summary="Timed tags (and transcript) of a video: JSON with video_url, or multipart `video` + fields → 202 job",
)
async def analyze(request: web.Request) -> web.Response:
    return await _json_or_upload(request, _runner(request), "analyze", AnalyzeRequest, AnalyzeOptions)


@table.post(
    "/v1/transcribe",
    role=Role.API,
    stream_body=True,
    content_types=(JSON, MULTIPART),
    status=202,
    response=JobAccepted,
    errors=(400, 408, 413, 503, 507),
    tag="analysis",
    summary="Transcript (+ translate_to) of a video's speech: JSON with video_url, or multipart `video` → 202 job",
)
async def transcribe(request: web.Request) -> web.Response:
    return await _json_or_upload(request, _runner(request), "transcribe", TranscribeRequest, TranscribeOptions)


@table.get(
    "/v1/jobs",
    role=Role.API,
    response=JobList,
    tag="analysis",
    summary="Analysis jobs, newest first (?limit=20&offset=0&status=); no results, long request values cut",
)
async def list_jobs(request: web.Request) -> web.Response:
    try:
        limit = min(100, max(1, int(request.query.get("limit", "20"))))
        offset = max(0, int(request.query.get("offset", "0")))
    except ValueError:
        raise ApiError(400, "limit and offset must be integers") from None
    status = request.query.get("status") or None
    jobs, total = await _runner(request).list(limit, offset, status)
    return web.json_response(
        {"jobs": [_job_summary(j) for j in jobs], "total": total, "limit": limit, "offset": offset}
    )


async def _job_or_404(request: web.Request) -> dict[str, Any]:
    try:
        return await _runner(request).get(request.match_info["job_id"])
    except JobNotFound:
        raise ApiError(404, f"no job {request.match_info['job_id']!r}") from None


@table.get(
    "/v1/jobs/{job_id}",
    role=Role.API,
    response=JobView,
    errors=(404,),
    tag="analysis",
    summary="One job: status, progress, request and result",
)
async def get_job(request: web.Request) -> web.Response:
    return web.json_response(_job_view(await _job_or_404(request)))


@table.delete(
    "/v1/jobs/{job_id}",
    role=Role.API,
    errors=(404,),
    tag="analysis",
    summary="Cancel a queued or running job (within a second), or delete a finished one",
)
async def delete_job(request: web.Request) -> web.Response:
    try:
        outcome = await _runner(request).cancel_or_delete(request.match_info["job_id"])
    except JobNotFound:
        raise ApiError(404, f"no job {request.match_info['job_id']!r}") from None
    return web.json_response({"job_id": request.match_info["job_id"], "status": outcome})


@table.post(
    "/v1/jobs/{job_id}/retry",
    role=Role.API,
    content_types=None,
    response=JobAccepted,
    status=202,
    errors=(404, 409, 503),
    tag="analysis",
    summary="Run an interrupted, failed or cancelled job again",
)
async def retry_job(request: web.Request) -> web.Response:
    runner = _runner(request)
    try:
        job = await runner.retry(request.match_info["job_id"])
    except JobNotFound:
        raise ApiError(404, f"no job {request.match_info['job_id']!r}") from None
    except JobConflict as exc:
        raise ApiError(409, str(exc)) from None
    except QueueFull as exc:
        raise ApiError(503, str(exc)) from None
    return _accepted(job)


@table.get(
    "/v1/jobs/{job_id}/events",
    role=Role.API,
    response_type="text/event-stream",
    errors=(404, 503),
    tag="analysis",
    summary="SSE: `progress` events, then `result` (the job), then `end`",
)
async def job_events(request: web.Request) -> web.StreamResponse:
    runner = _runner(request)
    job = await _job_or_404(request)
    try:
        queue = runner.subscribe(job["id"])
    except QueueFull as exc:
        raise ApiError(503, str(exc)) from None
    sse = SseWriter(request, _cors(request))
    # from here on the place is given back however the stream ends: prepare() itself raises when the
    # client already went away
    try:
        await sse.prepare()
        if queue is None:  # finished (or not live in this process): the result at once
            await sse.send("result", _job_view(await runner.get(job["id"])))
            await sse.send("end", {})
            return sse.response
        while True:
            try:
                event, data = await asyncio.wait_for(queue.get(), DISCONNECT_CHECK_SECONDS)
            except TimeoutError:
                if not await sse.idle():
                    break  # the client went away: free its place now, not at the next event
                continue
            if event == "end":
                await sse.send("end", {})
                break
            await sse.send(event, _job_view(data) if event == "result" else data)
    except ConnectionResetError:  # the client went away mid-write (aiohttp's error is one too)
        log.debug("job %s: event stream closed by the client", job["id"])
    finally:
        if queue is not None:
            runner.unsubscribe(job["id"], queue)
    return sse.response


def _cors(request: web.Request) -> dict[str, str]:
    try:
        from server.access import cors_headers
    except ImportError:
        return {}
    return cors_headers(request)


async def _subtitles(request: web.Request, render, content_type: str) -> web.Response:
    job = await _job_or_404(request)
    transcript = (job.get("result") or {}).get("transcript")
    if job["status"] != "completed" or transcript is None:
        raise ApiError(404, f"job {job['id']} has no transcript ({job['status']})")
    lang = request.query.get("lang") or None
    if lang == transcript.get("language"):
        lang = None
    try:
        text = render(transcript["segments"], lang)
    except KeyError:
        raise ApiError(404, f"job {job['id']} has no {lang!r} translation") from None
    return web.Response(text=text, content_type=content_type, charset="utf-8")


@table.get(
    "/v1/jobs/{job_id}/transcript.vtt",
    role=Role.API,
    response_type="text/vtt",
    errors=(404,),
    tag="analysis",
    summary="The job's transcript as WebVTT (?lang= a translation)",
)
async def transcript_vtt(request: web.Request) -> web.Response:
    return await _subtitles(request, to_vtt, "text/vtt")


@table.get(
    "/v1/jobs/{job_id}/transcript.srt",
    role=Role.API,
    response_type="application/x-subrip",
    errors=(404,),
    tag="analysis",
    summary="The job's transcript as SRT (?lang= a translation)",
)
async def transcript_srt(request: web.Request) -> web.Response:
    return await _subtitles(request, to_srt, "application/x-subrip")


# -- health (TRU shape) ----------------------------------------------------------------------------------


def _status(app: web.Application) -> str:
    from server.routes_system import health_status

    return health_status(app)


@table.get("/v1/health", role=Role.PUBLIC, response=HealthBasic, tag="analysis", summary="Basic health (TRU shape)")
async def health_basic(request: web.Request) -> web.Response:
    return web.json_response({"status": _status(request.app), "version": __version__})


@table.get(
    "/v1/health/detailed",
    role=Role.API,
    response=HealthDetailed,
    tag="analysis",
    summary="Model backends, GPU and analysis queue",
)
async def health_detailed(request: web.Request) -> web.Response:
    app = request.app
    runner = app[RUNNER_KEY]
    services = runner.services
    models: dict[str, Any] = {"vision": services.vision.status()}
    if services.asr is not None:
        models["asr"] = services.asr.stats()
    if services.translation is not None:
        models["translation"] = {"backend": services.translation.backend, "model": services.translation.model_info}
    gpu = app[HEALTH_DETAILS_KEY].get("gpu")
    return web.json_response(
        {
            "status": _status(app),
            "version": __version__,
            "models": models,
            "gpu": gpu() if callable(gpu) else {"available": False},
            "jobs": runner.stats(),
        }
    )


# -- mounting (server/features.py installs the feature: its runner, lifecycle, /health) ----------------


def add_analysis_routes(app: web.Application, runner: JobRunner) -> None:
    """Mount the routes below on `app`, serving `runner` (kept under RUNNER_KEY)."""
    app[RUNNER_KEY] = runner
    table.mount(app)


async def analyze_capability(runner: JobRunner, body: dict, ctx: CapabilityContext) -> dict | web.Response:
    """The BYOC batch capability `analyze`."""
    return await _capability(runner, "analyze", AnalyzeRequest, body, ctx)


async def inference_capability(runner: JobRunner, body: dict, ctx: CapabilityContext) -> dict | web.Response:
    """The BYOC batch capability `video-inference`."""
    if not runner.services.vlm_configured():
        raise CapabilityError(503, "no VLM is configured: set VISION_VLM_ENDPOINT")
    return await _capability(runner, "inference", InferenceUrlRequest, body, ctx)


# analysis/inputs.py's errors for a video_url that was contacted but not fetched (refused, timed out,
# an HTTP error or redirect, a body over the cap); a policy refusal contacts nothing and stays as is
URL_FETCH_FAILURES = (
    "video_url answered",
    "video_url could not be fetched",
    "downloading video_url",
    "the video is larger than",
)


async def _capability(
    runner: JobRunner, kind: str, model: type[BaseModel], body: dict, ctx: CapabilityContext
) -> dict | web.Response:
    """Run as a job; answer the result if it finishes within the Livepeer timeout (less a margin
    for the reply), else the job id and status URL (202)."""
    options = model.model_validate(body)  # ValidationError → 400
    if getattr(options, "backend", None) == "vlm" and not runner.services.vlm_configured():
        raise CapabilityError(503, "no VLM is configured: set VISION_VLM_ENDPOINT")
    if getattr(options, "transcript", False) and runner.services.asr is None:
        raise CapabilityError(503, "no speech model is configured on this server")
    try:
        job = await runner.submit(kind, options.model_dump())
    except QueueFull as exc:
        raise CapabilityError(503, str(exc)) from None
    except RequestTooLarge as exc:
        raise CapabilityError(413, str(exc)) from None
    budget = max(0.0, (ctx.timeout or 0) - 1.0)
    job = await runner.wait(job["id"], budget) if budget > 0 else job
    if job["status"] == "completed":
        return {"job_id": job["id"], "status": "completed", **job["result"]}
    if job["status"] == "failed":
        if (job["error"] or "").startswith(URL_FETCH_FAILURES):  # how the URL's host answered: log only
            raise url_fetch_error(f"job {job['id']} failed: {job['error']}")
        raise CapabilityError(_failed_status(runner, job["id"]), f"job {job['id']} failed: {job['error']}")
    return web.json_response(
        {"job_id": job["id"], "status": job["status"], "status_url": f"/v1/jobs/{job['id']}"}, status=202
    )
