"""Build a TensorRT engine from an ONNX model (for the "tensorrt" vision backend).

Usage::

    python -m inference.vision.build_engine --onnx model.onnx --out model.engine [--fp16]
        [--workspace-mb 2048] [--input-shape 1x3x224x224]
        [--min-shape 1x3x224x224 --max-shape 1x3x224x224]

Engines are specific to the TensorRT version and GPU they are built on: build on (a machine like)
the one that runs the server. ``--input-shape`` is needed only when the ONNX input has dynamic
dimensions; it becomes the optimisation profile's min/opt/max unless ``--min-shape``/``--max-shape``
widen it. The backend then runs at batch 1 with that height and width (set ``input_size`` in
``TensorRtConfig`` to match).

Uses the TensorRT builder API (10.x; the explicit-batch flag of 8.x is applied when it exists).
Exit status: 0 built, 1 build/parse failure, 2 TensorRT not installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 1x3x224x224, got {text!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"shape dimensions must be positive, got {text!r}")
    return dims


def build_engine(
    onnx_path: str | Path,
    out_path: str | Path,
    fp16: bool = False,
    workspace_mb: int = 2048,
    input_shape: tuple[int, ...] | None = None,
    min_shape: tuple[int, ...] | None = None,
    max_shape: tuple[int, ...] | None = None,
) -> Path:
    """Parse `onnx_path`, build a serialized engine and write it to `out_path`. Raises RuntimeError
    (with the parser's messages) on failure, ImportError when TensorRT is absent."""
    if importlib.util.find_spec("tensorrt") is None:
        raise ImportError("the 'tensorrt' Python package is not installed (pip install tensorrt)")
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    explicit_batch = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit_batch is not None and int(trt.__version__.split(".")[0]) < 10:
        flags |= 1 << int(explicit_batch)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError("ONNX parse failed:\n" + "\n".join(errors))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb * 1024 * 1024)
    if fp16:
        if getattr(builder, "platform_has_fast_fp16", True) is False:
            log.warning("this GPU has no fast FP16; building with FP16 allowed anyway")
        config.set_flag(trt.BuilderFlag.FP16)

    dynamic_inputs = []
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        if any(d < 0 for d in tensor.shape):
            dynamic_inputs.append(tensor)
    if dynamic_inputs:
        if input_shape is None:
            shapes = ", ".join(f"{t.name}{tuple(t.shape)}" for t in dynamic_inputs)
            raise RuntimeError(f"dynamic input(s) {shapes}: pass --input-shape (e.g. 1x3x224x224)")
        profile = builder.create_optimization_profile()
        for tensor in dynamic_inputs:
            if len(input_shape) != len(tensor.shape):
                raise RuntimeError(
                    f"--input-shape has {len(input_shape)} dims, input {tensor.name} has {len(tensor.shape)}"
                )
            profile.set_shape(tensor.name, min_shape or input_shape, input_shape, max_shape or input_shape)
        config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT could not build the engine (see the log above)")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(serialized))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inference.vision.build_engine",
        description="Build a TensorRT engine from an ONNX model for streamlens' tensorrt vision backend.",
    )
    parser.add_argument("--onnx", required=True, help="input ONNX model")
    parser.add_argument("--out", required=True, help="where to write the serialized engine")
    parser.add_argument("--fp16", action="store_true", help="allow FP16 kernels")
    parser.add_argument("--workspace-mb", type=int, default=2048, help="builder workspace limit (MiB)")
    parser.add_argument("--input-shape", type=parse_shape, help="opt shape for dynamic inputs, e.g. 1x3x224x224")
    parser.add_argument("--min-shape", type=parse_shape, help="min shape for dynamic inputs (default: --input-shape)")
    parser.add_argument("--max-shape", type=parse_shape, help="max shape for dynamic inputs (default: --input-shape)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not Path(args.onnx).is_file():
        print(f"error: ONNX file not found: {args.onnx}", file=sys.stderr)
        return 1
    try:
        out = build_engine(
            args.onnx,
            args.out,
            fp16=args.fp16,
            workspace_mb=args.workspace_mb,
            input_shape=args.input_shape,
            min_shape=args.min_shape,
            max_shape=args.max_shape,
        )
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
