"""Weights as external data beside a small graph, and the self-contained file streamed from them."""

from __future__ import annotations

import numpy as np


def _model(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from fsac.export.external import TensorFile

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 300)).astype(np.float32)
    b = rng.standard_normal(300).astype(np.float32)
    store = TensorFile(tmp_path / "weights.bin")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 300])],
                          [store.append("w", w), numpy_helper.from_array(b, "b")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "graph.onnx"))
    return model, w, b


def test_tensors_are_page_aligned_and_read_back_alone(tmp_path):
    from fsac.export.external import ALIGN, TensorFile, tensor_array

    store = TensorFile(tmp_path / "t.bin")
    a = np.arange(7, dtype=np.float32)
    c = np.arange(12, dtype=np.int64).reshape(3, 4)
    ta, tc = store.append("a", a), store.append("c", c)
    offsets = [int({e.key: e.value for e in t.external_data}["offset"]) for t in (ta, tc)]
    assert offsets == [0, ALIGN]
    assert np.array_equal(tensor_array(tc, tmp_path), c) and tensor_array(tc, tmp_path).dtype == np.int64
    assert np.array_equal(tensor_array(ta, tmp_path), a)


def test_inline_model_parts_is_the_same_model_self_contained(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from fsac.export.external import inline_model_parts

    model, w, b = _model(tmp_path)
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    want = ort.InferenceSession(str(tmp_path / "graph.onnx")).run(None, {"x": x})[0]  # external data
    size, chunks = inline_model_parts(model, tmp_path)
    data = b"".join(chunks)
    assert len(data) == size
    inlined = onnx.load_from_string(data)
    inits = {t.name: t for t in inlined.graph.initializer}
    assert not any(t.external_data for t in inits.values())
    assert np.array_equal(numpy_helper.to_array(inits["w"]), w) and np.array_equal(numpy_helper.to_array(inits["b"]), b)
    got = ort.InferenceSession(data).run(None, {"x": x})[0]
    assert np.array_equal(got, want) and np.allclose(got, x @ w + b, atol=1e-5)
    assert [n.op_type for n in inlined.graph.node] == ["MatMul", "Add"] and inlined.opset_import[0].version == 17


def test_a_cut_short_weights_file_is_a_clear_error(tmp_path):
    import pytest

    from fsac.errors import FsacError
    from fsac.export.external import inline_model_parts

    model, _, _ = _model(tmp_path)
    with open(tmp_path / "weights.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(FsacError, match="weights.bin: tensor 'w' is cut short"):
        b"".join(inline_model_parts(model, tmp_path)[1])
