"""OpenVINO backend for fsac-run: the runtime Intel ships for its CPUs (and GPUs).

It reads the same sealed ONNX model file as the ONNX Runtime backend, after its seal has
been verified, through the same open descriptor (/proc/self/fd/N) or the verified bytes, so
no unverified byte reaches the compiler. Torch-free, like everything under `runtime/`.

Precision (`model.openvino.precision`):

  f32   INFERENCE_PRECISION_HINT f32: the fp32 reference, bit-close to ONNX Runtime fp32
  bf16  INFERENCE_PRECISION_HINT bf16: matrix multiplies on AVX-512 BF16 / AMX-BF16 units;
        refused on a CPU without bf16 (OpenVINO would silently fall back to f32, and the
        operator would believe a figure that is not running)
  int8  the file must be an INT8 QDQ model (`fsac quantize`): OpenVINO's low-precision
        transformations turn its QuantizeLinear/DequantizeLinear pairs into int8 kernels
        (VNNI / AMX-INT8); the parts left in float run at f32
  int8_bf16  the same INT8 QDQ file, with the parts left in float run at bf16 (what OpenVINO
        itself does on an AMX CPU): measured on the full ViT-B-16-plus-240 at batch 1 on an
        AMX Xeon, 39 -> 33 ms; further from fp32 than int8 (bf16 LayerNorm and softmax), so
        it is chosen only by name or by `model.backend: auto` after its agreement check;
        refused on a CPU without bf16
  auto  bf16 where the device supports it, else f32 (int8 when the file is QDQ)
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from fsac.errors import FsacError
from fsac.modelfile import INPUT_NAME, OUTPUT_NAMES, ModelInfo

from .backend_base import check_batch, check_input_dims

log = logging.getLogger("fsac.runtime")

PRECISIONS = ("auto", "f32", "bf16", "int8", "int8_bf16")
# INFERENCE_PRECISION_HINT of each precision on the CPU: the precision of what is not int8.
# int8 keeps the float parts (LayerNorm, softmax, the head) at the reference precision.
FLOAT_HINT = {"f32": "f32", "bf16": "bf16", "int8": "f32", "int8_bf16": "bf16"}
DEVICES = ("CPU", "GPU", "AUTO")


def import_openvino():
    try:
        import openvino as ov
    except ImportError:
        raise FsacError("model.backend=openvino: the openvino package is not installed "
                        "(pip install 'fsac[openvino]')") from None
    return ov


def device_capabilities(core: Any, device: str) -> list[str]:
    """OPTIMIZATION_CAPABILITIES of a device ('BF16', 'INT8', 'FP32', ...); [] if unknown."""
    target = "CPU" if device == "AUTO" else device.split(".")[0]
    try:
        return [str(c) for c in core.get_property(target, "OPTIMIZATION_CAPABILITIES")]
    except Exception:  # AUTO / a missing device: nothing to report
        return []


def is_qdq_model(info: ModelInfo) -> bool:
    """Whether the model file is an INT8 QDQ graph (`fsac quantize` records fsac.precision)."""
    return str(info.precision or "fp32").lower() in ("int8", "int8-qdq", "qdq")


def resolve_precision(requested: str, caps: list[str], info: ModelInfo, device: str) -> str:
    """The precision to compile with, or a one-line error naming the setting."""
    req = requested.lower()
    if req not in PRECISIONS:
        raise FsacError(f"model.openvino.precision: {requested!r} is not one of {', '.join(PRECISIONS)}")
    qdq = is_qdq_model(info)
    if req == "auto":
        if qdq:
            return "int8"
        return "bf16" if "BF16" in caps else "f32"
    if req in ("int8", "int8_bf16") and not qdq:
        raise FsacError(f"{info.source}: model.openvino.precision={req} needs an INT8 QDQ model file "
                        "(`fsac quantize`); this file is fp32 - use f32 or bf16, or serve the quantized file")
    if req in ("bf16", "int8_bf16") and caps and "BF16" not in caps:
        raise FsacError(f"model.openvino.precision={req}: OpenVINO device {device} has no bf16 support here "
                        f"(capabilities: {', '.join(caps)}); use {'f32' if req == 'bf16' else 'int8'}")
    return req


class OpenVinoBackend:
    """A compiled OpenVINO model with a small pool of infer requests.

    `model` is the path of a verified, open descriptor or the verified bytes (see
    `fsac.runtime.backends.load_model`). Batches larger than `max_batch` are split; the
    graph's batch axis is dynamic, so a short batch runs as it is.
    """

    name = "openvino"

    def __init__(self, model: bytes | str, info: ModelInfo, *, precision: str = "auto", device: str = "CPU",
                 threads: int = 0, streams: int | str = 0, batch_size: int = 4, cache_dir: str = "") -> None:
        ov = import_openvino()
        self.info = info
        if device.split(".")[0].upper() not in DEVICES:
            raise FsacError(f"model.openvino.device: {device!r} is not one of {', '.join(DEVICES)} "
                            "(GPU.N picks one Intel GPU)")
        core = ov.Core()
        available = list(core.available_devices)
        dev = device.upper() if device.upper() in DEVICES else device
        if dev != "AUTO" and not any(a == dev or a.startswith(dev + ".") or dev.startswith(a) for a in available):
            raise FsacError(f"model.openvino.device: {device} is not available here (OpenVINO sees "
                            f"{', '.join(available) or 'no device'})")
        caps = device_capabilities(core, dev)
        self.precision = resolve_precision(precision, caps, info, dev)
        try:
            if isinstance(model, (bytes, bytearray, memoryview)):
                fe = ov.frontend.FrontEndManager().load_by_framework("onnx")
                import io

                ov_model = fe.convert(fe.load(io.BytesIO(bytes(model))))
            else:
                ov_model = core.read_model(model)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses with long texts
            raise FsacError(f"{info.source}: OpenVINO cannot read the model ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]})") from None
        self._check_io(ov_model)
        # streams: "throughput" = OpenVINO's throughput hint with its own number of streams;
        # "auto" reaching here unresolved (no source to decide from, runtime/config.py) = one.
        if streams == "auto":
            streams = 1
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY" if streams in (0, 1) else "THROUGHPUT"}
        # int8 QDQ: the quantized MatMuls run int8 either way; the hint sets the rest.
        hint = FLOAT_HINT[self.precision]
        if dev != "GPU" and not dev.startswith("GPU"):
            config["INFERENCE_PRECISION_HINT"] = hint
        elif self.precision == "f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"  # Intel GPUs default to f16
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if isinstance(streams, int) and streams:
            config["NUM_STREAMS"] = int(streams)
        if cache_dir:
            config["CACHE_DIR"] = cache_dir
        try:
            self.compiled = core.compile_model(ov_model, dev, config)
        except Exception as e:
            raise FsacError(f"{info.source}: OpenVINO cannot compile the model for {dev} "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        del ov_model
        self.max_batch = batch_size
        self.fixed_batch = None
        self.device = dev
        self.streams = self._prop("NUM_STREAMS")
        self.threads = self._prop("INFERENCE_NUM_THREADS")
        self.providers = [f"OpenVINO {ov.__version__.split('-')[0]} {dev} {self.precision}"]
        self._requests: list[Any] = []
        self._lock = threading.Lock()

    def _prop(self, key: str) -> Any:
        try:
            return self.compiled.get_property(key)
        except Exception:
            return None

    def _check_io(self, ov_model: Any) -> None:
        src = self.info.source
        inputs = {n: i for i in ov_model.inputs for n in i.get_names()}
        if INPUT_NAME not in inputs:
            raise FsacError(f"{src}: model has no input {INPUT_NAME!r}; not an fsac export")
        inp = inputs[INPUT_NAME]
        if inp.get_element_type().get_type_name() != "u8":
            raise FsacError(f"{src}: input {INPUT_NAME!r} is {inp.get_element_type()}; the fsac contract is uint8")
        pshape = inp.get_partial_shape()
        dims = [d.get_length() if d.is_static else None for d in pshape]
        fixed = check_input_dims(dims, self.info, "graph")
        if fixed is not None:
            raise FsacError(f"{src}: the OpenVINO backend needs a dynamic batch axis; this graph is fixed at {fixed}")
        names = {n for o in ov_model.outputs for n in o.get_names()}
        missing = [n for n in OUTPUT_NAMES if n not in names]
        if missing:
            raise FsacError(f"{src}: model lacks outputs {missing} (has {sorted(names)}); not an fsac export")

    def _request(self):
        with self._lock:
            if self._requests:
                return self._requests.pop()
        return self.compiled.create_infer_request()

    def _release(self, req) -> None:
        with self._lock:
            self._requests.append(req)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Scores of a batch. With NUM_STREAMS > 1 each chunk of up to max_batch frames is split
        into one part per stream, run at once (each stream has its own threads): measured
        23.5-24.2 instead of 21.0 frames/s for batches of 4 of ViT-B-16-plus-240 bf16 on 2 cores
        (2 streams x 2 frames against 1 stream x 4). A single frame then runs on one stream's
        threads only, so the latency hint (streams 0 or 1) stays the default for trigger mode."""
        check_batch(batch, self.info.image_size)
        parts: dict[str, list[np.ndarray]] = {n: [] for n in OUTPUT_NAMES}
        ways = max(1, int(self.streams or 1))
        for start in range(0, batch.shape[0], self.max_batch):
            chunk = batch[start:start + self.max_batch]
            pieces = [p for p in np.array_split(chunk, min(ways, chunk.shape[0])) if p.shape[0]]
            reqs = [self._request() for _ in pieces]
            try:
                for req, piece in zip(reqs, pieces):
                    req.start_async({INPUT_NAME: np.ascontiguousarray(piece)})
                for req in reqs:
                    req.wait()
                for req, piece in zip(reqs, pieces):
                    for name in OUTPUT_NAMES:
                        arr = np.array(req.get_tensor(name).data, dtype=np.float32).reshape(-1)
                        if arr.shape[0] != piece.shape[0]:
                            raise FsacError(f"{self.info.source}: output {name!r} has {arr.shape[0]} values "
                                            f"for {piece.shape[0]} frames")
                        parts[name].append(arr)
            finally:
                for req in reqs:
                    self._release(req)
        return {n: np.concatenate(p) for n, p in parts.items()}

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device, "precision": self.precision,
                "streams": self.streams, "threads": self.threads}

    def close(self) -> None:
        self._requests = []
        self.compiled = None
