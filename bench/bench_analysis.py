"""Recorded-video analysis: speed (x real time) and peak memory of a tagging job on a long 1280x720
file, against a naive "decode every frame and keep them all" run in the same process; and a live
stream's frame rate while a job runs, against the same stream alone.

    .venv/bin/python bench/bench_analysis.py [--minutes 10] [--interval 2] [--tags face] [--gop 2]

The file is generated once with PyAV into bench/out/ (H.264 at a low bitrate, 25 fps, a keyframe
every `--gop` seconds, the astronaut on screen for one minute in the middle). The job is the real
`JobRunner` (SQLite, its own low-priority thread, the embedded tagger). The naive run stops when the
frames it holds reach `--naive-cap-mib` and its time and memory are extrapolated to the whole file
(it could not hold the whole file: 10 minutes of 720p RGB is ~41 GiB). The "live stream" is a
paced 30 fps 1280x720 decode + re-encode loop (PyAV, libx264 ultrafast) at normal priority.
Prints tables; never passes or fails. Goals: >= 30x real time, peak RSS < 400 MiB, live fps >= 0.95x.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import av  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from analysis.engine import AnalysisServices  # noqa: E402
from analysis.runner import JobRunner  # noqa: E402
from analysis.settings import AnalysisSettings  # noqa: E402
from inference.vision.stage import VisionBackends  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
WIDTH, HEIGHT, FPS = 1280, 720, 25
MIB = 1024 * 1024


def bench_file(minutes: float, gop_seconds: float) -> Path:
    """Generate (once) the long test file: moving texture + a bouncing block, the astronaut for a
    minute in the middle. Low bitrate, as recorded talks and screen captures are."""
    path = OUT / f"analysis_{minutes:g}min_{WIDTH}x{HEIGHT}_gop{gop_seconds:g}.mp4"
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    import cv2
    from skimage import data

    rng = np.random.default_rng(1)
    texture = rng.integers(40, 200, (HEIGHT // 8, WIDTH // 8), dtype=np.uint8)
    texture = cv2.resize(texture, (WIDTH + 64, HEIGHT), interpolation=cv2.INTER_LINEAR)
    face = cv2.resize(data.astronaut(), (HEIGHT, HEIGHT), interpolation=cv2.INTER_AREA)
    face_yuv = av.VideoFrame.from_ndarray(face, format="rgb24").reformat(format="yuv420p").to_ndarray()
    total = int(minutes * 60 * FPS)
    face_from, face_to = total // 2 - 30 * FPS, total // 2 + 30 * FPS
    tmp = path.with_suffix(".partial.mp4")
    started = time.perf_counter()
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.bit_rate = 600_000
        stream.codec_context.gop_size = int(gop_seconds * FPS)
        stream.options = {
            "preset": "ultrafast",
            "keyint": str(int(gop_seconds * FPS)),
            "min-keyint": str(int(gop_seconds * FPS)),
            "scenecut": "0",
        }
        chroma = np.full((HEIGHT // 2, WIDTH), 128, np.uint8)  # U and V planes, flat
        for index in range(total):
            shift = index % 64
            luma = np.ascontiguousarray(texture[:, shift : shift + WIDTH])
            x = (index * 7) % (WIDTH - 120)
            luma[300:420, x : x + 120] = 235
            planes = np.concatenate([luma, chroma])
            if face_from <= index < face_to:
                planes = face_yuv.copy() if face_yuv.shape[1] == WIDTH else _paste(planes, face_yuv)
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts = index
            frame.time_base = fractions.Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    tmp.rename(path)
    print(f"generated {path.name}: {path.stat().st_size / MIB:.1f} MiB in {time.perf_counter() - started:.0f} s")
    return path


def _paste(planes: np.ndarray, face_yuv: np.ndarray) -> np.ndarray:
    """The astronaut (a square I420 picture) centred on the frame's I420 planes."""
    out = planes.copy()
    side = face_yuv.shape[1]
    x0 = (WIDTH - side) // 2
    out[:HEIGHT, x0 : x0 + side] = face_yuv[:side]
    u, v = (
        face_yuv[side : side + side // 4].reshape(side // 2, side // 2),
        face_yuv[side + side // 4 :].reshape(side // 2, side // 2),
    )
    uv = out[HEIGHT:]
    u_plane = uv[: HEIGHT // 4].reshape(HEIGHT // 2, WIDTH // 2)
    v_plane = uv[HEIGHT // 4 :].reshape(HEIGHT // 2, WIDTH // 2)
    u_plane[:, x0 // 2 : x0 // 2 + side // 2] = u
    v_plane[:, x0 // 2 : x0 // 2 + side // 2] = v
    return out


class PeakRss:
    """Samples this process's RSS every 20 ms in a thread; `peak` in bytes."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


async def run_job(path: Path, interval: float, tags: list[str], niceness: int = 10) -> dict:
    """The real runner on a copy of the file (a job owns and removes its upload)."""
    data_dir = Path(tempfile.mkdtemp(prefix="bench-analysis-", dir=OUT))
    settings = AnalysisSettings(data_dir=data_dir, niceness=niceness)
    runner = JobRunner(settings, AnalysisServices(vision=VisionBackends(), face_max_side=settings.face_max_side))
    await runner.start()
    try:
        job_id = runner.new_id()
        upload = runner.upload_path(job_id)
        try:
            os.link(path, upload)
        except OSError:
            shutil.copy(path, upload)
        started = time.perf_counter()
        await runner.submit("analyze", {"tag_list": tags, "frame_interval": interval}, job_id=job_id, input_path=upload)
        job = await runner.wait(job_id, 3600)
        elapsed = time.perf_counter() - started
    finally:
        await runner.stop()
        await runner.services.vision.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    if job["status"] != "completed":
        raise RuntimeError(f"bench job {job['status']}: {job['error']}")
    return {"elapsed": elapsed, "result": job["result"]}


async def cancel_latency(path: Path, interval: float, tags: list[str]) -> dict:
    """How long a cancel (DELETE /v1/jobs/{id}) of a running job takes to answer, and until the job
    has wound down (tests/test_analysis_api.py checks that it cancels, this is how fast)."""
    data_dir = Path(tempfile.mkdtemp(prefix="bench-analysis-cancel-", dir=OUT))
    settings = AnalysisSettings(data_dir=data_dir)
    runner = JobRunner(settings, AnalysisServices(vision=VisionBackends(), face_max_side=settings.face_max_side))
    await runner.start()
    try:
        job_id = runner.new_id()
        upload = runner.upload_path(job_id)
        try:
            os.link(path, upload)
        except OSError:
            shutil.copy(path, upload)
        await runner.submit("analyze", {"tag_list": tags, "frame_interval": interval}, job_id=job_id, input_path=upload)
        for _ in range(600):  # bounded: up to 60 s for the job to get going
            if (await runner.get(job_id)).get("frames_done"):
                break
            await asyncio.sleep(0.1)
        started = time.perf_counter()
        status = await runner.cancel_or_delete(job_id)
        answered = time.perf_counter() - started
        await runner.wait(job_id, 30)
        wound_down = time.perf_counter() - started
    finally:
        await runner.stop()
        await runner.services.vision.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    return {"status": status, "answered_s": answered, "wound_down_s": wound_down}


def naive_run(path: Path, cap_bytes: int, interval: float, tags: list[str]) -> dict:
    """Decode every frame to RGB and keep them all (the known limit of loading the whole video
    into RAM), then tag one held frame per `interval` with the same tagger; stops decoding when the
    held frames reach `cap_bytes`."""
    from inference.vision.base import VisionRequest
    from inference.vision.embedded import EmbeddedTagger

    held: list[tuple[float, np.ndarray]] = []
    size = 0
    started = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        duration = float(stream.duration * stream.time_base)
        for frame in container.decode(stream):
            image = frame.to_ndarray(format="rgb24")
            held.append((float(frame.pts * stream.time_base), image))
            size += image.nbytes
            if size >= cap_bytes:
                break
    decoded = time.perf_counter()
    tagger = EmbeddedTagger(detect_max_side=AnalysisSettings().face_max_side)
    request = VisionRequest(tag_list=tuple(tags), threshold=0.5)
    next_t, tagged = 0.0, 0
    for t, image in held:
        if t + 1e-6 >= next_t:
            tagger.analyze_sync(image, request)
            tagged += 1
            next_t += interval
    finished = time.perf_counter()
    covered = held[-1][0] + 1.0 / FPS if held else 1.0 / FPS
    frames = len(held)
    held.clear()
    return {
        "frames": frames,
        "video_seconds": covered,
        "decode_s": decoded - started,
        "tag_s": finished - decoded,
        "elapsed": finished - started,
        "held_bytes": size,
        "duration": duration,
        "tagged": tagged,
    }


def sampler_only(path: Path, interval: float) -> dict:
    """Just the sampler: seek + decode each sample to RGB (no model), for the decode share."""
    from analysis.sampler import FrameSampler, interval_times

    started = time.perf_counter()
    with FrameSampler(str(path)) as sampler:
        times = interval_times(sampler.info.duration, interval, 100_000)
        count = sum(1 for _ in sampler.frames(times))
        decoded = sampler.frames_decoded
    return {"elapsed": time.perf_counter() - started, "samples": count, "frames_decoded": decoded}


async def live_fps(seconds: float, during: asyncio.Future | None = None) -> dict:
    """A paced 30 fps 1280x720 decode + encode loop at normal priority; achieved fps and the share
    of frames more than one frame time late."""
    clip = _live_clip()

    def loop() -> dict:
        encoder = av.CodecContext.create("libx264", "w")
        encoder.width, encoder.height, encoder.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        encoder.time_base = fractions.Fraction(1, 30)
        encoder.options = {"preset": "ultrafast", "tune": "zerolatency"}
        frames, late = 0, 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            decoder = av.CodecContext.create("h264", "r")
            for packet in clip:
                for frame in decoder.decode(packet):
                    due = started + frames / 30
                    now = time.perf_counter()
                    if now < due:
                        time.sleep(due - now)
                    elif now - due > 1 / 30:
                        late += 1
                    frame.pts = frames
                    encoder.encode(frame)
                    frames += 1
                if time.perf_counter() - started >= seconds:
                    break
        elapsed = time.perf_counter() - started
        return {"fps": frames / elapsed, "late_pct": 100.0 * late / max(1, frames)}

    return await asyncio.to_thread(loop)


def _live_clip() -> list:
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    encoder.time_base = fractions.Fraction(1, 30)
    encoder.options = {"preset": "ultrafast", "tune": "zerolatency"}
    packets = []
    for index in range(60):
        ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
        luma = ((xs + ys + index * 4) % 220 + 16).astype(np.uint8)
        planes = np.concatenate([luma, np.full((HEIGHT // 2, WIDTH), 128, np.uint8)])
        frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        frame.pts = index
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    return packets


def _row(*cells) -> str:
    return " | ".join(str(c).ljust(w) for c, w in zip(cells, (34, 14, 14, 16, 22)))


async def main(args: argparse.Namespace) -> None:
    tags = [t.strip() for t in args.tags.split(",") if t.strip()]
    path = bench_file(args.minutes, args.gop)
    duration = args.minutes * 60
    rss_start = psutil.Process().memory_info().rss
    print(
        f"\nfile: {path.name} ({path.stat().st_size / MIB:.1f} MiB, {duration:.0f} s, {WIDTH}x{HEIGHT} @ {FPS} fps, "
        f"keyframe every {args.gop:g} s); tags {tags} every {args.interval:g} s; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    with PeakRss() as mine_rss:
        mine = await run_job(path, args.interval, tags, args.niceness)
    spans = mine["result"]["tags"]
    with PeakRss() as naive_rss:
        naive = naive_run(path, args.naive_cap_mib * MIB, args.interval, tags)
    decode_only = sampler_only(path, args.interval)
    scale = duration / naive["video_seconds"]
    naive_total = naive["elapsed"] * scale
    naive_bytes = naive["held_bytes"] * scale
    print()
    print(_row("run", "wall s", "x real time", "peak RSS MiB", "notes"))
    print(_row("-" * 34, "-" * 14, "-" * 14, "-" * 16, "-" * 22))
    print(
        _row(
            f"analysis job (nice {args.niceness})",
            f"{mine['elapsed']:.1f}",
            f"{duration / mine['elapsed']:.1f}",
            f"{mine_rss.peak / MIB:.0f}",
            f"{mine['result']['frames_analysed']} frames tagged",
        )
    )
    print(
        _row(
            "  its sampler alone (no model)",
            f"{decode_only['elapsed']:.1f}",
            f"{duration / decode_only['elapsed']:.1f}",
            "",
            f"{decode_only['frames_decoded']} frames decoded for {decode_only['samples']} samples",
        )
    )
    print(
        _row(
            f"naive, first {naive['video_seconds']:.0f} s measured",
            f"{naive['elapsed']:.1f}",
            f"{naive['video_seconds'] / naive['elapsed']:.1f}",
            f"{naive_rss.peak / MIB:.0f}",
            f"decode {naive['decode_s']:.1f} s + tag {naive['tagged']} frames {naive['tag_s']:.1f} s; "
            f"stopped at {args.naive_cap_mib} MiB of frames",
        )
    )
    print(
        _row(
            "naive, extrapolated to the file",
            f"{naive_total:.0f}",
            f"{duration / naive_total:.1f}",
            f"{(rss_start + naive_bytes) / MIB:.0f}",
            "(linear in length)",
        )
    )
    print(
        f"\nratio: the job is {naive_total / mine['elapsed']:.1f}x faster than the naive run and holds "
        f"{(rss_start + naive_bytes) / mine_rss.peak:.0f}x less memory; RSS at start {rss_start / MIB:.0f} MiB. "
        "Goals: >= 30x real time, peak RSS < 400 MiB."
    )
    cancel = await cancel_latency(path, args.interval, tags)
    print(
        f"cancel of a running job: {cancel['status']}, answered in {cancel['answered_s'] * 1000:.0f} ms, "
        f"wound down in {cancel['wound_down_s'] * 1000:.0f} ms (goal: answered < 1 s)"
    )
    face = spans.get("face") or []
    print(
        f"face spans found: {[(s['start'], s['end']) for s in face][:4]} (astronaut on screen "
        f"{duration / 2 - 30:.0f}-{duration / 2 + 30:.0f} s)"
    )

    if args.live_seconds > 0:
        alone = await live_fps(args.live_seconds)
        job = asyncio.create_task(run_job(path, args.interval, tags))
        await asyncio.sleep(1.0)  # the job is decoding and tagging
        during = await live_fps(args.live_seconds)
        job_done = job.done()
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
        print()
        print(_row("live stream (paced 30 fps, 720p)", "fps", "late frames %", "", ""))
        print(_row("alone", f"{alone['fps']:.1f}", f"{alone['late_pct']:.1f}", "", ""))
        print(
            _row(
                "while an analysis job runs",
                f"{during['fps']:.1f}",
                f"{during['late_pct']:.1f}",
                "",
                "job finished early!" if job_done else "job ran throughout",
            )
        )
        print(f"ratio during/alone: {during['fps'] / alone['fps']:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the generated file")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--tags", default="face", help="embedded tags, e.g. face or face,text")
    parser.add_argument("--gop", type=float, default=2.0, help="keyframe interval of the generated file, seconds")
    parser.add_argument("--naive-cap-mib", type=int, default=1024, help="stop the naive run at this many MiB of frames")
    parser.add_argument("--niceness", type=int, default=10, help="ANALYSIS_NICENESS of the measured job")
    parser.add_argument("--live-seconds", type=float, default=8.0, help="0 skips the live-stream comparison")
    asyncio.run(main(parser.parse_args()))
