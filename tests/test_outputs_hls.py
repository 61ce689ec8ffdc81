"""The `{"type": "hls"}` output end to end: espeak-ng speech muxed with video, streamed in over
trickle in real time, recognised, translated to Spanish by Apertium, and read back as HLS (the
master with a subtitle rendition per language, playlists and segments checked by ffprobe, WebVTT
timestamp maps against the video PTS), by hls.js in headless Chromium (cues from
`video.textTracks` in both languages; where `make deps` installed hls.js and Debian's chromium is
there), and as one language of the SSE and WebVTT caption routes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from httpapi.outbound import OutboundPolicy
from media.encode import EncoderSettings
from media.outputs.base import OutputContext
from media.outputs.hls import HlsOutput, HlsRegistry, HlsSettings, HlsWindow
from media.outputs.spec import HlsOutputSpec
from media.overlay import OverlayState
from server.keys import TRICKLE_KEY
from server.routes_hls import HLS_JS
from tests.conftest import wait_until
from tests.media_gen import make_segments
from tests.speech import build_track
from tests.sse import SseReader
from tests.test_captions_stream import to_48k_int16
from tests.trickle_helpers import publish_realtime
from tests.webrtc_helpers import BASE_FLAGS, CHROMIUM, enter_token

PHRASES = [
    "We will meet at the library after lunch.",
    "The train to the city leaves from the north station.",
    "My brother likes to play the guitar in the evening.",
    "The weather is very nice today.",
    "We will meet at the library tomorrow.",
]
WINDOW = 4  # segments listed
KEEP = 2  # served a little longer
FFPROBE = "ffprobe"


def attributes(line: str) -> dict[str, str]:
    """The attribute list of an #EXT-X-… tag line (quoted values unquoted)."""
    return {k: v.strip('"') for k, v in re.findall(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)', line.partition(":")[2])}


def uris(playlist: str) -> list[str]:
    return [line for line in playlist.splitlines() if line and not line.startswith("#")]


async def ffprobe(target: str, *args: str) -> dict[str, Any]:
    """ffprobe's JSON for a file or URL (run off the loop: it may read from this test's server)."""
    command = [FFPROBE, "-v", "error", "-of", "json", *args, target]
    out = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (target, out.stderr)
    return json.loads(out.stdout)


async def get_text(session: aiohttp.ClientSession, url: str, expect: int = 200) -> str:
    async with session.get(url) as resp:
        text = await resp.text()
        assert resp.status == expect, (url, resp.status, text)
        return text


async def hls_js_cues(base_url: str, manifest_id: str, token: str) -> dict[str, Any]:
    """hls.js (the HLS view of static/hls.html) in headless Chromium: the subtitle tracks it
    makes, and the cues of each language once it is selected in the page's language menu. The
    page sends the viewer token in a header (a demo page puts no token in a URL)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=[*BASE_FLAGS, "--autoplay-policy=no-user-gesture-required"]
        )
        try:
            page = await browser.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            await page.goto(f"{base_url}/static/hls.html?id={manifest_id}")
            await enter_token(page, token)  # sent in a header on every request hls.js makes
            await page.click("#play")
            await page.wait_for_function(
                "document.querySelectorAll('#subtitle-lang option').length === 3", timeout=30000
            )
            tracks = await page.evaluate(
                "() => Array.from(document.getElementById('video').textTracks)"
                ".map(t => ({label: t.label, language: t.language, kind: t.kind, mode: t.mode}))"
            )
            cue_text = (
                "(lang) => { const t = Array.from(document.getElementById('video').textTracks)"
                ".find(t => t.language === lang); return t && t.cues ? Array.from(t.cues).map(c => c.text) : []; }"
            )
            try:
                await page.wait_for_function(f"({cue_text})('en').length > 0", timeout=40000)
                english = await page.evaluate(cue_text, "en")  # a disabled track has no cues list
                await page.select_option("#subtitle-lang", "1")  # the menu's second track: Español
                await page.wait_for_function(f"({cue_text})('es').length > 0", timeout=40000)
            except Exception as exc:
                state = await page.evaluate(
                    "() => { const v = document.getElementById('video'); return {t: v.currentTime, "
                    "buf: v.buffered.length ? [v.buffered.start(0), v.buffered.end(v.buffered.length-1)] : [], "
                    "notice: document.getElementById('notice').textContent, "
                    "tracks: Array.from(v.textTracks).map(t => [t.language, t.mode, t.cues ? t.cues.length : -1])}; }"
                )
                raise AssertionError(f"hls.js: {state} console: {console[-20:]}") from exc
            return {
                "tracks": tracks,
                "en": english,
                "es": await page.evaluate(cue_text, "es"),
                "modes": await page.evaluate(
                    "() => Object.fromEntries(Array.from(document.getElementById('video').textTracks)"
                    ".map(t => [t.language, t.mode]))"
                ),
            }
        finally:
            await browser.close()


async def test_hls_output_with_a_subtitle_rendition_per_language(make_server, tmp_path: Path) -> None:
    server = await make_server(hls=HlsSettings(window_segments=WINDOW, keep_segments=KEEP, subtitle_delay=2.0))
    track = build_track(PHRASES, pause_seconds=1.0, lead_seconds=4.0, tail_seconds=6.0)
    segments = make_segments(int(np.ceil(track.duration)), 320, 240, audio_samples=to_48k_int16(track.audio))
    server.app[TRICKLE_KEY].create_channel("hls-in")
    resp = await server.session.post(
        server.url("/stream/start"),
        json={
            "subscribe_url": server.trickle_url("hls-in"),
            "params": {
                "captions": {"enabled": True, "language": "en", "translate_to": ["es"], "burn_in": False},
                "outputs": [{"type": "hls"}],
            },
        },
    )
    body = await resp.json()
    assert resp.status == 200, body
    manifest_id, viewer = body["manifest_id"], body["viewer_token"]
    base = server.url(f"/stream/{manifest_id}/hls")
    spanish = SseReader(server.session, server.url(f"/stream/{manifest_id}/captions?lang=es")).start()
    await asyncio.wait_for(spanish.connected.wait(), 5)
    publishing = asyncio.create_task(
        publish_realtime(server.trickle_url("hls-in"), segments, token=server.token("trickle"))
    )
    # a plain client (no Authorization header): the viewer token only on the URL, as a player has it
    async with aiohttp.ClientSession() as player:
        master_url = f"{base}/master.m3u8?token={viewer}"

        async def master_ready() -> bool:
            async with player.get(master_url) as r:
                return r.status == 200

        assert await wait_until(master_ready, timeout=20, interval=0.25)
        master = await get_text(player, master_url)
        if server.token("viewer"):  # token mode: the playlists are viewer routes
            await get_text(player, f"{base}/master.m3u8", expect=401)

        # the player: hls.js as `make deps` installs it (npm), in Debian's Chromium
        async with player.get(server.url("/static/vendor/hls.min.js")) as r:
            assert r.status == (200 if HLS_JS.is_file() else 404), r.status
        browser = None
        if HLS_JS.is_file() and os.path.exists(CHROMIUM):
            browser = asyncio.create_task(hls_js_cues(server.url(""), manifest_id, viewer))

        # the master: the video variant, and one SUBTITLES rendition per caption language
        media = [attributes(line) for line in master.splitlines() if line.startswith("#EXT-X-MEDIA:")]
        assert [(m["TYPE"], m["LANGUAGE"], m["NAME"], m["DEFAULT"]) for m in media] == [
            ("SUBTITLES", "en", "English", "YES"),
            ("SUBTITLES", "es", "Español", "NO"),
        ]
        assert all(m["GROUP-ID"] == "subs" and m["AUTOSELECT"] == "YES" for m in media)
        variant = attributes(next(line for line in master.splitlines() if line.startswith("#EXT-X-STREAM-INF:")))
        assert int(variant["BANDWIDTH"]) > 0 and variant["RESOLUTION"] == "320x240"
        assert variant["SUBTITLES"] == "subs" and re.fullmatch(r"avc1\.[0-9a-f]{6},mp4a\.40\.2", variant["CODECS"])
        # the token travels on every URI, so a player fetching relative URIs keeps authorizing
        listed = [m["URI"] for m in media] + uris(master)
        assert listed == [f"subs-en.m3u8?token={viewer}", f"subs-es.m3u8?token={viewer}", f"video.m3u8?token={viewer}"]
        video = await get_text(player, f"{base}/{uris(master)[0]}")
        assert "#EXT-X-TARGETDURATION:1" in video and all(u.endswith(f"?token={viewer}") for u in uris(video))

        cues = await asyncio.wait_for(browser, 120) if browser else None

        # every listed video segment and its WebVTT segments: ffprobe accepts them, and each WebVTT
        # segment maps its LOCAL zero to the first PTS of the video segment of the same number
        video = await get_text(player, f"{base}/video.m3u8?token={viewer}")
        subs = {lang: await get_text(player, f"{base}/subs-{lang}.m3u8?token={viewer}") for lang in ("en", "es")}
        sequence = re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", video)
        assert sequence and all(f"#EXT-X-MEDIA-SEQUENCE:{sequence.group(1)}" in s for s in subs.values())
        durations = [float(d) for d in re.findall(r"#EXTINF:([0-9.]+),", video)]
        assert len(durations) == WINDOW and all(0.9 <= d <= 1.1 for d in durations), durations
        checked = 0
        for uri in uris(video):
            seq = re.match(r"video-(\d+)\.ts", uri)
            assert seq
            ts = tmp_path / f"v{seq.group(1)}.ts"
            async with player.get(f"{base}/{uri}") as r:
                assert r.status == 200 and r.content_type == "video/mp2t"
                ts.write_bytes(await r.read())
            first = await ffprobe(
                str(ts), "-select_streams", "v:0", "-show_entries", "packet=pts", "-read_intervals", "%+#1"
            )
            pts = int(first["packets"][0]["pts"])
            for lang in ("en", "es"):
                name = f"subs-{lang}-{seq.group(1)}.vtt"
                if name not in "\n".join(uris(subs[lang])):
                    continue  # listed a little later, once late captions can no longer land in it
                async with player.get(f"{base}/{name}?token={viewer}") as r:
                    assert r.status == 200 and r.content_type == "text/vtt"
                    vtt = await r.text()
                assert vtt.splitlines()[:2] == ["WEBVTT", f"X-TIMESTAMP-MAP=MPEGTS:{pts},LOCAL:00:00:00.000"]
                (tmp_path / name).write_text(vtt)
                await ffprobe(str(tmp_path / name))
                checked += 1
        assert checked >= 2

        # hls.js: one text track per rendition, the spoken one shown first, cues in both languages
        if cues is not None:
            assert [(t["label"], t["language"], t["kind"]) for t in cues["tracks"]] == [
                ("English", "en", "subtitles"),
                ("Español", "es", "subtitles"),
            ]
            assert cues["modes"]["es"] == "showing"  # the menu switched hls.js to the Spanish rendition
            english, spanish_cues = " ".join(cues["en"]).lower(), " ".join(cues["es"]).lower()
            assert any(word in english for word in ("library", "train", "guitar", "weather", "brother")), cues
            assert spanish_cues and spanish_cues != english, cues

        # the window stays bounded: old segments leave the playlists, then are gone
        await publishing
        status = await (await server.session.get(server.url(f"/stream/{manifest_id}/status"))).json()
        hls = status["outputs"]["hls0"]["hls"]
        assert hls["segments_removed"] > 0 and hls["segments_held"] <= WINDOW + KEEP, hls
        await get_text(player, f"{base}/video-0.ts?token={viewer}", expect=404)

        # ?lang= on the SSE and WebVTT caption routes: the Spanish captions
        assert await wait_until(lambda: any(m.event == "final" for m in spanish.messages), timeout=20)
        finals = [m.data for m in spanish.messages if m.event == "final"]
        assert all(f["lang"] == "es" and f["text"] != f["original_text"] for f in finals), finals
        assert "biblioteca" in " ".join(f["text"].lower() for f in finals)
        assert all(m.event != "partial" for m in spanish.messages)  # partials are not translated
        vtt_es = await get_text(player, server.url(f"/stream/{manifest_id}/captions.vtt?lang=es&token={viewer}"))
        assert "biblioteca" in vtt_es.lower()
        for route in ("captions.vtt", "captions"):  # not a language code: a 400 in the one error shape
            error = await get_text(player, server.url(f"/stream/{manifest_id}/{route}?lang=e%20s&token={viewer}"), 400)
            assert "language code" in json.loads(error)["error"]["message"]

        # stopped: every playlist ends, and stays readable for a while
        await server.session.delete(server.url(f"/stream/{manifest_id}"))
        for name in ("video", "subs-en", "subs-es"):
            ended = await get_text(player, f"{base}/{name}.m3u8?token={viewer}")
            assert ended.rstrip().endswith("#EXT-X-ENDLIST"), ended
        await get_text(player, f"{base}/subs-fr.m3u8?token={viewer}", expect=404)
        # ffprobe reads the ended HLS over HTTP as a player does (relative URIs, the token on each)
        probed = await ffprobe(master_url, "-show_entries", "stream=codec_type,codec_name,width,height")
        kinds = {(s["codec_type"], s["codec_name"]) for s in probed["streams"]}
        assert {("video", "h264"), ("audio", "aac")} <= kinds
        for lang in ("en", "es"):  # Debian's ffprobe 5.1 does not follow SUBTITLES renditions: each on its own
            probed = await ffprobe(f"{base}/subs-{lang}.m3u8?token={viewer}", "-show_entries", "stream=codec_name")
            assert [s["codec_name"] for s in probed["streams"]] == ["webvtt"]
    await spanish.stop()


def test_window_budget_late_cues_and_end() -> None:
    """The window without a server: bytes budget (drops counted), cue placement, ENDLIST."""
    window = HlsWindow(HlsSettings(window_segments=3, keep_segments=2, max_bytes=1 << 20, subtitle_delay=1.0))
    segment = b"\x00" * (220 << 10)  # 4 fit in the budget, 5 do not
    window.add_cue("en", 1, 0.2, 0.8, "on time")
    for index in range(3):
        window.add_segment(segment, float(index), 1.0)
    window.add_cue("en", 2, 0.5, 1.5, "late")  # segment 0 and 1 are sealed by now
    window.add_cue("en", 2, 0.5, 1.5, "late")  # a repeat (a later revision) is not a second cue
    window.add_segment(segment, 3.0, 1.0)  # seals segment 2
    on_time, late = window.webvtt("en", 0), window.webvtt("en", 2)
    assert on_time is not None and "00:00:00.200 --> 00:00:00.800" in on_time
    # moved to the first segment not sealed yet, from its start: shown late, once
    assert late is not None and late.count(" --> ") == 1 and "00:00:00.000 --> 00:00:01.000\nlate" in late
    assert window.webvtt("en", 3) is None  # not sealed: not served yet
    for index in range(4, 6):
        window.add_segment(segment, float(index), 1.0)
    stats = window.stats()
    assert stats["bytes_held"] <= 1 << 20 and stats["segments_dropped"] > 0, stats
    assert stats["segments_held"] == 4 and stats["cues"] == 2 and stats["cues_late"] == 1
    playlist = window.media_playlist(lambda s: f"s{s.seq}", subtitles=True)
    assert "#EXT-X-MEDIA-SEQUENCE:3" in playlist and "s5" not in playlist and "ENDLIST" not in playlist
    window.finish()
    playlist = window.media_playlist(lambda s: f"s{s.seq}", subtitles=True)
    assert "s5" in playlist and playlist.rstrip().endswith("#EXT-X-ENDLIST")


def test_finished_outputs_are_forgotten() -> None:
    """The registry keeps a finished stream's HLS for `linger_seconds`, at most `max_finished`."""
    settings = HlsSettings(linger_seconds=3600, max_finished=1)
    registry = HlsRegistry(settings)
    outputs = []
    for index in range(3):
        ctx = OutputContext(f"s{index}", OutboundPolicy(), EncoderSettings(), OverlayState(), dict, lambda _e: None)
        outputs.append(HlsOutput("hls0", HlsOutputSpec(type="hls"), ctx, settings))
        registry.add(outputs[-1])
    outputs[0].window.finish()
    outputs[1].window.finish()
    assert registry.get("s0") is None and registry.get("s1") is outputs[1] and registry.get("s2") is outputs[2]
    settings.linger_seconds = 0
    assert registry.get("s1") is None and registry.get("s2") is outputs[2]  # running: kept
