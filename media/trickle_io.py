"""Trickle as a stream source (subscribe → byte pipe → PyAV decoder) and sink (encoder → segments
→ one chunked POST each)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections import deque
from typing import Any

import aiohttp
import av

from media.decode import BytePipe, DecoderOptions, MediaDecoder, TsSyncChecker
from media.encode import EncoderSettings, TsSegmentEncoder
from media.endpoints import Ingest, MediaSink, MediaSource, SinkHost
from media.frames import AudioItem, VideoItem
from media.trickle_client import SegmentWriter, TricklePublisher, TrickleSubscriber

log = logging.getLogger(__name__)

# How long the encoding thread waits on the event loop for a segment POST or a write before it
# declares the output stuck (a healthy loop answers in well under a millisecond).
LOOP_WAIT_SECONDS = 10.0


class TrickleSource(MediaSource):
    """Subscribes to a trickle channel and decodes the concatenated MPEG-TS segments."""

    name = "trickle"

    def __init__(self, url: str, label: str, session: aiohttp.ClientSession | None = None,
                 decoder_options: DecoderOptions | None = None, pipe_chunks: int = 64) -> None:
        self.url = url
        self.label = label
        self._session = session
        self._decoder_options = decoder_options
        self._pipe = BytePipe(max_chunks=pipe_chunks)
        self._subscriber: TrickleSubscriber | None = None
        self._decoder: MediaDecoder | None = None
        self._task: asyncio.Task | None = None
        self._ingest: Ingest | None = None
        self._ended = False
        self.segments = 0
        self.damaged_segments = 0
        self.end_reason: str | None = None

    async def start(self, ingest: Ingest) -> None:
        self._ingest = ingest
        self._subscriber = TrickleSubscriber(self.url, session=self._session)
        self._decoder = MediaDecoder(self._pipe, ingest, name=f"decode-{self.label}",
                                     options=self._decoder_options, on_exit=self._decoder_exited)
        self._decoder.start()
        self._task = asyncio.create_task(self._pump(), name=f"trickle-in-{self.label}")

    async def _pump(self) -> None:
        reason = "input ended"
        try:
            while True:
                segment = await self._subscriber.next_segment()
                if segment is None:
                    reason = f"input channel ended: {self._subscriber.end_reason or 'closed'}"
                    break
                self.segments += 1
                self._ingest.on_input_segment(segment.seq)
                checker = TsSyncChecker()
                try:
                    while chunk := await segment.read():
                        checker.feed(chunk)
                        if not await self._pipe.write(chunk):
                            return  # decoder is gone; it reports why
                finally:
                    await segment.close()
                if checker.bad_packets:
                    self.damaged_segments += 1
                    self._ingest.on_decode_error(
                        f"input segment {segment.seq}: {checker.bad_packets} of {checker.packets} MPEG-TS packets "
                        "out of sync (garbage bytes); the decoder resyncs at the next keyframe")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # network errors beyond the subscriber's retries
            reason = f"input failed: {exc}"
            log.warning("[%s] trickle input failed: %s", self.label, exc)
        finally:
            self.end_reason = self.end_reason or reason
            self._pipe.write_eof()  # the decoder drains what it has, then exits

    def _decoder_exited(self, reason: str) -> None:
        if reason == "stopped" or self._ingest is None:
            return
        self._ingest.on_input_ended(self.end_reason or reason)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._subscriber is not None:
            await self._subscriber.close()
        if self._decoder is not None:
            self._decoder.stop()
            await asyncio.get_running_loop().run_in_executor(None, self._decoder.join, 5.0)
            if self._decoder.is_alive():
                log.error("[%s] decoder thread did not stop in time", self.label)

    def stats(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "segments": self.segments,
            "damaged_segments": self.damaged_segments,
            "bytes": self._pipe.bytes_in,
            "decode_errors": self._decoder.decode_errors if self._decoder else 0,
            "demuxer_restarts": self._decoder.restarts if self._decoder else 0,
            "repeated_frames_dropped": self._decoder.repeated_frames if self._decoder else 0,
        }


class TrickleSink(MediaSink):
    """Encodes processed frames and publishes each GOP as one trickle segment, streaming its bytes
    into the segment's POST while it is being encoded."""

    name = "trickle"

    def __init__(self, url: str, label: str, encoder_settings: EncoderSettings,
                 session: aiohttp.ClientSession | None = None, size: tuple[int, int] | None = None) -> None:
        self.url = url
        self.label = label
        self.encoder_settings = encoder_settings
        self._session = session
        self._size = size
        self._has_audio = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._publisher: TricklePublisher | None = None
        self._encoder: TsSegmentEncoder | None = None
        self._writer: SegmentWriter | None = None
        self._closing: deque[concurrent.futures.Future] = deque(maxlen=8)
        self.failed: str | None = None
        self.segments_started = 0

    async def start(self, host: SinkHost) -> None:
        await super().start(host)
        self._loop = asyncio.get_running_loop()
        self._publisher = TricklePublisher(self.url, mime="video/mp2t", session=self._session)

    def configure(self, has_audio: bool) -> None:
        self._has_audio = has_audio

    # -- called on encoding threads --------------------------------------------------------------
    def send_video(self, item: VideoItem) -> None:
        if self.failed:
            return
        if self._encoder is None:
            width, height = self._size or (item.frame.width, item.frame.height)
            self._encoder = TsSegmentEncoder(self, width, height, self._has_audio, self.encoder_settings)
        with self._encoder.lock:
            try:
                self._encoder.encode_video(item.frame, item.media_time)
            except (av.FFmpegError, ValueError) as exc:
                self._fail(f"video encoding failed: {exc}")

    def send_audio(self, item: AudioItem) -> None:
        encoder = self._encoder
        if self.failed or encoder is None:
            return
        with encoder.lock:
            try:
                encoder.encode_audio(item.frame, item.media_time)
            except (av.FFmpegError, ValueError) as exc:
                log.warning("[%s] audio frame dropped: %s", self.label, exc)

    # SegmentSink, called by the encoder under its lock
    def begin_segment(self) -> None:
        if self.failed:
            return
        try:
            self._writer = self._on_loop(self._publisher.next_segment())
            self.segments_started += 1
            self.host.on_output_segment(self._writer.seq)
        except Exception as exc:
            self._fail(f"could not open output segment: {exc}")

    def write(self, data: bytes) -> None:
        if self.failed or self._writer is None:
            return
        try:
            self._on_loop(self._writer.write(data))
        except Exception as exc:
            self._fail(f"output write failed: {exc}")

    def end_segment(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None or self._loop is None:
            return
        # the POST's response is not awaited here: the next GOP must not wait on the network
        self._closing.append(asyncio.run_coroutine_threadsafe(self._finish_segment(writer), self._loop))

    async def _finish_segment(self, writer: SegmentWriter) -> None:
        try:
            await writer.close()
        except Exception as exc:
            log.info("[%s] closing output segment %s failed: %s", self.label, writer.seq, exc)
        if self._publisher is not None and self._publisher.closed and not self.failed:
            self._fail("output channel closed by the server")

    def _on_loop(self, coro):
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(LOOP_WAIT_SECONDS)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError("output did not accept data in time") from None

    def _fail(self, reason: str) -> None:
        if self.failed:
            return
        self.failed = reason
        log.warning("[%s] trickle output failed: %s", self.label, reason)
        self.host.on_output_failed(reason)

    # -- lifecycle ------------------------------------------------------------------------------
    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._encoder is not None:
            encoder = self._encoder

            def flush() -> None:
                with encoder.lock:
                    encoder.close()

            try:
                await loop.run_in_executor(None, flush)
            except Exception as exc:
                log.info("[%s] final flush failed: %s", self.label, exc)
        pending = [asyncio.wrap_future(f) for f in self._closing if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=5)
        if self._publisher is not None:
            await self._publisher.close(delete_channel=True)

    def stats(self) -> dict[str, Any]:
        enc = self._encoder
        return {
            "url": self.url,
            "segments": enc.segments if enc else 0,
            "frames_encoded": enc.frames_encoded if enc else 0,
            "frames_skipped": enc.frames_skipped if enc else 0,
            "audio_frames_encoded": enc.audio_frames_encoded if enc else 0,
            "bytes": enc.bytes_out if enc else 0,
            "failed": self.failed,
        }
