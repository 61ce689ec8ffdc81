"""Run a serialized TensorRT engine on frames, on the GPU: the "tensorrt" vision backend.

Needs the ``tensorrt`` Python package (10.x API: named I/O tensors, ``execute_async_v3``) and
torch with a CUDA device. Both imports are guarded; without them constructing the backend raises
``BackendUnavailable`` naming exactly what is missing. Build an engine from ONNX with
``python -m inference.vision.build_engine`` on the machine (GPU + TensorRT version) that will run it.

What the engine is expected to be (kept generic, configured in ``TensorRtConfig``):

- one image input, ``NCHW`` (or ``NHWC`` when its last dimension is 3), float32/float16 (or an
  integer type, which is fed raw 0-255 pixels); dynamic dimensions resolve to batch 1 and
  ``input_size`` (default 224x224);
- a classification output (the first output tensor, or ``output_name``): one score per class,
  logits by default (softmax applied; set ``output_is_logits=False`` for probabilities).

Preprocessing runs on the GPU on the backend's own CUDA stream: the frame (a numpy RGB array, a
CUDA ``torch`` tensor ``(H, W, 3) uint8``, or a ``media.gpu_frames.GpuFrame`` straight from the GPU
frame queue, so no host copy happens) is scaled to ``[0, 1]``, resized (bilinear, antialiased) to
the input size, normalised with ``mean``/``std`` (ImageNet defaults) and cast to the input dtype.
Output parsing: softmax, top-k, one ``Tag`` per class named from ``labels_path`` (one label per
line, line i = class i; ``class_<i>`` when missing), then threshold / tag-list filtering.

One execution context, used from one worker thread: inference on a backend is serialised, and
at most ``max_pending`` frames wait for it (beyond that ``BackendBusy``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from inference.vision.base import (
    BackendBusy,
    BackendUnavailable,
    VisionBackend,
    VisionRequest,
    VisionResult,
    filter_tags,
)
from media.cuda import nvidia_device_visible
from media.events import Tag
from media.stats import LatencyWindow

log = logging.getLogger(__name__)


class TensorRtConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engine_path: str
    labels_path: str | None = None
    model_name: str | None = None  # reported as VisionResult.model; default: the engine file's stem
    device_index: int = Field(0, ge=0)
    input_size: tuple[int, int] = (224, 224)  # (height, width) used where the engine's input is dynamic
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: Literal["rgb", "bgr"] = "rgb"  # what the engine was trained on
    output_name: str | None = None
    output_is_logits: bool = True
    top_k: int = Field(5, ge=1, le=1000)
    max_pending: int = Field(4, ge=1)


def missing_requirements() -> list[str]:
    """What this machine lacks to run TensorRT engines (empty when everything is there)."""
    missing: list[str] = []
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("the 'tensorrt' Python package (pip install tensorrt)")
    if importlib.util.find_spec("torch") is None:
        missing.append("torch with CUDA (pip install torch)")
    elif not nvidia_device_visible():
        missing.append("a CUDA device (no NVIDIA driver/device found)")
    else:
        import torch

        if not torch.cuda.is_available():
            missing.append("a CUDA device visible to torch (torch.cuda.is_available() is False)")
    return missing


def read_labels(path: str | None) -> list[str]:
    if not path:
        return []
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle.read().splitlines()]


def _torch_dtype(trt: Any, torch: Any, trt_dtype: Any) -> Any:
    mapping = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.int8: torch.int8,
        trt.bool: torch.bool,
    }
    for trt_name, torch_name in (("int64", "int64"), ("uint8", "uint8"), ("bfloat16", "bfloat16")):
        if hasattr(trt, trt_name):
            mapping[getattr(trt, trt_name)] = getattr(torch, torch_name)
    if trt_dtype not in mapping:
        raise BackendUnavailable(f"unsupported TensorRT tensor dtype {trt_dtype}")
    return mapping[trt_dtype]


class TensorRtBackend(VisionBackend):
    """A TensorRT classification engine as a vision backend (see the module docstring)."""

    name = "tensorrt"
    accepts_gpu_frames = True  # VisionStage may hand it a media.gpu_frames.GpuFrame

    def __init__(self, config: TensorRtConfig) -> None:
        missing = missing_requirements()
        if missing:
            raise BackendUnavailable("TensorRT backend unavailable; missing: " + "; ".join(missing))
        engine_file = Path(config.engine_path)
        if not engine_file.is_file():
            raise BackendUnavailable(f"TensorRT engine file not found: {engine_file}")
        import tensorrt as trt
        import torch
        import torch.nn.functional as functional

        self.config = config
        self.model = config.model_name or engine_file.stem
        self._trt, self._torch, self._functional = trt, torch, functional
        self.device = torch.device("cuda", config.device_index)
        torch.cuda.set_device(self.device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(engine_file.read_bytes())
        if self._engine is None:
            raise BackendUnavailable(
                f"could not deserialize {engine_file} (built by another TensorRT version or for another GPU?)"
            )
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream(device=self.device)
        self._bind_tensors()
        self.labels = read_labels(config.labels_path)
        if self.labels and len(self.labels) != self.num_classes:
            log.warning("labels file has %d labels, engine outputs %d classes", len(self.labels), self.num_classes)
        self._mean = torch.tensor(config.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(config.std, device=self.device).view(1, 3, 1, 1)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vision-tensorrt")
        self._pending = 0
        self.calls = 0
        self.busy_rejections = 0
        self.latency = LatencyWindow(256)
        log.info(
            "TensorRT engine %s loaded: input %s %s (%s), output %s %s",
            engine_file,
            self._input_name,
            self._input_shape,
            "NHWC" if self._nhwc else "NCHW",
            self._output_name,
            self._output_shape,
        )

    def _bind_tensors(self) -> None:
        trt, torch, engine, context = self._trt, self._torch, self._engine, self._context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not outputs:
            raise BackendUnavailable(
                f"expected one image input and at least one output, got inputs={inputs} outputs={outputs}"
            )
        self._input_name = inputs[0]
        shape = list(engine.get_tensor_shape(self._input_name))
        if len(shape) != 4:
            raise BackendUnavailable(f"expected a 4-D image input, got shape {shape}")
        self._nhwc = shape[3] == 3 and shape[1] != 3
        height, width = self.config.input_size
        if self._nhwc:
            resolved = [
                1 if shape[0] < 0 else shape[0],
                height if shape[1] < 0 else shape[1],
                width if shape[2] < 0 else shape[2],
                3,
            ]
        else:
            resolved = [
                1 if shape[0] < 0 else shape[0],
                3,
                height if shape[2] < 0 else shape[2],
                width if shape[3] < 0 else shape[3],
            ]
        if -1 in shape:
            context.set_input_shape(self._input_name, resolved)
        self._input_shape = tuple(resolved)
        self._input_hw = (resolved[1], resolved[2]) if self._nhwc else (resolved[2], resolved[3])
        self._input_dtype = _torch_dtype(trt, torch, engine.get_tensor_dtype(self._input_name))
        self._input = torch.empty(self._input_shape, dtype=self._input_dtype, device=self.device)
        context.set_tensor_address(self._input_name, self._input.data_ptr())
        self._outputs: dict[str, Any] = {}
        for name in outputs:
            out_shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in out_shape):
                raise BackendUnavailable(f"output {name} has a data-dependent shape {out_shape}; not supported")
            dtype = _torch_dtype(trt, torch, engine.get_tensor_dtype(name))
            tensor = torch.empty(out_shape, dtype=dtype, device=self.device)
            context.set_tensor_address(name, tensor.data_ptr())
            self._outputs[name] = tensor
        self._output_name = self.config.output_name or outputs[0]
        if self._output_name not in self._outputs:
            raise BackendUnavailable(f"no output named {self._output_name!r}; outputs are {outputs}")
        self._output_shape = tuple(self._outputs[self._output_name].shape)
        batch = self._input_shape[0]
        self.num_classes = int(self._outputs[self._output_name].numel() // max(1, batch))

    # -- VisionBackend -------------------------------------------------------------------------

    async def analyze(self, image: Any, request: VisionRequest) -> VisionResult:
        if self._pending >= self.config.max_pending:
            self.busy_rejections += 1
            raise BackendBusy(f"TensorRT backend has {self._pending} frames pending (max {self.config.max_pending})")
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._infer, image, request)
        finally:
            self._pending -= 1

    def _to_device_hwc(self, image: Any) -> Any:
        torch = self._torch
        if hasattr(image, "wait") and hasattr(image, "tensor"):  # media.gpu_frames.GpuFrame
            return image.wait(self._stream)
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"expected RGB uint8 (h, w, 3), got {image.dtype} {image.shape}")
            return torch.from_numpy(np.ascontiguousarray(image)).to(self.device, non_blocking=False)
        if isinstance(image, torch.Tensor):
            if image.device != self.device:
                return image.to(self.device)
            # a bare CUDA tensor: order after the device's default stream; a producer on a side
            # stream must synchronise first (or hand a GpuFrame, whose event we wait on)
            self._stream.wait_stream(torch.cuda.default_stream(self.device))
            image.record_stream(self._stream)
            return image
        raise TypeError(f"unsupported image type {type(image).__name__}")

    def _infer(self, image: Any, request: VisionRequest) -> VisionResult:
        torch, functional = self._torch, self._functional
        started = time.perf_counter()
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            hwc = self._to_device_hwc(image)
            height, width = int(hwc.shape[0]), int(hwc.shape[1])
            x = hwc.permute(2, 0, 1).unsqueeze(0).float()
            if self.config.channel_order == "bgr":
                x = x.flip(1)
            if (height, width) != self._input_hw:
                x = functional.interpolate(x, size=self._input_hw, mode="bilinear", align_corners=False, antialias=True)
            if self._input_dtype.is_floating_point:
                x = (x / 255.0 - self._mean) / self._std
            else:
                x = x.round().clamp(0, 255)
            if self._nhwc:
                x = x.permute(0, 2, 3, 1)
            batch = self._input_shape[0]
            if batch > 1:  # fixed-batch engine: repeat the frame, read the first row
                x = x.expand(batch, *x.shape[1:])
            self._input.copy_(x.to(self._input_dtype))
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            scores = self._outputs[self._output_name].float().reshape(batch, -1)[0]
            probs = torch.softmax(scores, dim=0) if self.config.output_is_logits else scores
            k = min(self.config.top_k, probs.numel())
            confidences, indices = torch.topk(probs, k)
            confidences, indices = confidences.cpu().tolist(), indices.cpu().tolist()  # syncs the stream
        tags = [Tag(self._label(i), round(float(c), 4)) for c, i in zip(confidences, indices)]
        kept = filter_tags(tags, request)
        self.calls += 1
        self.latency.add(time.perf_counter() - started)
        text = ""
        if request.mode == "description":
            text = f"{self.model} (TensorRT classifier) top classes: " + ", ".join(
                f"{t.name} ({t.confidence:.2f})" for t in tags
            )
        return VisionResult(
            tags=kept, text=text, model=self.model, measures={"input_w": float(width), "input_h": float(height)}
        )

    def _label(self, index: int) -> str:
        if 0 <= index < len(self.labels) and self.labels[index]:
            return self.labels[index]
        return f"class_{index}"

    async def close(self) -> None:
        """Give the device memory back: the engine, its context and the bound I/O tensors (the GPU
        memory manager unloads an idle engine this way; the backend is rebuilt on its next use)."""
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        self._context = None
        self._engine = None
        self._input = None
        self._outputs = {}
        self._torch.cuda.empty_cache()  # the caching allocator would keep the freed blocks

    @property
    def idle(self) -> bool:
        return self._pending == 0

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "device": str(self.device),
            "input": {
                "name": self._input_name,
                "shape": list(self._input_shape),
                "layout": "NHWC" if self._nhwc else "NCHW",
            },
            "num_classes": self.num_classes,
            "calls": self.calls,
            "pending": self._pending,
            "busy_rejections": self.busy_rejections,
            "latency_ms": self.latency.summary_ms(),
        }
