"""Build a serialized TensorRT engine from an fsac model file, on the target device.

An engine is compiled for one GPU model and one TensorRT version: build it on the Jetson
that will run it (or an identical one), never on the workstation. The engine carries no
metadata, so a JSON sidecar `<engine>.json` holds the model's metadata plus the engine's
sha256 (`fsac.modelfile.write_engine_sidecar`); the runtime checks both.

    fsac engine model.onnx --precision fp16            # FP16 (default)
    fsac engine model.int8.onnx --precision int8       # explicit INT8 from the QDQ graph

What this does, as the equivalent `trtexec` line (S = image size, B = max batch):

    trtexec --onnx=model.onnx --saveEngine=model.fp16.engine --fp16 \\
            --minShapes=image:1xSxSx3 --optShapes=image:1xSxSx3 --maxShapes=image:BxSxSx3 \\
            --memPoolSize=workspace:1024

    (INT8 from the QDQ model: --int8 --fp16 instead of --fp16; the Q/DQ nodes carry the
    scales, so no calibration cache is used.)

Batch 1 is the optimisation point because a line inspects one part at a time; larger
batches up to B still run (e.g. several cameras).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fsac.errors import FsacError
from fsac.modelfile import INPUT_NAME, load_model_file, write_engine_sidecar

PRECISIONS = ("fp16", "fp32", "int8")


@dataclass
class EngineReport:
    engine: str
    sidecar: str
    precision: str
    max_batch: int
    build_s: float
    size_bytes: int
    tensorrt_version: str
    device: str
    trtexec: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_tensorrt():
    """-> the tensorrt module, or FsacError saying why an engine cannot be built here."""
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError:
        raise FsacError(
            "TensorRT is not installed (Python package `tensorrt`): build engines on the target device "
            "(Jetson: it comes with JetPack), or run the ONNX model with ONNX Runtime instead"
        ) from None
    return trt


def cuda_device_name() -> str:
    """Name of CUDA device 0, or FsacError when there is none (TensorRT needs one to build)."""
    try:
        import ctypes

        for lib in ("libcudart.so", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so.13"):
            try:
                rt = ctypes.CDLL(lib)
                break
            except OSError:
                continue
        else:
            rt = None
        if rt is not None:
            count = ctypes.c_int(0)
            if rt.cudaGetDeviceCount(ctypes.byref(count)) == 0 and count.value > 0:
                # cudaDeviceProp starts with `char name[256]`.
                prop = ctypes.create_string_buffer(4096)
                if rt.cudaGetDeviceProperties(prop, 0) == 0:
                    return prop.raw[:256].split(b"\0", 1)[0].decode(errors="replace") or "CUDA device 0"
                return "CUDA device 0"
    except Exception:  # any failure of the probe means: no usable CUDA runtime
        pass
    raise FsacError("no CUDA GPU found: TensorRT engines are built on the target device (e.g. the Jetson) itself")


def trtexec_line(model: str, engine: str, precision: str, image_size: int, max_batch: int, workspace_mb: int) -> str:
    flags = {"fp16": "--fp16", "fp32": "", "int8": "--int8 --fp16"}[precision]
    s = image_size
    return (f"trtexec --onnx={model} --saveEngine={engine} {flags} "
            f"--minShapes={INPUT_NAME}:1x{s}x{s}x3 --optShapes={INPUT_NAME}:1x{s}x{s}x3 "
            f"--maxShapes={INPUT_NAME}:{max_batch}x{s}x{s}x3 --memPoolSize=workspace:{workspace_mb}").replace("  ", " ")


def _check_graph_for_tensorrt(meta: dict[str, str], precision: str, source: str) -> None:
    model_precision = meta.get("fsac.precision", "fp32")
    if precision == "int8":
        if model_precision != "int8":
            raise FsacError(
                f"{source}: --precision int8 builds from the quantized QDQ model; run `fsac quantize "
                f"{source} --target tensorrt` and build from its output"
            )
        q = json.loads(meta.get("fsac.quantization", "{}") or "{}")
        if q.get("target") != "tensorrt":
            raise FsacError(
                f"{source}: was quantized for {q.get('target', 'cpu')!r} (asymmetric uint8 activations); TensorRT "
                "accepts symmetric int8 only: re-run `fsac quantize --target tensorrt`"
            )
    elif model_precision == "int8":
        raise FsacError(f"{source}: is an INT8 (QDQ) model; build it with --precision int8, or use the fp32 model")
    opt = json.loads(meta.get("fsac.optimize", "{}") or "{}")
    if opt.get("method") == "ort" and opt.get("kept"):
        raise FsacError(
            f"{source}: was optimised with onnxruntime's transformer optimizer (com.microsoft ops), which "
            "TensorRT cannot parse; re-export with --optimize slim or none"
        )


def check_engine_options(engine_path: str | os.PathLike, precision: str, max_batch: int, force: bool) -> None:
    """The engine options a user can get wrong, checked without TensorRT (so that `fsac export
    --engine` refuses them before the export, not after it)."""
    if precision not in PRECISIONS:
        raise FsacError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if max_batch < 1:
        raise FsacError(f"--max-batch must be >= 1, got {max_batch}")
    if Path(engine_path).exists() and not force:
        raise FsacError(f"{engine_path} exists; pass --force to overwrite it")


def build_engine(model_path: str | os.PathLike, engine_path: str | os.PathLike, precision: str = "fp16",
                 max_batch: int = 8, workspace_mb: int = 1024, force: bool = False,
                 verbose: bool = False) -> EngineReport:
    """Verify an fsac model file and compile it into a TensorRT engine + JSON sidecar."""
    check_engine_options(engine_path, precision, max_batch, force)
    engine_path = Path(engine_path)
    data, info = load_model_file(model_path)
    _check_graph_for_tensorrt(info.metadata, precision, str(model_path))
    trt = import_tensorrt()
    device = cuda_device_name()

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    # TensorRT 10 networks are always explicit-batch (the flag is deprecated there).
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise FsacError(f"{model_path}: TensorRT's ONNX parser rejected the graph: {errors[:600]}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision in ("fp16", "int8"):
        if not builder.platform_has_fast_fp16:
            raise FsacError(f"{device} has no fast FP16; build with --precision fp32")
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        # Explicit quantization: the scales come from the Q/DQ nodes of the graph, so no
        # calibrator. FP16 stays on for the layers between Q/DQ pairs (LayerNorm, softmax).
        config.set_flag(trt.BuilderFlag.INT8)
    s = info.image_size
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, s, s, 3), (1, s, s, 3), (max_batch, s, s, 3))
    config.add_optimization_profile(profile)

    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t0
    if serialized is None:
        raise FsacError(f"TensorRT failed to build an engine from {model_path} (run with --verbose for the log)")
    from fsac.io import atomic_write_bytes

    blob = bytes(serialized)
    atomic_write_bytes(engine_path, blob)
    trtexec = trtexec_line(str(model_path), str(engine_path), precision, s, max_batch, workspace_mb)
    extra = {
        "source_model": Path(model_path).name,
        "source_model_seal": info.seal,
        "engine_precision": precision,
        "max_batch": max_batch,
        "tensorrt_version": trt.__version__,
        "device": device,
        "build_s": round(build_s, 1),
        "trtexec_equivalent": trtexec,
    }
    sidecar = write_engine_sidecar(engine_path, info.metadata, extra)
    return EngineReport(str(engine_path), str(sidecar), precision, max_batch, build_s, len(blob),
                        trt.__version__, device, trtexec)


def default_engine_path(model_path: str | os.PathLike, precision: str) -> Path:
    p = Path(model_path)
    stem = p.name[: -len(".onnx")] if p.name.endswith(".onnx") else p.name
    return p.with_name(f"{stem}.{precision}.engine")


