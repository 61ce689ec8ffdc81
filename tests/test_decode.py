"""The byte pipe and decoder between trickle and the stream, with real PyAV decoding."""

from __future__ import annotations

import asyncio
import threading

from media.decode import BytePipe, MediaDecoder, TsSyncChecker
from tests.media_gen import make_segments, read_frame_id


class Collect:
    def __init__(self) -> None:
        self.ids: list[int] = []
        self.audio = 0
        self.errors: list[str] = []
        self.tracks: tuple[bool, bool] | None = None

    def on_streams(self, has_video, has_audio):
        self.tracks = (has_video, has_audio)

    def on_video_frame(self, frame):
        self.ids.append(read_frame_id(frame))

    def on_audio_frame(self, frame):
        self.audio += 1

    def on_decode_error(self, message):
        self.errors.append(message)


async def decode_pieces(pieces: list[bytes], max_chunks: int = 4) -> tuple[Collect, MediaDecoder]:
    pipe = BytePipe(max_chunks=max_chunks)
    sink = Collect()
    done = threading.Event()
    decoder = MediaDecoder(pipe, sink, "decode-test", on_exit=lambda reason: done.set())
    decoder.start()
    for piece in pieces:
        assert await pipe.write(piece)
    pipe.write_eof()  # with the pipe full: queued data must still be decoded, nothing dropped
    await asyncio.get_running_loop().run_in_executor(None, decoder.join, 20)
    assert done.is_set() and decoder.end_reason == "end of input"
    return sink, decoder


async def test_every_frame_decoded_once_whatever_the_chunking():
    segments = make_segments(3, 320, 240)
    data = b"".join(segments)
    # awkward chunking: tiny pieces, empty pieces (ignored, never an early EOF), cuts at segment ends
    pieces = [data[i : i + 997] for i in range(0, len(data), 997)]
    pieces[5:5] = [b"", b""]
    sink, decoder = await decode_pieces(pieces)
    assert sink.tracks == (True, True)
    assert sink.ids == list(range(90))  # all frames, in order, none repeated
    assert sink.audio > 100 and sink.errors == []
    sink, decoder = await decode_pieces(segments)
    assert sink.ids == list(range(90))


def test_sync_checker_counts_garbage():
    segment = make_segments(1, 160, 120, audio=False)[0]
    clean = TsSyncChecker()
    for i in range(0, len(segment), 1000):
        clean.feed(segment[i : i + 1000])
    assert clean.bad_packets == 0 and clean.packets == len(segment) // 188
    damaged = TsSyncChecker()
    broken = segment[:1880] + b"\x00" * 500 + segment[2380:]
    damaged.feed(broken[:777])
    damaged.feed(broken[777:])
    assert damaged.bad_packets >= 2
