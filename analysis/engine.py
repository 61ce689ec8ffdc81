"""What one analysis job does, given its input file on disk: prompt answers, timed tags, transcripts.

The runner (`analysis.runner`) hands each job a `JobContext`: the input path, a progress callback,
and the job's own low-priority thread (`ctx.call(fn, ...)`) where all decoding and embedded-model
work runs. Model calls to shared services go through their own bounded pools: the VLM multiplexer's
HTTP client and breakers, the shared ASR pool, the app's TranslationService.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from analysis.models import AnalyzeOptions, InferenceOptions, TranscribeOptions
from analysis.sampler import (
    DEFAULT_IMAGE_PATCH_SIZE,
    INPUT_FORMATS,
    FrameSampler,
    NotAVideo,
    UnsupportedFormat,
    fit_within,
    interval_times,
    merge_factor,
    video_plan,
)
from analysis.spans import best_confidences, merge_spans
from analysis.transcript import NoAudio, transcribe_windows, translate_segments
from inference.openai_client import OpenAIError, Usage
from inference.resilience import CircuitOpenError
from inference.vision.base import BackendBusy, BackendUnavailable, VisionRequest
from inference.vision.embedded import EMBEDDED_TAGS, EmbeddedTagger, TextTag
from inference.vision.openai_vlm import encode_frame_jpeg, jpeg_data_uri

log = logging.getLogger(__name__)

DEFAULT_EMBEDDED_TAGS = ["face", "text"]
EMBEDDED_MAX_SIDE = 1280  # frames for the embedded taggers are scaled down to this longer side


class JobFailed(Exception):
    """A clear, user-facing reason the job could not finish. `code`: "unprocessable" the input,
    "bad_gateway" the model's answer, "unavailable" a backend; the edge maps it to an HTTP status
    (httpapi/errors.py)."""

    def __init__(self, message: str, code: str = "unprocessable") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class JobContext(Protocol):
    id: str
    input_path: str
    threads: int  # the job's own (low-priority) threads behind `call`

    async def call(self, fn, *args): ...

    def progress(
        self,
        *,
        frames_done: int | None = None,
        frames_planned: int | None = None,
        phase: str | None = None,
        fraction: float | None = None,
    ) -> None: ...


@dataclass
class AnalysisServices:
    vision: Any  # inference.vision.stage.VisionBackends
    asr: Any = None  # inference.asr.model.AsrModelPool
    translation: Any = None  # inference.translate.service.TranslationService
    max_duration: float = 6 * 3600.0
    max_samples: int = 20_000
    vlm_concurrency: int = 4
    transcript_window: float = 300.0
    face_max_side: int = 400
    input_formats: str = INPUT_FORMATS  # ANALYSIS_INPUT_FORMATS: the demuxers inputs are read with
    image_patch_size: int = DEFAULT_IMAGE_PATCH_SIZE  # IMAGE_PATCH_SIZE: prompt-answer frames, sides x2 it
    _tagger: Any = None

    def embedded_tagger(self) -> Any:
        """The analysis jobs' own embedded tagger (face detector + text reader), called on the jobs'
        low-priority threads; separate from live streams' so neither waits on the other's queue.
        Faces are looked for at `face_max_side` (ANALYSIS_FACE_MAX_SIDE, 400 px: 0.4x the work of
        the live 640; on bench/bench_analysis.py's 720p file 100 ms a frame against 152 ms at 480,
        and the astronaut still scores 0.69-0.74 where 480 gave 0.81-0.86)."""
        if self._tagger is None:
            self._tagger = EmbeddedTagger(detect_max_side=self.face_max_side)
        return self._tagger

    async def close(self) -> None:
        if self._tagger is not None:
            await self._tagger.close()
            self._tagger = None

    def vlm_configured(self) -> bool:
        loaded = self.vision.loaded("vlm") if hasattr(self.vision, "loaded") else None
        return loaded is not None or getattr(self.vision.settings, "vlm", None) is not None


async def _open(ctx: JobContext, services: AnalysisServices) -> FrameSampler:
    try:
        sampler = await ctx.call(FrameSampler, ctx.input_path, 2, services.input_formats)
    except UnsupportedFormat as exc:
        raise JobFailed(str(exc), code="unsupported_media_type") from None
    except NotAVideo as exc:
        raise JobFailed(f"not a video PyAV can decode: {exc}") from None
    if sampler.info.duration > services.max_duration:
        await ctx.call(sampler.close)
        raise JobFailed(
            f"the video lasts {sampler.info.duration:.0f} s; the limit is {services.max_duration:.0f} s "
            "(ANALYSIS_MAX_DURATION)"
        )
    return sampler


def _no_frames(sampler: FrameSampler) -> JobFailed:
    return JobFailed(
        f"no frame of the video could be decoded ({sampler.info.codec} in {sampler.info.container}; "
        "truncated or damaged file?)"
    )


# -- prompt answers (the TRU shape) ----------------------------------------------------------------


def _encode_frames(
    sampler: FrameSampler, times: list[float], width: int, height: int, quality: int
) -> list[tuple[float, int, int, str]]:
    out = []
    for frame in sampler.frames(times, width, height):
        jpeg, (w, h) = encode_frame_jpeg(frame.image, width * height, quality)
        out.append((frame.t, w, h, jpeg_data_uri(jpeg)))
    return out


async def run_inference(ctx: JobContext, services: AnalysisServices, options: InferenceOptions) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        mux = await services.vision.get("vlm")
    except BackendUnavailable as exc:
        raise JobFailed(str(exc), code="unavailable") from None
    sampler = await _open(ctx, services)
    try:
        p = options.video_params
        plan = video_plan(
            sampler.info,
            p.fps,
            p.max_frames,
            p.min_pixels,
            p.max_pixels,
            p.total_pixels,
            merge_factor(services.image_patch_size),
        )
        ctx.progress(frames_done=0, frames_planned=len(plan.times), phase="decoding")
        quality = getattr(mux.config, "jpeg_quality", 85)
        frames: list[tuple[float, int, int, str]] = []
        # in slices, so progress moves and a cancel lands between them
        for start in range(0, len(plan.times), 16):
            frames += await ctx.call(
                _encode_frames, sampler, plan.times[start : start + 16], plan.width, plan.height, quality
            )
            ctx.progress(frames_done=len(frames), fraction=0.8 * len(frames) / max(1, len(plan.times)))
        duration = sampler.info.duration
        if not frames:
            raise _no_frames(sampler)
    finally:
        await ctx.call(sampler.close)
    decoded = time.perf_counter()
    content: list[dict[str, Any]] = []
    for t, _w, _h, uri in frames:
        content.append({"type": "text", "text": f"Frame at {t:.2f} s:"})
        content.append({"type": "image_url", "image_url": {"url": uri}})
    content.append({"type": "text", "text": options.prompt})
    ctx.progress(phase="asking the VLM", fraction=0.85)
    text, model, usage = await _ask_vlm(
        mux, content, options.generation_params.max_tokens, options.generation_params.temperature
    )
    finished = time.perf_counter()
    return {
        "text": text,
        "model": model,
        "usage": usage,
        "frames": [{"t": t, "width": w, "height": h} for t, w, h, _ in frames],
        "duration": round(duration, 3),
        "timing": {
            "decode_seconds": round(decoded - started, 3),
            "vlm_seconds": round(finished - decoded, 3),
            "total_seconds": round(finished - started, 3),
        },
    }


async def _ask_vlm(
    mux: Any, content: list[dict[str, Any]], max_tokens: int, temperature: float
) -> tuple[str, str, Usage | None]:
    """One chat request through the multiplexer's endpoints (its order, breakers, retries, client)
    → (text, model, token usage as the server counted it, None when it sent none)."""
    errors: list[str] = []
    for endpoint in mux.plan():
        model = endpoint.config.model_id or mux.config.model_id
        payload = {
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        try:
            completion = await mux.complete(endpoint, payload)
        except (OpenAIError, CircuitOpenError) as exc:
            errors.append(f"{endpoint.name}: {exc}")
            continue
        if not completion.text.strip():
            raise JobFailed(f"the VLM ({endpoint.name}) answered with no text", code="bad_gateway")
        return completion.text.strip(), completion.model or model, completion.usage
    if not errors:
        raise JobFailed("every VLM endpoint's circuit breaker is open; try again later", code="unavailable")
    raise JobFailed("no VLM endpoint answered: " + "; ".join(errors), code="bad_gateway")


# -- timed tags (the VLM Engine shape) ---------------------------------------------------------------


def _tag_entry(tag: Any, with_confidence: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": tag.name}
    if with_confidence:
        entry["confidence"] = tag.confidence
    if tag.box is not None:
        entry["box"] = list(tag.box)
    if isinstance(tag, TextTag):
        entry["words"] = tag.words
    return entry


async def run_analyze(ctx: JobContext, services: AnalysisServices, options: AnalyzeOptions) -> dict[str, Any]:
    result: dict[str, Any] = {}
    tags_wanted = options.tag_list or (DEFAULT_EMBEDDED_TAGS if options.backend == "embedded" else [])
    if options.backend == "embedded":
        unknown = sorted({t.lower() for t in tags_wanted} - set(EMBEDDED_TAGS))
        if unknown:
            raise JobFailed(
                f"the embedded backend cannot tag {', '.join(unknown)}; it knows {', '.join(EMBEDDED_TAGS)}"
            )
    if tags_wanted or options.backend == "vlm":
        result.update(await _tag_video(ctx, services, options, tags_wanted))
    if options.transcript:
        result["transcript"] = await _transcript(ctx, services, options.language, options.translate_to)
    return result


async def _tag_video(
    ctx: JobContext, services: AnalysisServices, options: AnalyzeOptions, tags_wanted: list[str]
) -> dict[str, Any]:
    sampler = await _open(ctx, services)
    info = sampler.info
    times = interval_times(info.duration, options.frame_interval, services.max_samples)
    request = VisionRequest(
        mode="tags", tag_list=tuple(tags_wanted), threshold=options.threshold, source=f"analysis:{ctx.id}"
    )
    ctx.progress(frames_done=0, frames_planned=len(times), phase="tagging")
    samples: list[tuple[float, list[Any]]] = []
    model = ""
    failures: list[str] = []
    try:
        if options.backend == "embedded":
            tagger = await ctx.call(services.embedded_tagger)
            model = tagger.model + ("+rapidocr-pp-ocrv6" if "text" in {t.lower() for t in tags_wanted} else "")
            width, height = fit_within(info.width, info.height, EMBEDDED_MAX_SIDE)
            frames = sampler.frames(times, width, height)
            decode_lock = threading.Lock()  # one decoder: frames are taken one at a time

            def one_sample():
                with decode_lock:
                    frame = next(frames, None)
                if frame is None:
                    return None
                return frame.t, tagger.analyze_sync(frame.image, request).tags

            def close_frames():
                with decode_lock:
                    frames.close()

            # the models run on the job's threads in parallel (ANALYSIS_TAG_THREADS), decoding in turn
            parallel = max(1, getattr(ctx, "threads", 1))
            pending: set[asyncio.Future] = set()
            exhausted = False
            try:
                while not exhausted or pending:
                    while not exhausted and len(pending) < parallel:
                        pending.add(asyncio.ensure_future(ctx.call(one_sample)))
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for future in done:
                        item = future.result()
                        if item is None:
                            exhausted = True
                        else:
                            samples.append(item)
                    ctx.progress(frames_done=len(samples))
            finally:
                for future in pending:
                    future.cancel()
                await ctx.call(close_frames)
                tagger.forget(request.source)
            samples.sort(key=lambda item: item[0])
        else:
            samples, model, failures = await _tag_with_vlm(ctx, services, sampler, times, request)
    except BackendUnavailable as exc:
        raise JobFailed(str(exc)) from None
    finally:
        await ctx.call(sampler.close)
    if not samples and not failures:
        raise _no_frames(sampler)
    if failures and not samples:
        raise JobFailed(
            f"the VLM failed on every sampled frame ({len(failures)}); first error: {failures[0]}", code="bad_gateway"
        )
    per_sample = [(t, best_confidences((tag.name, tag.confidence) for tag in tags)) for t, tags in samples]
    spans = merge_spans(per_sample, options.frame_interval, info.duration, options.threshold)
    if not options.return_confidence:
        spans = {name: [{"start": s["start"], "end": s["end"]} for s in items] for name, items in spans.items()}
    out: dict[str, Any] = {
        "tags": spans,
        "duration": round(info.duration, 3),
        "frames_analysed": len(samples),
        "backend": options.backend,
        "model": model,
        "frame_interval": options.frame_interval,
        "threshold": options.threshold,
    }
    if options.return_timestamps:
        out["frames"] = [
            {"t": t, "tags": [_tag_entry(tag, options.return_confidence) for tag in tags]} for t, tags in samples
        ]
    if failures:
        out["failed_frames"] = len(failures)
        out["first_error"] = failures[0]
    return out


async def _tag_with_vlm(
    ctx: JobContext, services: AnalysisServices, sampler: FrameSampler, times: list[float], request: VisionRequest
) -> tuple[list[tuple[float, list[Any]]], str, list[str]]:
    """Per-sample VLM tagging, at most `vlm_concurrency` frames in flight, results in time order."""
    mux = await services.vision.get("vlm")
    frames = sampler.frames(times)
    results: dict[int, tuple[float, list[Any]]] = {}
    failures: list[str] = []
    in_flight: set[asyncio.Task] = set()
    model = getattr(mux, "model", "")

    async def ask(index: int, t: float, image) -> None:
        for attempt in range(50):  # BackendBusy: the multiplexer's own bound; wait a little
            try:
                result = await mux.analyze(image, request)
                break
            except BackendBusy:
                await asyncio.sleep(0.1 * (attempt + 1))
            except BackendUnavailable as exc:
                failures.append(str(exc))
                return
        else:
            failures.append("the VLM stayed busy")
            return
        if result.error:
            failures.append(result.error)
            return
        results[index] = (t, list(result.tags))
        ctx.progress(frames_done=len(results) + len(failures))

    try:
        index = 0
        while True:
            frame = await ctx.call(next, frames, None)
            if frame is None:
                break
            if len(in_flight) >= services.vlm_concurrency:
                _done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            in_flight.add(asyncio.create_task(ask(index, frame.t, frame.image)))
            index += 1
        if in_flight:
            await asyncio.gather(*in_flight)
    finally:
        for task in in_flight:
            task.cancel()
        await ctx.call(frames.close)
    return [results[i] for i in sorted(results)], model, failures


# -- transcripts ---------------------------------------------------------------------------------------


async def _transcript(
    ctx: JobContext, services: AnalysisServices, language: str | None, translate_to: list[str]
) -> dict[str, Any]:
    if services.asr is None:
        raise JobFailed("no speech model is configured on this server")
    try:
        transcript = await transcribe_windows(
            services.asr, ctx, language, services.transcript_window, formats=services.input_formats
        )
    except NoAudio as exc:
        raise JobFailed(str(exc)) from None
    except UnsupportedFormat as exc:
        raise JobFailed(str(exc), code="unsupported_media_type") from None
    except NotAVideo as exc:
        raise JobFailed(f"not a media file PyAV can decode: {exc}") from None
    if translate_to:
        ctx.progress(phase="translating")
        errors = await translate_segments(transcript, translate_to, services.translation)
        if errors:
            transcript["translation_errors"] = errors
    return transcript


async def run_transcribe(ctx: JobContext, services: AnalysisServices, options: TranscribeOptions) -> dict[str, Any]:
    return {"transcript": await _transcript(ctx, services, options.language, options.translate_to)}


async def run_job(ctx: JobContext, services: AnalysisServices, kind: str, request: dict[str, Any]) -> dict[str, Any]:
    """Dispatch on the job kind; the request dict is re-validated (it may come from the database)."""
    if kind == "inference":
        return await run_inference(ctx, services, InferenceOptions.model_validate(_options(request, InferenceOptions)))
    if kind == "analyze":
        return await run_analyze(ctx, services, AnalyzeOptions.model_validate(_options(request, AnalyzeOptions)))
    if kind == "transcribe":
        return await run_transcribe(
            ctx, services, TranscribeOptions.model_validate(_options(request, TranscribeOptions))
        )
    raise JobFailed(f"unknown job kind {kind!r}")


def _options(request: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    return {k: v for k, v in request.items() if k in model.model_fields}
