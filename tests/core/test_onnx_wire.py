"""fsac/onnx_wire.py against onnx's own protobuf encoder: what the torch-free core reads and
writes byte by byte must be what onnx writes and reads."""

from __future__ import annotations

import io

import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from fsac.errors import FsacError  # noqa: E402
from fsac.onnx_wire import (encode_metadata_entry, encode_varint, field_spans, read_metadata_bytes,  # noqa: E402
                            scan_metadata, varint)


def _model(meta: dict[str, str]) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    m = helper.make_model(graph)
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    return m.SerializeToString()


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 2**31, 2**63 - 1])
def test_varints_round_trip(n):
    data = encode_varint(n)
    assert varint(data, 0) == (n, len(data))


def test_a_truncated_varint_is_an_error_not_a_short_read():
    with pytest.raises(ValueError, match="truncated"):
        varint(encode_varint(300)[:1], 0)


def test_metadata_read_from_bytes_and_from_a_file_is_what_onnx_wrote():
    meta = {"fsac.object": "bottle", "fsac.threshold": "0.5", "ünïcode": "✓" * 200}
    data = _model(meta)
    assert read_metadata_bytes(data) == meta
    assert scan_metadata(io.BytesIO(data), len(data), "m.onnx") == meta


def test_field_spans_cover_the_message_exactly():
    data = _model({"a": "b"})
    spans = list(field_spans(data))
    assert b"".join(data[s:e] for _, s, e in spans) == data
    assert 14 in {num for num, _, _ in spans}  # metadata_props


def test_an_encoded_entry_is_read_back_by_onnx():
    data = _model({}) + encode_metadata_entry("fsac.seal", b"0" * 64) + encode_metadata_entry("k", "v")
    m = onnx.load_from_string(data)
    assert {p.key: p.value for p in m.metadata_props} == {"fsac.seal": "0" * 64, "k": "v"}


def test_a_repeated_key_is_refused_in_both_readers():
    data = _model({}) + encode_metadata_entry("k", "1") + encode_metadata_entry("k", "2")
    with pytest.raises(FsacError, match="more than once"):
        read_metadata_bytes(data, "m.onnx")
    with pytest.raises(FsacError, match="more than once"):
        scan_metadata(io.BytesIO(data), len(data), "m.onnx")
