"""WebRTC glass-to-glass latency over loopback, measured with frame ids.

    .venv/bin/python bench/bench_webrtc.py [--seconds 15] [--codec VP8|H264] [--sizes 640x480,1280x720]

Headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) paints a canvas every 33 ms:
a grey background, a moving square and a 12-bit frame id as 12 black/white blocks across the
middle rows (the server's overlay header covers the top rows). `canvas.captureStream(30)` goes to
`POST /offer` of an in-process server; the processed video comes back on the same peer
connection; `requestVideoFrameCallback` draws each presented frame into a canvas of the sender's
size, decodes the id and records `now - sentAt[id]`. The first `--warmup` samples are discarded.
One clock (the page's), so the figure is true glass-to-glass: canvas → Chrome encode → aiortc
decode → stream (queue + overlay) → shared encode → Chrome decode → presentation.

Prints a table; never passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from aiohttp import web  # noqa: E402

from media.manager import STREAMS_KEY  # noqa: E402
from server.app import create_app  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.webrtc_helpers import BASE_FLAGS as FLAGS  # noqa: E402
from tests.webrtc_helpers import CHROMIUM

# Runs in the page. Returns the latency samples (ms, in arrival order) and a few counters.
PAGE_SCRIPT = """
async ({width, height, seconds}) => {
  const BITS = 12, MOD = 1 << BITS;
  const block = Math.floor(width / 16);
  const x0 = Math.floor((width - block * BITS) / 2);
  const y0 = Math.floor(height / 2 - block / 2);
  const canvas = document.createElement("canvas");
  canvas.width = width; canvas.height = height;
  const ctx = canvas.getContext("2d");
  const sentAt = new Map();
  let next = 0, painted = 0;
  function paint() {
    const id = next; next = (next + 1) % MOD;
    ctx.fillStyle = "#808080"; ctx.fillRect(0, 0, width, height);
    ctx.fillStyle = "#303030";
    ctx.fillRect((painted * 7) % (width - 80), Math.floor(height * 0.7), 80, 80);
    for (let b = 0; b < BITS; b++) {
      ctx.fillStyle = ((id >> (BITS - 1 - b)) & 1) ? "#ffffff" : "#000000";
      ctx.fillRect(x0 + b * block, y0, block, block);
    }
    sentAt.set(id, performance.now());
    painted += 1;
  }
  paint();
  const painter = setInterval(paint, 33);
  const stream = canvas.captureStream(30);
  const pc = new RTCPeerConnection({iceServers: []});
  const transceiver = pc.addTransceiver(stream.getVideoTracks()[0], {direction: "sendrecv"});
  try {
    const params = transceiver.sender.getParameters();
    params.degradationPreference = "maintain-resolution";
    await transceiver.sender.setParameters(params);
  } catch (e) { /* older browsers */ }
  const video = document.createElement("video");
  video.muted = true; video.autoplay = true; video.playsInline = true;
  document.body.appendChild(video);
  pc.ontrack = (e) => { video.srcObject = new MediaStream([e.track]); };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === "complete") resolve(); };
    setTimeout(resolve, 2000);
  });
  const resp = await fetch("/offer", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({sdp: pc.localDescription.sdp, type: "offer"})});
  if (!resp.ok) throw new Error("offer refused: " + resp.status + " " + await resp.text());
  const answer = await resp.json();
  await pc.setRemoteDescription({type: "answer", sdp: answer.sdp});

  const reader = document.createElement("canvas");
  reader.width = width; reader.height = height;
  const rctx = reader.getContext("2d", {willReadFrequently: true});
  const samples = [], seen = new Set();
  let callbacks = 0, undecodable = 0, lastWidth = 0;
  function onFrame(now, meta) {
    callbacks += 1;
    lastWidth = meta.width;
    rctx.drawImage(video, 0, 0, width, height);  // sender's size, even if the stream was scaled
    const row = rctx.getImageData(0, y0 + Math.floor(block / 2), width, 1).data;
    let id = 0;
    for (let b = 0; b < BITS; b++) {
      const x = x0 + b * block + Math.floor(block / 2);
      const lum = (row[4 * x] + row[4 * x + 1] + row[4 * x + 2]) / 3;
      id = (id << 1) | (lum > 128 ? 1 : 0);
    }
    const sent = sentAt.get(id);
    if (sent !== undefined && now >= sent && now - sent < 2000) {
      samples.push(now - sent); seen.add(id);
    } else {
      undecodable += 1;
    }
    video.requestVideoFrameCallback(onFrame);
  }
  video.requestVideoFrameCallback(onFrame);
  await new Promise((r) => setTimeout(r, seconds * 1000));
  clearInterval(painter);
  let inbound = {}, rtt = null;
  (await pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") inbound = s;
    if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) rtt = s.currentRoundTripTime;
  });
  const result = {manifest_id: answer.manifest_id, samples, painted, callbacks, undecodable, unique: seen.size,
    received_width: inbound.frameWidth || lastWidth, received_height: inbound.frameHeight || 0,
    frames_decoded: inbound.framesDecoded || 0, frames_dropped_browser: inbound.framesDropped || 0,
    jitter_buffer_ms: inbound.jitterBufferEmittedCount ? 1000 * inbound.jitterBufferDelay / inbound.jitterBufferEmittedCount : null,
    rtt_ms: rtt === null ? null : rtt * 1000};
  pc.close();
  return result;
}
"""


def percentile(values: list[float], q: float) -> float:
    data = sorted(values)
    index = min(len(data) - 1, max(0, round(q / 100 * (len(data) - 1))))
    return data[index]


async def run_one(page, app: web.Application, width: int, height: int, seconds: float, warmup: int) -> dict[str, Any]:
    result = await page.evaluate(PAGE_SCRIPT, {"width": width, "height": height, "seconds": seconds})
    stream = app[STREAMS_KEY].get(result["manifest_id"])
    status = stream.status() if stream else {}
    await asyncio.sleep(0.5)
    samples = result["samples"][warmup:]
    row: dict[str, Any] = {**result, "size": f"{width}x{height}", "samples": len(samples)}
    if samples:
        row.update(
            p50=statistics.median(samples),
            p95=percentile(samples, 95),
            p10=percentile(samples, 10),
            p90=percentile(samples, 90),
        )
    encoders = (status.get("sinks") or {}).get("webrtc", {}).get("video_encoders", {})
    encoder = next(iter(encoders.values()), {})
    row.update(
        server_in=status.get("frames_in"),
        server_out=status.get("frames_out"),
        server_dropped=status.get("frames_dropped"),
        encoder_skipped=encoder.get("frames_skipped"),
        peer_dropped=encoder.get("consumer_dropped"),
        codec=encoder.get("codec"),
        pipeline_ms=status.get("latency_ms"),
        encode_ms=encoder.get("encode_ms"),
    )
    return row


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=int, default=60, help="samples discarded at the start of each run")
    parser.add_argument("--codec", choices=["VP8", "H264"], default="VP8")
    parser.add_argument("--sizes", default="640x480,1280x720")
    parser.add_argument("--bitrate", type=int, default=None, help="webrtc_video_bitrate (bps)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from playwright.async_api import async_playwright

    overrides: dict[str, Any] = {"webrtc_host_addresses": "127.0.0.1", "webrtc_video_codec": args.codec}
    if args.bitrate:
        overrides["webrtc_video_bitrate"] = args.bitrate
    app = create_app(Settings(host="127.0.0.1", port=0, **overrides))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    rows = []
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            try:
                for size in args.sizes.split(","):
                    width, height = (int(v) for v in size.lower().split("x"))
                    page = await browser.new_page()
                    await page.goto(base_url + "/whep.html")
                    rows.append(await run_one(page, app, width, height, args.seconds, args.warmup))
                    await page.close()
                    await asyncio.sleep(1.0)
            finally:
                await browser.close()
    finally:
        await runner.cleanup()

    print(
        f"\nWebRTC loopback glass-to-glass latency (frame ids; browser canvas → server overlay → back), "
        f"{args.seconds:g} s per size, first {args.warmup} samples discarded, {os.cpu_count()} CPUs"
    )
    header = (
        f"{'size':>9} {'codec':>5} {'recv size':>9} {'samples':>7} {'p50 ms':>7} {'p95 ms':>7} {'p10':>6} {'p90':>6} "
        f"{'ids sent':>8} {'ids seen':>8} {'srv in':>6} {'srv out':>7} {'q drop':>6} {'enc skip':>8} "
        f"{'peer drop':>9} {'pipe p50':>8} {'enc p50':>7}"
    )
    print(header)
    print("-" * len(header))
    extra = []
    for r in rows:

        def fmt(key: str, width: int, row: dict[str, Any] = r) -> str:
            value = row.get(key)
            return f"{value:>{width}.1f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"

        recv = f"{r.get('received_width')}x{r.get('received_height')}"
        pipe = (r.get("pipeline_ms") or {}).get("p50")
        enc = (r.get("encode_ms") or {}).get("p50")
        print(
            f"{r['size']:>9} {r.get('codec')!s:>5} {recv:>9} {r['samples']:>7} {fmt('p50', 7)} {fmt('p95', 7)} "
            f"{fmt('p10', 6)} {fmt('p90', 6)} {r['painted']:>8} {r['unique']:>8} {r.get('server_in')!s:>6} "
            f"{r.get('server_out')!s:>7} {r.get('server_dropped')!s:>6} {r.get('encoder_skipped')!s:>8} "
            f"{r.get('peer_dropped')!s:>9} {pipe!s:>8} {enc!s:>7}"
        )
        jitter, rtt = r.get("jitter_buffer_ms"), r.get("rtt_ms")
        decoded = r.get("frames_decoded") or 0
        extra.append(
            f"{r['size']}: browser decoded {decoded} frames ({decoded / args.seconds:.1f} fps), "
            f"dropped {r.get('frames_dropped_browser')}, jitter buffer "
            f"{'-' if jitter is None else f'{jitter:.1f} ms'}, RTT {'-' if rtt is None else f'{rtt:.1f} ms'}, "
            f"undecodable ids {r.get('undecodable')}"
        )
    print()
    for line in extra:
        print(line)
    print(
        "\nq drop: frames the stream's bounded video queue dropped; enc skip: processed frames the shared encoder "
        "skipped for a newer one;\npeer drop: packets a viewer missed while waiting for a keyframe; pipe/enc p50: "
        "server decode→processed and encode time (ms). Goal at 640x480: p50 <= 80 ms, p95 <= 120 ms."
    )


if __name__ == "__main__":
    asyncio.run(main())
