"""The export's working model: a small graph file whose weights live beside it as ONNX external data.

`fsac export` never holds the weights twice. The tracing process (`fsac.export.trace`, the
only one with torch) writes each weight once, to `weights.bin`, and the graph refers to it
(ONNX external data: location, offset, length). The torch-free half (`fsac.export.finish`)
folds, checks, optimises and times that graph with every session opened from the file path,
and `inline_model_parts` streams the final self-contained model, one tensor at a time:

    f = TensorFile(workdir / "weights.bin")
    t = f.append("visual.conv1.weight", array)        # -> TensorProto pointing into the file
    array = tensor_array(t, workdir)                  # reads that tensor's bytes, nothing else
    size, parts = inline_model_parts(model, workdir)  # serialized ModelProto, weights inlined

Reads use plain file reads, not mmap: a mapped page counts in the process's resident memory
for as long as it stays mapped, a read buffer only until it is freed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from fsac.errors import FsacError
from fsac.onnx_wire import encode_varint

ALIGN = 4096  # tensor offsets: page-aligned, so a runtime may map them
_GRAPH_FIELD = 7  # ModelProto.graph
_INITIALIZER_FIELD = 5  # GraphProto.initializer
_RAW_DATA_FIELD = 9  # TensorProto.raw_data


def _len_field(number: int, length: int) -> bytes:
    """Tag and length prefix of a length-delimited protobuf field."""
    return encode_varint((number << 3) | 2) + encode_varint(length)


class TensorFile:
    """Appends tensors to one external-data file; each `append` returns the TensorProto that
    refers to it (its location is the file's name, relative to the graph's folder)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.touch()

    def append(self, name: str, array: np.ndarray):
        from onnx import TensorProto, helper

        array = np.ascontiguousarray(array)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        with open(self.path, "ab") as f:
            end = f.seek(0, os.SEEK_END)
            offset = -(-end // ALIGN) * ALIGN
            f.write(b"\0" * (offset - end))
            f.write(memoryview(array).cast("B") if array.size else b"")
        t = TensorProto()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        t.dims.extend(array.shape)
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(offset)), ("length", str(array.nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        return t


def is_external(t) -> bool:
    from onnx import TensorProto

    return t.data_location == TensorProto.EXTERNAL


def _external(t) -> tuple[str, int, int]:
    info = {e.key: e.value for e in t.external_data}
    try:
        return info["location"], int(info.get("offset", 0)), int(info["length"])
    except (KeyError, ValueError):
        raise FsacError(f"tensor {t.name!r}: external data without location and length") from None


def tensor_bytes(t, base_dir: str | os.PathLike) -> bytes:
    """The raw little-endian bytes of an external tensor, read from its file."""
    location, offset, length = _external(t)
    path = Path(base_dir) / location
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise FsacError(f"{path}: tensor {t.name!r} is cut short ({len(data)} of {length} bytes)")
    return data


def tensor_array(t, base_dir: str | os.PathLike) -> np.ndarray:
    """A TensorProto's values (external or inline) as a numpy array."""
    from onnx import helper, numpy_helper

    if not is_external(t):
        return numpy_helper.to_array(t)
    dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
    return np.frombuffer(tensor_bytes(t, base_dir), dtype=dtype).reshape(tuple(t.dims))


def _is_repeated(fd) -> bool:
    is_repeated = getattr(fd, "is_repeated", None)  # protobuf >= 5 (FieldDescriptor.label is gone in 7)
    return bool(is_repeated) if is_repeated is not None else fd.label == fd.LABEL_REPEATED


def _copy_except(message, skip: str):
    """A new message of the same type with every set field of `message` but `skip`."""
    copy = type(message)()
    for fd, value in message.ListFields():
        if fd.name == skip:
            continue
        if _is_repeated(fd):
            getattr(copy, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(copy, fd.name).CopyFrom(value)
        else:
            setattr(copy, fd.name, value)
    return copy


def _inline_header(t) -> tuple[bytes, int]:
    """An external tensor's serialized fields other than its data, and the data's length."""
    from onnx import TensorProto

    _, _, length = _external(t)
    head = TensorProto()
    head.CopyFrom(t)
    head.ClearField("external_data")
    head.ClearField("data_location")
    return head.SerializeToString(), length


def inline_model_parts(model, base_dir: str | os.PathLike) -> tuple[int, Iterator[bytes]]:
    """A ModelProto whose initializers may be external -> (byte size, chunks) of the same
    model serialized with every weight inline (one self-contained file). Only one tensor's
    data is in memory at a time. Protobuf parsers accept fields in any order, so the graph's
    other fields come first and each initializer is written as header + raw_data."""
    # Copies of everything but the initializers (copying those would copy inline weights).
    graph_rest, rest = _copy_except(model.graph, "initializer"), _copy_except(model, "graph")
    rest_bytes, graph_bytes = rest.SerializeToString(), graph_rest.SerializeToString()

    plan = []  # (prefix bytes, tensor, external?)
    graph_size = len(graph_bytes)
    for t in model.graph.initializer:
        if is_external(t):
            head, length = _inline_header(t)
            body = head + _len_field(_RAW_DATA_FIELD, length)
            size = len(body) + length
            plan.append((_len_field(_INITIALIZER_FIELD, size) + body, t, True))
        else:
            size = t.ByteSize()
            plan.append((_len_field(_INITIALIZER_FIELD, size), t, False))
        graph_size += len(_len_field(_INITIALIZER_FIELD, size)) + size
    graph_head = _len_field(_GRAPH_FIELD, graph_size)
    total = len(rest_bytes) + len(graph_head) + graph_size
    if total >= 2**31 - 1:
        raise FsacError("the model is larger than 2 GB, which one ONNX file cannot hold")

    def chunks() -> Iterator[bytes]:
        yield rest_bytes
        yield graph_head
        yield graph_bytes
        for prefix, t, external in plan:
            yield prefix
            yield tensor_bytes(t, base_dir) if external else t.SerializeToString()

    return total, chunks()
