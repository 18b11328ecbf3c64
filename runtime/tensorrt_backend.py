"""model.backend: tensorrt: a serialized TensorRT engine (built on the target device by
`fsac engine`), run through TensorRT's named-tensor API with the CUDA Python bindings.
Nothing here is imported unless that backend is chosen."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from fsac.errors import FsacError
from fsac.modelfile import INPUT_NAME, OUTPUT_NAMES, ModelInfo

from .backend_base import Outputs, check_batch, check_input_dims, split_batch


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6 / cuda-bindings
        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart  # older cuda-python
        return cudart
    except ImportError:
        raise FsacError("model.backend=tensorrt needs the CUDA Python bindings (pip install cuda-python; "
                        "JetPack ships them)") from None


class TensorRTBackend:
    """A serialized TensorRT engine run through the TensorRT >= 8.5 named-tensor API.

    Device buffers are allocated once for `max_batch` frames; each call copies the batch in,
    runs `execute_async_v3` on a private stream and copies the three outputs back.
    """

    name = "tensorrt"

    def __init__(self, data: bytes, info: ModelInfo, *, batch_size: int = 4) -> None:
        try:
            import tensorrt as trt
        except ImportError:
            raise FsacError(
                f"{info.source}: model.backend=tensorrt but the tensorrt Python package is not installed "
                "(JetPack provides it; elsewhere pip install 'fsac[tensorrt]'), or serve the .onnx model "
                "file with model.backend=onnxruntime") from None
        cudart = _import_cudart()
        self._cudart = cudart
        self.info = info
        self.providers = ["TensorRT " + getattr(trt, "__version__", "?")]
        self._buffers: dict[str, int] = {}
        self._stream = None
        err, count = cudart.cudaGetDeviceCount()
        if self._failed(err) or not count:
            raise FsacError(f"{info.source}: model.backend=tensorrt but no CUDA GPU is visible "
                            f"({self._error_text(err)})")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise FsacError(f"{info.source}: TensorRT cannot deserialize this engine; engines only run on the "
                            "TensorRT version and GPU they were built with. Rebuild it on this device")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        missing = [n for n in (INPUT_NAME, *OUTPUT_NAMES) if n not in names]
        if missing:
            raise FsacError(f"{info.source}: engine lacks tensors {missing} (has {names}); not an fsac export")
        if self.engine.get_tensor_mode(INPUT_NAME) != trt.TensorIOMode.INPUT:
            raise FsacError(f"{info.source}: engine tensor {INPUT_NAME!r} is not an input")
        in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(INPUT_NAME)))
        if in_dtype != np.uint8:
            raise FsacError(f"{info.source}: engine input is {in_dtype}; the fsac contract is uint8")
        dims = list(self.engine.get_tensor_shape(INPUT_NAME))
        self.fixed_batch = check_input_dims(dims, info, "engine")
        if self.fixed_batch is None:
            # Dynamic batch: the optimization profile says how large a batch may be.
            _, _, max_shape = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)
            self.max_batch = max(1, min(batch_size, int(max_shape[0])))
        else:
            self.max_batch = min(batch_size, self.fixed_batch)
        self._alloc_batch = self.fixed_batch or self.max_batch
        self._out_dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in OUTPUT_NAMES}
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise FsacError(f"{info.source}: TensorRT could not create an execution context (out of GPU memory?)")
        size = info.image_size
        self._in_bytes = self._alloc_batch * size * size * 3
        self._alloc(INPUT_NAME, self._in_bytes)
        for n in OUTPUT_NAMES:
            self._alloc(n, self._alloc_batch * self._out_dtypes[n].itemsize)
        err, self._stream = cudart.cudaStreamCreate()
        self._check(err, "cudaStreamCreate")
        for n, ptr in self._buffers.items():
            self.context.set_tensor_address(n, int(ptr))
        self._lock = threading.Lock()

    # cuda-python returns (error, *values) tuples instead of raising.
    def _failed(self, err: Any) -> bool:
        return err != self._cudart.cudaError_t.cudaSuccess

    def _error_text(self, err: Any) -> str:
        try:
            return self._cudart.cudaGetErrorString(err)[1].decode()
        except Exception:
            return str(err)

    def _check(self, err: Any, what: str) -> None:
        if self._failed(err):
            raise FsacError(f"{self.info.source}: CUDA {what} failed: {self._error_text(err)}")

    def _alloc(self, name: str, nbytes: int) -> None:
        err, ptr = self._cudart.cudaMalloc(nbytes)
        self._check(err, f"cudaMalloc({nbytes}) for {name}")
        self._buffers[name] = ptr

    def infer(self, batch: np.ndarray) -> Outputs:
        check_batch(batch, self.info.image_size)
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        parts: list[list[np.ndarray]] = [[] for _ in OUTPUT_NAMES]
        with self._lock:  # one set of device buffers
            for chunk, n in split_batch(batch, self.max_batch, self.fixed_batch):
                rows = chunk.shape[0]
                if self.fixed_batch is None:
                    if not self.context.set_input_shape(INPUT_NAME, tuple(chunk.shape)):
                        raise FsacError(f"{self.info.source}: engine refused input shape {chunk.shape}")
                (err,) = cudart.cudaMemcpyAsync(self._buffers[INPUT_NAME], chunk.ctypes.data, chunk.nbytes,
                                                h2d, self._stream)
                self._check(err, "copy to device")
                if not self.context.execute_async_v3(int(self._stream)):
                    raise FsacError(f"{self.info.source}: TensorRT execution failed")
                host = {}
                for name in OUTPUT_NAMES:
                    out = np.empty(rows, dtype=self._out_dtypes[name])
                    (err,) = cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name], out.nbytes, d2h,
                                                    self._stream)
                    self._check(err, "copy from device")
                    host[name] = out
                (err,) = cudart.cudaStreamSynchronize(self._stream)
                self._check(err, "stream synchronize")
                for k, name in enumerate(OUTPUT_NAMES):
                    parts[k].append(host[name][:n].astype(np.float32))
        return {name: np.concatenate(p) for name, p in zip(OUTPUT_NAMES, parts)}

    def close(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for ptr in self._buffers.values():
            cudart.cudaFree(ptr)
        self._buffers = {}
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:  # buffers of a model replaced by SIGHUP
        try:
            self.close()
        except Exception:
            pass
