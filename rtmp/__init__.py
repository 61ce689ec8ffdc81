"""RTMP ingest: a small asyncio RTMP server for publishers (OBS, FFmpeg, vMix).

`handshake` (C0/C1/C2), `chunks` (the chunk stream), `amf0` (command encoding), `flv` (FLV tag
bodies: AVC and AAC), `decode` (PyAV decoders on a thread), `server` (the listener and one session
per connection), `source` (the stream source publishers feed), `settings` (the `rtmp` section of
the settings tree). It imports `media` (the source contract), never the `server` package.
"""
