"""Synthetic speech for ASR tests and benchmarks: espeak-ng phrases with known timings.

Each phrase is synthesised on its own (espeak-ng → wav → sox → 16 kHz mono int16 → numpy), its
voiced part is located by energy, and phrases are joined with pauses of known length, so the
timeline of every phrase (and, proportionally, every word) is known exactly. Real programs only:
espeak-ng and sox must be installed (Debian packages of the same names).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from media.frames import AudioItem

SAMPLE_RATE = 16000

# Plain sentences without digits, so no number normalisation is needed to score them.
DEFAULT_PHRASES = [
    "The weather is nice today and the sun is shining.",
    "We will meet at the library after lunch.",
    "Please send me the report before the end of the week.",
    "The train to the city leaves from the north station.",
    "My brother likes to play the guitar in the evening.",
]


def to_48k_int16(audio16k: np.ndarray) -> np.ndarray:
    """16 kHz float speech as 48 kHz int16 (linear interpolation), as a 48 kHz publisher sends it."""
    x = np.arange(len(audio16k) * 3) / 3.0
    return (np.clip(np.interp(x, np.arange(len(audio16k)), audio16k), -1, 1) * 32767).astype(np.int16)


def speech_tools_available() -> bool:
    return shutil.which("espeak-ng") is not None and shutil.which("sox") is not None


@functools.lru_cache(maxsize=64)
def synthesize(text: str, voice: str = "en-us", words_per_minute: int = 160) -> np.ndarray:
    """One phrase as 16 kHz mono float32 in [-1, 1] (cached: espeak-ng is deterministic)."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "--stdout", text],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    raw = subprocess.run(
        [
            "sox",
            "-t",
            "wav",
            "-",
            "-t",
            "raw",
            "-r",
            str(SAMPLE_RATE),
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed-integer",
            "-",
        ],
        input=wav,
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    samples.setflags(write=False)
    return samples


def voiced_bounds(samples: np.ndarray, frame: int = 160, rel_threshold: float = 0.02) -> tuple[int, int]:
    """First and last sample of the voiced part (10 ms frames above 2 % of the peak RMS)."""
    n = len(samples) // frame
    if n == 0:
        return 0, len(samples)
    rms = np.sqrt(np.mean(samples[: n * frame].reshape(n, frame) ** 2, axis=1))
    loud = np.flatnonzero(rms > rel_threshold * max(float(rms.max()), 1e-9))
    if loud.size == 0:
        return 0, 0
    return int(loud[0] * frame), int(min(len(samples), (loud[-1] + 1) * frame))


@dataclass(frozen=True)
class PhraseTiming:
    text: str
    start: float  # seconds, first voiced sample on the track timeline
    end: float  # seconds, last voiced sample

    def word_ends(self) -> list[tuple[str, float]]:
        """Each word with its estimated end time: the voiced span is shared out in proportion to
        the words' letter counts (the last word ends exactly at the phrase end)."""
        words = self.text.split()
        weights = np.array([max(1, len(re.sub(r"\W", "", w))) for w in words], dtype=float)
        ends = self.start + np.cumsum(weights) / weights.sum() * (self.end - self.start)
        return list(zip(words, ends.tolist()))


@dataclass(frozen=True)
class SpeechTrack:
    audio: np.ndarray  # 16 kHz mono float32
    phrases: list[PhraseTiming]
    sample_rate: int = SAMPLE_RATE

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate

    @property
    def text(self) -> str:
        return " ".join(p.text for p in self.phrases)


def build_track(
    phrases: list[str],
    pause_seconds: float | list[float] = 1.0,
    lead_seconds: float = 0.5,
    tail_seconds: float = 1.5,
    noise_level: float = 0.0,
    seed: int = 7,
) -> SpeechTrack:
    """Phrases joined by `pause_seconds` of silence (measured between voiced parts; one value, or
    one per gap); optional white noise at `noise_level` RMS over the whole track."""
    pauses = pause_seconds if isinstance(pause_seconds, list) else [pause_seconds] * max(0, len(phrases) - 1)
    parts: list[np.ndarray] = [np.zeros(int(lead_seconds * SAMPLE_RATE), np.float32)]
    timings: list[PhraseTiming] = []
    cursor = len(parts[0])
    for i, text in enumerate(phrases):
        samples = synthesize(text)
        first, last = voiced_bounds(samples)
        voiced = samples[first:last]
        timings.append(PhraseTiming(text, cursor / SAMPLE_RATE, (cursor + len(voiced)) / SAMPLE_RATE))
        parts.append(voiced)
        cursor += len(voiced)
        gap = pauses[i] if i < len(phrases) - 1 else tail_seconds
        parts.append(np.zeros(int(gap * SAMPLE_RATE), np.float32))
        cursor += len(parts[-1])
    audio = np.concatenate(parts).astype(np.float32)
    if noise_level > 0:
        audio = audio + np.random.default_rng(seed).normal(0.0, noise_level, len(audio)).astype(np.float32)
    return SpeechTrack(np.clip(audio, -1.0, 1.0), timings)


def audio_items(
    audio16k: np.ndarray,
    rate: int = 48000,
    layout: str = "stereo",
    frame_ms: int = 20,
    start_time: float = 0.0,
) -> Iterator[AudioItem]:
    """The track as a WebRTC-like source would deliver it: packed s16 frames at `rate`/`layout`
    (resampled with PyAV's libswresample), each an AudioItem with its media time."""
    channels = 2 if layout == "stereo" else 1
    resampler = av.AudioResampler(format="s16", layout=layout, rate=rate)
    source = av.AudioFrame.from_ndarray(
        (np.clip(audio16k, -1, 1) * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono"
    )
    source.sample_rate = SAMPLE_RATE
    chunks = [f.to_ndarray().reshape(-1) for f in resampler.resample(source)]
    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    interleaved = np.concatenate(chunks)
    per_frame = rate * frame_ms // 1000
    total = len(interleaved) // channels
    for offset in range(0, total - per_frame + 1, per_frame):
        data = interleaved[offset * channels : (offset + per_frame) * channels].reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format="s16", layout=layout)
        frame.sample_rate = rate
        frame.pts = offset
        yield AudioItem(frame=frame, media_time=start_time + offset / rate)


# ---- scoring ---------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Lowercase, drop punctuation, collapse spaces (the normaliser used for every WER here)."""
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^\w\s']", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def word_error_rate(reference: str, hypothesis: str) -> float:
    import jiwer

    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref or not hyp:  # jiwer rejects empty strings; all-deleted is WER 1
        return 0.0 if ref == hyp else 1.0
    return float(jiwer.wer(ref, hyp))
