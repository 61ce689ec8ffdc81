"""HLS of a stream with an `{"type": "hls"}` output (media/outputs/hls.py), and hls.js for the viewer.

- `GET /stream/{id}/hls/master.m3u8`: the video variant and one SUBTITLES rendition per caption language;
- `GET /stream/{id}/hls/{rendition}.m3u8`: `video.m3u8`, or `subs-{lang}.m3u8`;
- `GET /stream/{id}/hls/{segment}`: `video-{n}.ts` (MPEG-TS) or `subs-{lang}-{n}.vtt` (WebVTT).

Viewer routes (WHEP_TOKEN or the stream's own viewer token), `?token=` accepted because a `<video>`
or hls.js fetches the URIs a playlist lists without headers: a playlist asked for with `?token=`
carries it on every URI it lists. A finished stream's HLS stays readable (with `#EXT-X-ENDLIST`)
for `HLS_LINGER_SECONDS`. `GET /static/vendor/hls.min.js` serves hls.js from `web/node_modules` (installed
by `make deps`, `npm ci --prefix web`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from httpapi.errors import ApiError
from httpapi.routes import Role, RouteTable, match_stream_id
from media.outputs.hls import (
    SUBTITLE_PLAYLIST,
    SUBTITLE_SEGMENT,
    VIDEO_PLAYLIST,
    VIDEO_SEGMENT,
    HlsOutput,
    HlsRegistry,
    hls_builder,
    master_playlist,
    subtitle_playlist,
    video_playlist,
)
from server.keys import STREAM_SERVICE_KEY
from server.settings import Settings

routes = RouteTable()
HLS_KEY = web.AppKey("hls_outputs", HlsRegistry)
HLS_JS = Path(__file__).resolve().parents[1] / "web" / "node_modules" / "hls.js" / "dist" / "hls.min.js"

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
# a live playlist changes every segment: never cached; a segment never changes once listed
PLAYLIST_CACHE = "no-cache, no-store"
SEGMENT_CACHE = "max-age=60"
ENDED_PLAYLIST_CACHE = "max-age=60"

VIEWER: dict[str, Any] = {
    "role": Role.VIEWER,
    "query_token": True,
    "stream_of": match_stream_id(),
    "tag": "viewer",
    "errors": (401, 404, 503),
}


def install_hls(app: web.Application, settings: Settings) -> HlsRegistry:
    """The `{"type": "hls"}` output for every stream's outputs runner, and its routes."""
    registry = HlsRegistry(settings.hls)
    app[HLS_KEY] = registry
    app[STREAM_SERVICE_KEY].factory.output_builders["hls"] = hls_builder(settings.hls, registry, settings.asr.language)
    routes.mount(app)
    return registry


def _output(request: web.Request) -> HlsOutput:
    manifest_id = request.match_info["manifest_id"]
    output = request.app[HLS_KEY].get(manifest_id)
    if output is None:
        raise ApiError(404, f'stream \'{manifest_id}\' has no HLS output (params.outputs: [{{"type": "hls"}}])')
    return output


def _ready(output: HlsOutput) -> None:
    if not output.window.ready and not output.window.ended:
        raise ApiError(
            503, f"the HLS of stream '{output.manifest_id}' has no segment yet", headers={"Retry-After": "1"}
        )


def _playlist(output: HlsOutput, text: str) -> web.Response:
    cache = ENDED_PLAYLIST_CACHE if output.window.ended else PLAYLIST_CACHE
    return web.Response(text=text, content_type=PLAYLIST_TYPE, headers={"Cache-Control": cache})


@routes.get(
    "/stream/{manifest_id}/hls/master.m3u8",
    summary="HLS master playlist: the video variant and a subtitle rendition per caption language",
    response_type=PLAYLIST_TYPE,
    **VIEWER,
)
async def hls_master(request: web.Request) -> web.Response:
    output = _output(request)
    _ready(output)
    return _playlist(output, master_playlist(output, request.query.get("token")))


@routes.get(
    "/stream/{manifest_id}/hls/{rendition}.m3u8",
    summary="HLS media playlist: video.m3u8 or subs-{lang}.m3u8",
    response_type=PLAYLIST_TYPE,
    **VIEWER,
)
async def hls_media_playlist(request: web.Request) -> web.Response:
    output = _output(request)
    name = request.match_info["rendition"] + ".m3u8"
    token = request.query.get("token")
    if name == VIDEO_PLAYLIST:
        _ready(output)
        return _playlist(output, video_playlist(output, token))
    match = SUBTITLE_PLAYLIST.match(name)
    text = subtitle_playlist(output, match.group(1), token) if match else None
    if text is None:
        raise ApiError(404, f"no HLS playlist '{name}' (renditions: video, {', '.join(output.languages()) or '-'})")
    _ready(output)
    return _playlist(output, text)


@routes.get(
    "/stream/{manifest_id}/hls/{segment}",
    summary="HLS segment: video-{n}.ts (MPEG-TS, video/mp2t) or subs-{lang}-{n}.vtt (WebVTT, text/vtt)",
    response_type="*/*",
    **VIEWER,
)
async def hls_segment(request: web.Request) -> web.Response:
    output = _output(request)
    name = request.match_info["segment"]
    headers = {"Cache-Control": SEGMENT_CACHE}
    if match := VIDEO_SEGMENT.match(name):
        segment = output.window.segment(int(match.group(1)))
        if segment is not None:
            return web.Response(body=segment.data, content_type="video/mp2t", headers=headers)
    elif (match := SUBTITLE_SEGMENT.match(name)) and match.group(1) in output.languages():
        text = output.window.webvtt(match.group(1), int(match.group(2)))
        if text is not None:
            return web.Response(text=text, content_type="text/vtt", charset="utf-8", headers=headers)
    raise ApiError(404, f"no HLS segment '{name}' (it may have left the window)")


@routes.get(
    "/static/vendor/hls.min.js",
    summary="hls.js, the HLS player of the viewer page",
    role=Role.PUBLIC,
    tag="demo",
    response_type="text/javascript",
    errors=(404,),
)
async def hls_js(request: web.Request) -> web.StreamResponse:
    if not HLS_JS.is_file():
        raise ApiError(404, "hls.js is not installed: run `make deps` (npm ci --prefix web)")
    return web.FileResponse(HLS_JS, headers={"Content-Type": "text/javascript", "Cache-Control": "max-age=3600"})
