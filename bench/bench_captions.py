"""Live-caption benchmark: latency, accuracy and cost of StreamingTranscriber in real time.

    python bench/bench_captions.py                 # ~75 s of speech, streamed in real time
    python bench/bench_captions.py --minutes 3     # steady-cost run (cost of the first vs last third)
    python bench/bench_captions.py --beam 2 --model embedded:tiny.en

What it does: synthesises espeak-ng sentences one by one (so each sentence's start and end on the
stream timeline is known; word ends inside a sentence are shared out by letter count), joins them
with pauses, and feeds the track as 48 kHz stereo 20 ms PyAV frames from a thread at real-time
pace, exactly as a decoder thread would. The transcriber runs its live loop (computation-aware:
the clock is the wall clock, model time is included in every latency). Afterwards the same model
with the same beam transcribes the whole track offline for the WER baseline.

Metrics:
  final latency        emission wall time of a final caption - gold end of its last word
  word final latency   for every gold word: emission of the final that holds it - its gold end
  first-partial        emission of the first partial of a sentence - gold start of the sentence
  RTF                  (model + VAD seconds) / audio seconds
  CPU s per stream-s   process CPU time (all threads: feeding, resampling, VAD, model) / audio s
  steady cost          RTF and mean model-call time in the first vs the last third of the run
Never pass/fail: it prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: repo imports
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from inference.asr.model import AsrModelPool, AsrSettings  # noqa: E402
from inference.asr.streaming import StreamingTranscriber  # noqa: E402
from media.events import CaptionEvent  # noqa: E402
from tests.speech import PhraseTiming, audio_items, build_track, word_error_rate  # noqa: E402

SENTENCES = [
    "We will meet at the library after lunch.",
    "Please send me the report before the end of the week.",
    "The train to the city leaves from the north station.",
    "My brother likes to play the guitar in the evening.",
    "I would like a cup of coffee with milk and sugar please.",
    "She opened the window because the room was too warm.",
    "The children were playing in the garden when it started to rain.",
    "Could you tell me the way to the nearest bus stop?",
    "Our team finished the project two days early.",
    "He forgot his umbrella at the restaurant last night.",
    "The museum is closed on Mondays during the winter.",
    "Remember to water the plants while I am away.",
    "The new bridge will open to traffic next spring.",
    "My sister is learning to speak French and Spanish.",
    "The doctor told him to drink more water every day.",
    "We watched a beautiful sunset from the top of the hill.",
    "The price of fresh fruit has gone up this month.",
    "Please turn off the lights when you leave the office.",
    "The students listened carefully to the teacher.",
    "A small boat was sailing slowly across the lake.",
]
PAUSES = [0.8, 1.0, 1.2, 0.9, 1.1]  # varied pauses between sentences (all longer than 500 ms)


@dataclass
class Run:
    events: list[tuple[float, CaptionEvent]] = field(default_factory=list)  # (wall, event)
    t0: float = 0.0  # wall time at which media time 0 was live
    thirds: list[dict] = field(default_factory=list)  # stats snapshots at each third
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def cpu_time() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def feed_realtime(transcriber: StreamingTranscriber, track, t0: float, stop: threading.Event) -> None:
    """The decode thread: each 20 ms frame is handed over when its last sample is 'live'."""
    for item in audio_items(track.audio):
        if stop.is_set():
            return
        due = t0 + item.media_time + item.frame.samples / item.frame.sample_rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        transcriber.feed(item)


async def stream(track, pool: AsrModelPool, settings: AsrSettings) -> tuple[Run, StreamingTranscriber]:
    run = Run()
    transcriber = StreamingTranscriber(
        pool, settings, on_event=lambda e: run.events.append((time.perf_counter(), e)), name="bench"
    )
    transcriber.start()
    stop = threading.Event()
    run.t0 = time.perf_counter() + 0.2
    cpu0 = cpu_time()
    feeder = threading.Thread(target=feed_realtime, args=(transcriber, track, run.t0, stop), daemon=True)
    feeder.start()
    duration = track.duration
    try:
        for k in (1, 2, 3):  # a stats snapshot at the end of each third of the stream
            while time.perf_counter() < run.t0 + duration * k / 3 and feeder.is_alive():
                await asyncio.sleep(0.05)
            run.thirds.append({**transcriber.stats(), "at": time.perf_counter() - run.t0})
            progress = f"{run.thirds[-1]['at']:.0f}/{duration:.0f} s"
            print(f"  ... {progress}, rtf so far {run.thirds[-1]['rtf']:.2f}", file=sys.stderr, flush=True)
        await asyncio.to_thread(feeder.join, 30)
        for _ in range(100):  # let the last sentence's pause close it (bounded wait)
            if not transcriber.in_speech and transcriber.captions.current_id is None:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await transcriber.close(finalize=True)
    run.cpu_seconds = cpu_time() - cpu0
    run.wall_seconds = time.perf_counter() - run.t0
    return run, transcriber


def gold_words(phrases: list[PhraseTiming]) -> list[tuple[str, float, float]]:
    """(word, gold end, sentence start) for every word of the track."""
    out = []
    for p in phrases:
        out += [(w, end, p.start) for w, end in p.word_ends()]
    return out


def analyse(track, run: Run, offline_text: str) -> dict[str, float]:
    finals = [(wall, e) for wall, e in run.events if e.final and e.text]
    partials = [(wall, e) for wall, e in run.events if not e.final]
    golds = gold_words(track.phrases)
    gold_ends = [g[1] for g in golds]

    # final latency: emission - gold end of the final's last word (the gold word end closest to
    # the end Whisper gave the final; captions are on the media timeline, which starts at 0)
    final_latency = []
    for wall, e in finals:
        gold_end = min(gold_ends, key=lambda g: abs(g - e.end))
        final_latency.append(wall - (run.t0 + gold_end))

    # per-word: each gold word belongs to the first final whose span covers its end
    word_latency = []
    for _, end, _ in golds:
        for wall, e in finals:
            if e.start - 0.3 <= end <= e.end + 0.3:
                word_latency.append(wall - (run.t0 + end))
                break

    # first partial of each sentence: emission - gold sentence start
    first_partial = []
    for p in track.phrases:
        seen = [wall for wall, e in partials if e.start < p.end and e.end > p.start]
        if seen:
            first_partial.append(min(seen) - (run.t0 + p.start))

    streamed_text = " ".join(e.text for _, e in finals)
    first, second, last = run.thirds
    audio_per_third = [first["audio_seconds"], second["audio_seconds"] - first["audio_seconds"],
                       last["audio_seconds"] - second["audio_seconds"]]
    busy = [first["model_seconds"] + first["vad_seconds"]]
    busy.append(second["model_seconds"] + second["vad_seconds"] - busy[0])
    busy.append(last["model_seconds"] + last["vad_seconds"] - busy[0] - busy[1])
    calls = [first["model_calls"], second["model_calls"] - first["model_calls"],
             last["model_calls"] - second["model_calls"]]
    models = [first["model_seconds"], second["model_seconds"] - first["model_seconds"],
              last["model_seconds"] - second["model_seconds"]]
    return {
        "final_p50": percentile(final_latency, 0.5),
        "final_p95": percentile(final_latency, 0.95),
        "final_max": max(final_latency, default=float("nan")),
        "word_p50": percentile(word_latency, 0.5),
        "word_p95": percentile(word_latency, 0.95),
        "first_partial_p50": percentile(first_partial, 0.5),
        "first_partial_p95": percentile(first_partial, 0.95),
        "wer_stream": word_error_rate(track.text, streamed_text),
        "wer_offline": word_error_rate(track.text, offline_text),
        "finals": len(finals),
        "sentences": len(track.phrases),
        "partials": len(partials),
        "rtf_first_third": busy[0] / audio_per_third[0] if audio_per_third[0] else float("nan"),
        "rtf_last_third": busy[2] / audio_per_third[2] if audio_per_third[2] else float("nan"),
        "call_ms_first_third": 1000 * models[0] / calls[0] if calls[0] else float("nan"),
        "call_ms_last_third": 1000 * models[2] / calls[2] if calls[2] else float("nan"),
    }


def table(rows: list[tuple[str, str, str]]) -> str:
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(cell.ljust(width[j]) for j, cell in enumerate(r)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in width))
    return "\n".join(lines)


def build_bench_track(minutes: float):
    """At least 60 s of speech (or `minutes` of it), sentences cycling with varied pauses."""
    target = max(60.0, minutes * 60.0)
    phrases: list[str] = []
    pauses: list[float] = []
    seconds = 0.5
    while seconds < target:
        sentence = SENTENCES[len(phrases) % len(SENTENCES)]
        phrases.append(sentence)
        pause = PAUSES[len(phrases) % len(PAUSES)]
        pauses.append(pause)
        seconds += 2.7 + pause  # a sentence is ~2.7 s at 160 words per minute
    return build_track(phrases, pause_seconds=pauses[:-1], lead_seconds=0.5, tail_seconds=1.5)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=0.0, help="length of speech (default: ~1.2 minutes)")
    parser.add_argument("--model", default="embedded:tiny.en")
    parser.add_argument("--beam", type=int, default=None, help="beam size (default: AsrSettings default)")
    parser.add_argument("--min-chunk", type=float, default=None)
    parser.add_argument("--no-offline", action="store_true", help="skip the offline WER baseline")
    parser.add_argument("--show-errors", action="store_true", help="print the sentences whose final differs")
    args = parser.parse_args()

    overrides = {"model": args.model}
    if args.beam is not None:
        overrides["beam_size"] = args.beam
    if args.min_chunk is not None:
        overrides["min_chunk_seconds"] = args.min_chunk
    settings = AsrSettings(**overrides)
    if args.minutes == 0:
        track = build_track(SENTENCES, pause_seconds=[PAUSES[i % len(PAUSES)] for i in range(len(SENTENCES) - 1)])
    else:
        track = build_bench_track(args.minutes)
    pool = AsrModelPool(settings)
    began = time.perf_counter()
    pool.load()
    load_seconds = time.perf_counter() - began
    print(
        f"model {settings.model} ({pool.model_path}) device={pool.device} compute={pool.compute_type} "
        f"beam={settings.beam_size} threads={settings.resolved_cpu_threads()} loaded in {load_seconds:.2f}s; "
        f"track {track.duration:.1f}s, {len(track.phrases)} sentences, "
        f"cores={os.cpu_count()} load-avg={os.getloadavg()[0]:.2f}",
        flush=True,
    )
    run, transcriber = await stream(track, pool, settings)
    offline = ""
    if not args.no_offline:
        segments, _ = pool.model.transcribe(track.audio, language=settings.language, beam_size=settings.beam_size)
        offline = " ".join(s.text.strip() for s in segments)
    m = analyse(track, run, offline)
    stats = transcriber.stats()
    goal = lambda ok: "ok" if ok else "MISSED"  # noqa: E731
    rows = [
        ("metric", "value", "goal"),
        ("final-caption latency p50", f"{m['final_p50']:.2f} s", f"<= 1.5 s {goal(m['final_p50'] <= 1.5)}"),
        ("final-caption latency p95", f"{m['final_p95']:.2f} s", f"<= 2.5 s {goal(m['final_p95'] <= 2.5)}"),
        ("final-caption latency max", f"{m['final_max']:.2f} s", ""),
        ("per-word final latency p50 / p95", f"{m['word_p50']:.2f} / {m['word_p95']:.2f} s", ""),
        ("first-partial latency p50 / p95", f"{m['first_partial_p50']:.2f} / {m['first_partial_p95']:.2f} s", "from sentence start"),
        ("WER streaming (finals)", f"{m['wer_stream']:.3f}", ""),
        ("WER offline (same model, beam)", f"{m['wer_offline']:.3f}" if offline else "skipped", ""),
        ("WER streaming - offline", f"{m['wer_stream'] - m['wer_offline']:+.3f}" if offline else "-",
         f"<= 0.05 {goal(m['wer_stream'] - m['wer_offline'] <= 0.05)}" if offline else ""),
        ("finals / sentences", f"{m['finals']} / {m['sentences']}", ""),
        ("partials; flicker chars/partial", f"{m['partials']}; {stats['retracted_chars'] / max(1, m['partials']):.1f}", ""),
        ("real-time factor (model+VAD / audio)", f"{stats['rtf']:.3f}", "< 1"),
        ("CPU seconds per stream-second", f"{run.cpu_seconds / stats['audio_seconds']:.3f}", "process, all threads"),
        ("model calls; mean call", f"{stats['model_calls']}; {1000 * stats['model_seconds'] / max(1, stats['model_calls']):.0f} ms", ""),
        ("RTF first / last third", f"{m['rtf_first_third']:.3f} / {m['rtf_last_third']:.3f}", "steady: about equal"),
        ("call ms first / last third", f"{m['call_ms_first_third']:.0f} / {m['call_ms_last_third']:.0f}", ""),
        ("max lag; max buffer", f"{stats['max_lag_seconds']:.2f} s; {max(t['buffer_seconds'] for t in run.thirds):.1f} s", ""),
        ("skipped ticks; dropped audio", f"{stats['skipped_ticks']}; {stats['dropped_audio_seconds']:.1f} s", ""),
    ]
    print(table(rows))
    if args.show_errors:
        finals = [e for _, e in run.events if e.final and e.text]
        for wall, e in run.events:
            if e.final and e.text:
                print(f"  final {e.id}: {e.start:6.2f}-{e.end:6.2f}s emitted at {wall - run.t0:6.2f}s  {e.text}")
        for p in track.phrases:
            heard = " ".join(e.text for e in finals if e.end > p.start and e.start < p.end)
            if word_error_rate(p.text, heard) > 0:
                print(f"  {p.start:6.1f}s  said: {p.text}\n           heard: {heard}")
        print(f"  offline: {offline}")


if __name__ == "__main__":
    asyncio.run(main())
