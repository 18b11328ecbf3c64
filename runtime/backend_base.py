"""What every fsac-run inference backend shares: the Backend protocol, and the checks and
batching that keep a frame from being squeezed into a model built for another size.

A backend takes a uint8 batch (N, S, S, 3) of RGB pixels from `fsac.preprocess.resize_crop`
and returns a dict of float32 arrays of length N keyed by the model file's outputs (score,
logit, sim_normal, sim_anomalous: the contract in `fsac.modelfile`). Backends: ONNX Runtime
(runtime/backends.py), TensorRT engines (runtime/tensorrt_backend.py), OpenVINO
(runtime/openvino_backend.py).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from fsac.errors import FsacError
from fsac.modelfile import INPUT_NAME, ModelInfo

Outputs = dict[str, np.ndarray]  # OUTPUT_NAMES -> (N,) float32


class Backend(Protocol):
    name: str
    max_batch: int  # most frames one `infer` call runs at once (larger batches are split)
    providers: list[str]

    def infer(self, batch: np.ndarray) -> Outputs: ...

    def close(self) -> None: ...


def check_batch(batch: np.ndarray, size: int) -> None:
    if not isinstance(batch, np.ndarray) or batch.dtype != np.uint8 or batch.ndim != 4 \
            or batch.shape[1:] != (size, size, 3) or batch.shape[0] < 1:
        shape = getattr(batch, "shape", None)
        dtype = getattr(batch, "dtype", None)
        raise FsacError(f"model input must be uint8 (N, {size}, {size}, 3), got {shape} {dtype}")


def check_input_dims(dims: list[Any], info: ModelInfo, what: str) -> int | None:
    """Validate an (N, S, S, 3) input shape against the metadata; return the fixed batch or None."""
    size = info.image_size
    if len(dims) != 4:
        raise FsacError(f"{info.source}: {what} input {INPUT_NAME!r} has {len(dims)} dimensions; "
                        f"the fsac contract is uint8 [N, {size}, {size}, 3]")
    fixed = [d if isinstance(d, int) and d > 0 else None for d in dims]
    h, w, c = fixed[1:]
    if (h is not None and h != size) or (w is not None and w != size):
        raise FsacError(
            f"{info.source}: the {what} takes {dims[1]}x{dims[2]} images but its metadata says "
            f"preprocess.image_size={size}; this model was built for a different input size. "
            "Re-export it with fsac so graph and metadata agree")
    if c is not None and c != 3:
        raise FsacError(f"{info.source}: {what} input has {c} channels; the fsac contract is 3 (RGB)")
    return fixed[0]


def split_batch(batch: np.ndarray, max_batch: int, fixed: int | None):
    """Yield (chunk, n_real): chunks of at most max_batch frames; a fixed-batch graph gets
    every chunk padded to its batch size by repeating the last frame."""
    for start in range(0, batch.shape[0], max_batch):
        chunk = batch[start:start + max_batch]
        n = chunk.shape[0]
        if fixed is not None and n < fixed:
            pad = np.repeat(chunk[-1:], fixed - n, axis=0)
            chunk = np.concatenate([chunk, pad], axis=0)
        yield np.ascontiguousarray(chunk), n
