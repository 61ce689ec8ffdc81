"""A recorded file's speech as text: the shared ASR model in batch mode, not the live policy.

The audio track is decoded and resampled to 16 kHz mono in windows of `window_seconds` (cut at the
quietest 100 ms near each window's end, so no word is split), and each window goes to the shared
`AsrModelPool` as one call with faster-whisper's VAD filter on: silence is dropped and speech is
decoded in chunks of up to 30 s. Memory holds one window. Before each call the job waits while the
pool is nearly full, so live captions keep their slots (live first).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Generator
from typing import Any

import av
import numpy as np

from analysis.sampler import INPUT_FORMATS, open_media

log = logging.getLogger(__name__)

RATE = 16000
_CUT_SEARCH = 5.0  # seconds at a window's end searched for the quietest point
_CUT_FRAME = 1600  # 100 ms


class NoAudio(ValueError):
    pass


def _quietest_cut(samples: np.ndarray, search: int) -> int:
    """Index in `samples` to cut at: the middle of the longest quiet stretch (100 ms frames no
    louder than twice the quietest) in the last `search` samples, so both windows keep some silence
    around their speech."""
    tail = samples[-search:]
    frames = len(tail) // _CUT_FRAME
    if frames < 2:
        return len(samples)
    energy = np.square(tail[: frames * _CUT_FRAME].reshape(frames, _CUT_FRAME)).mean(axis=1)
    quiet = energy <= 2.0 * float(energy.min()) + 1e-10
    best_start, best_length, start = 0, 0, None
    for index, is_quiet in enumerate([*quiet.tolist(), False]):
        if is_quiet and start is None:
            start = index
        elif not is_quiet and start is not None:
            if index - start > best_length:
                best_start, best_length = start, index - start
            start = None
    middle = best_start * _CUT_FRAME + best_length * _CUT_FRAME // 2
    return len(samples) - search + middle


def audio_windows(
    path: str, window_seconds: float, formats: str = INPUT_FORMATS
) -> Generator[tuple[float, np.ndarray, float], None, None]:
    """(offset seconds, 16 kHz mono float32 window, audio duration estimate) for the whole track.
    Blocking: iterate it on the job's thread. Raises NotAVideo (demuxers: `formats` only)."""
    container = open_media(path, formats)
    with container:
        if not container.streams.audio:
            raise NoAudio("the file has no audio track to transcribe")
        stream = container.streams.audio[0]
        time_base = stream.time_base
        total = float(stream.duration * time_base) if stream.duration and time_base else (container.duration or 0) / 1e6
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        window = int(window_seconds * RATE)
        search = int(min(_CUT_SEARCH, window_seconds / 2) * RATE)
        pieces: list[np.ndarray] = []
        held = 0
        offset = 0

        def take(cut_at_silence: bool) -> np.ndarray:
            nonlocal pieces, held
            data = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
            cut = _quietest_cut(data[: window + search], search) if cut_at_silence else len(data)
            chunk, rest = data[:cut], data[cut:]
            pieces, held = ([rest], len(rest)) if len(rest) else ([], 0)
            return chunk

        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.InvalidDataError:
                continue
            for frame in frames:
                for out in resampler.resample(frame):
                    samples = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                    pieces.append(samples)
                    held += len(samples)
                    if held >= window + search:
                        chunk = take(True)
                        yield offset / RATE, chunk, total
                        offset += len(chunk)
        for out in resampler.resample(None):
            pieces.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
            held += out.samples
        if held:
            chunk = take(False)
            yield offset / RATE, chunk, total
        elif offset == 0:
            raise NoAudio("the audio track has no decodable samples")


async def transcribe_windows(
    pool: Any, ctx: Any, language: str | None, window_seconds: float, poll: float = 0.1, formats: str = INPUT_FORMATS
) -> dict[str, Any]:
    """Run the shared pool over every window; returns {"language", "segments", "text", "audio_seconds"}."""
    windows = audio_windows(ctx.input_path, window_seconds, formats)
    segments: list[dict[str, Any]] = []
    detected = None
    done_seconds = 0.0
    try:
        while True:
            item = await ctx.call(next, windows, None)
            if item is None:
                break
            offset, audio, total = item
            result = None
            while result is None:
                # live first: leave a slot of the shared model for the streams' captions
                reserve = 1 if pool.max_pending > 1 else 0
                if pool.pending + reserve < pool.max_pending:
                    options: dict[str, Any] = {
                        "vad_filter": True,
                        "word_timestamps": False,
                        "condition_on_previous_text": False,
                    }
                    if language:
                        options["language"] = language
                    result = await pool.transcribe(audio, **options)
                if result is None:
                    await asyncio.sleep(poll)
            detected = detected or result.language
            for segment in result.segments:
                text = segment.text.strip()
                if text:
                    segments.append(
                        {
                            "start": round(offset + segment.start, 3),
                            "end": round(offset + segment.end, 3),
                            "text": text,
                            "translations": {},
                        }
                    )
            done_seconds = offset + len(audio) / RATE
            ctx.progress(phase="transcript", fraction=min(1.0, done_seconds / total) if total else None)
    finally:
        await ctx.call(windows.close)
    return {
        "language": detected or language or "",
        "segments": segments,
        "text": " ".join(s["text"] for s in segments),
        "audio_seconds": round(done_seconds, 3),
    }


async def translate_segments(transcript: dict[str, Any], targets: list[str], translation: Any) -> dict[str, str]:
    """Fill each segment's `translations`; returns {lang: error} for targets that failed."""
    errors: dict[str, str] = {}
    segments = transcript["segments"]
    if not targets or not segments:
        return errors
    if translation is None or not getattr(translation, "enabled", False):
        return {lang: "no translation backend configured" for lang in targets}
    source = transcript.get("language") or "en"
    batch = 32
    for target in targets:
        try:
            for start in range(0, len(segments), batch):
                chunk = segments[start : start + batch]
                results = await translation.translate_batch([s["text"] for s in chunk], source, target)
                if any(getattr(r, "untranslated", False) for r in results):
                    # every backend failed: the service hands back the source text, which is no translation
                    raise RuntimeError("every translation backend failed")
                for segment, result in zip(chunk, results):
                    segment["translations"][target] = result.text
        except Exception as exc:  # TranslationError: one language failing keeps the others
            errors[target] = getattr(exc, "message", None) or str(exc)
            for segment in segments:
                segment["translations"].pop(target, None)
    return errors
