"""The per-stream outputs runner: one `MediaSink` of every stream that owns its `params.outputs`.

It validates the list (before a start or an update is accepted), starts the outputs when the
stream starts, reconciles them when the params change (an unchanged entry keeps running, a
removed or changed one is stopped, a new one started), feeds every running output the stream's
frames before the stream's overlay (each output draws its own), its audio and its caption events,
and stops them all when the stream stops, whichever way it ends (`Stream.stop` stops every sink).
An output that raises is logged and counted; the stream and the other outputs go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from httpapi.outbound import OutboundDenied, OutboundPolicy
from httpapi.redact import redact_url
from media.encode import EncoderSettings
from media.endpoints import MediaSink, SinkHost
from media.events import CaptionEvent, StreamEvent
from media.frames import AudioItem, VideoItem
from media.outputs.base import OutputBase, OutputBuilder, OutputContext, OutputState
from media.outputs.spec import OutputSpec, RtmpOutputSpec, check_outputs_block, parse_outputs, resolve_allowed

if TYPE_CHECKING:
    from media.stream import Stream


class OutputsRunner(MediaSink):
    name = "outputs"
    source_frames = True  # frames before the stream's overlay: each output draws its own

    def __init__(
        self,
        manifest_id: str,
        params: dict[str, Any],
        policy: OutboundPolicy,
        encoder: EncoderSettings,
        builders: Mapping[str, OutputBuilder],
    ) -> None:
        self.manifest_id = manifest_id
        self.policy = policy
        self.encoder = encoder
        self.builders = dict(builders)
        self._specs = self.check(params)  # ValueError / OutboundDenied before the stream exists
        self._outputs: dict[str, OutputBase] = {}
        self._active: tuple[OutputBase, ...] = ()  # read by the media threads; replaced whole
        self._has_audio: bool | None = None
        self._ctx: OutputContext | None = None
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[None]] = set()
        self._closing = False
        self.errors = 0  # exceptions raised by outputs' media hooks

    # -- validation ----------------------------------------------------------------------------
    def check(self, params: dict[str, Any]) -> list[tuple[str, OutputSpec]]:
        """The validated outputs of `params`; raises ValueError (OutboundDenied for the policy)
        naming the entry (`params.outputs[0].url: ...`)."""
        return check_outputs_block(params.get("outputs"), self.policy, self.builders, where="params.outputs")

    # -- MediaSink -----------------------------------------------------------------------------
    async def start(self, host: SinkHost) -> None:
        await super().start(host)
        stream: Stream = host  # type: ignore[assignment]  # the runner is only ever a Stream's sink
        self._ctx = OutputContext(
            manifest_id=self.manifest_id,
            policy=self.policy,
            encoder=self.encoder,
            overlay_state=stream.overlay_state,
            params=lambda: stream.params,
            publish=stream.events.publish,
            log=stream.log,
        )
        # a name that resolves to a denied address refuses the start (400), like a trickle URL
        for index, (_, spec) in enumerate(self._specs):
            if isinstance(spec, RtmpOutputSpec):
                try:
                    await resolve_allowed(self.policy, spec.host, spec.port)
                except OutboundDenied as exc:
                    raise OutboundDenied(f"params.outputs[{index}].url {redact_url(spec.url)}: {exc}") from None
        stream.status_sections["outputs"] = self.status
        stream.events.add_listener(self._on_event)
        stream.add_hook("params", self._on_params)
        await self._reconcile(self._specs)

    def configure(self, has_audio: bool) -> None:
        self._has_audio = has_audio
        for output in self._active:
            output.configure(has_audio)

    def send_video(self, item: VideoItem) -> None:
        for output in self._active:
            try:
                output.send_video(item)
            except Exception:
                self._failed(output, "send_video")

    def send_audio(self, item: AudioItem) -> None:
        for output in self._active:
            try:
                output.send_audio(item)
            except Exception:
                self._failed(output, "send_audio")

    async def stop(self) -> None:
        self._closing = True
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        async with self._lock:
            outputs, self._outputs, self._active = list(self._outputs.values()), {}, ()
            await asyncio.gather(*(self._stop_output(o) for o in outputs))

    def stats(self) -> dict[str, Any]:
        return {"outputs": len(self._active), "errors": self.errors}

    # -- outputs -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """`status()["outputs"]`: each output's state, last error and counters, by name."""
        return {output.name: output.status() for output in self._active}

    def outputs(self, type_: str | None = None) -> list[OutputBase]:
        """The running outputs (of one type), e.g. for the HLS routes to find a stream's HLS output."""
        return [o for o in self._active if type_ is None or o.type == type_]

    def _on_params(self, params: dict[str, Any]) -> None:
        if self._closing:
            return
        specs = parse_outputs(params)  # validated by `check` before the params were applied
        task = asyncio.ensure_future(self._reconcile(specs, params))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _reconcile(self, specs: list[tuple[str, OutputSpec]], params: dict[str, Any] | None = None) -> None:
        async with self._lock:
            if self._closing:
                return
            wanted = dict(specs)
            keep = {name: o for name, o in self._outputs.items() if wanted.get(name) == o.spec}
            gone = [o for name, o in self._outputs.items() if name not in keep]
            # stop the old ones first: a changed entry may push to the same destination
            self._active = tuple(keep.values())
            await asyncio.gather(*(self._stop_output(o) for o in gone))
            assert self._ctx is not None  # set by start()
            outputs: dict[str, OutputBase] = {}
            for name, spec in specs:
                output = keep.get(name)
                if output is None:
                    output = self.builders[spec.type](name, spec, self._ctx)
                    if self._has_audio is not None:
                        output.configure(self._has_audio)
                    try:
                        await output.start()
                    except Exception as exc:
                        output.set_state(OutputState.RETRYING, f"start failed: {exc}")
                elif params is not None:
                    try:
                        output.update_params(params)
                    except Exception:
                        self._failed(output, "update_params")
                outputs[name] = output
            self._outputs = outputs
            self._active = tuple(outputs.values())

    async def _stop_output(self, output: OutputBase) -> None:
        try:
            await output.stop()
        except Exception as exc:
            assert self._ctx is not None
            self._ctx.log.warning("stopping output %s failed: %s", output.name, exc)

    def _on_event(self, event: StreamEvent) -> None:
        if not isinstance(event, CaptionEvent):
            return
        for output in self._active:
            try:
                output.on_caption(event)
            except Exception:
                self._failed(output, "on_caption")

    def _failed(self, output: OutputBase, hook: str) -> None:
        self.errors += 1
        if self._ctx is not None:
            self._ctx.log.exception("output %s: %s failed", output.name, hook)


def runner_of(stream: Any) -> OutputsRunner | None:
    """The outputs runner among a stream's sinks (None for a stream built without one)."""
    for sink in getattr(stream, "sinks", ()):
        if isinstance(sink, OutputsRunner):
            return sink
    return None


def outputs_metrics(streams: Iterable[Any]) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
    """A `Metrics.add_source` body: every running output's counters and state, per stream."""
    labels = ["manifest_id", "output", "type"]
    frames = CounterMetricFamily("streamlens_output_frames", "Video frames an output sent", labels=labels)
    sent = CounterMetricFamily("streamlens_output_bytes", "Bytes an output sent", labels=labels)
    drops = CounterMetricFamily("streamlens_output_drops", "Frames an output dropped (queue full)", labels=labels)
    reconnects = CounterMetricFamily("streamlens_output_reconnects", "Reconnects of an output", labels=labels)
    state = GaugeMetricFamily("streamlens_output_state", "1 for an output's current state", labels=[*labels, "state"])
    for stream in streams:
        runner = runner_of(stream)
        if runner is None:
            continue
        for output in runner.outputs():
            key = [runner.manifest_id, output.name, output.type]
            frames.add_metric(key, output.frames)
            sent.add_metric(key, output.bytes)
            drops.add_metric(key, output.drops)
            reconnects.add_metric(key, output.reconnects)
            state.add_metric([*key, output.state.value], 1)
    yield from (frames, sent, drops, reconnects, state)
