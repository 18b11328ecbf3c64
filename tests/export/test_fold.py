"""Constant folding without torch: weight-only nodes become initializers, numbers unchanged."""

from __future__ import annotations

import numpy as np


def _graph(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from fsac.export.external import TensorFile

    rng = np.random.default_rng(0)
    w = rng.standard_normal((300, 64)).astype(np.float32)  # stored (out, in), as torch does
    t = rng.standard_normal((2, 64)).astype(np.float32)
    store = TensorFile(tmp_path / "weights.bin")
    nodes = [
        helper.make_node("Identity", ["w"], ["w_alias"]),
        helper.make_node("Transpose", ["w_alias"], ["wt"], perm=[1, 0]),  # weight-only: folded
        helper.make_node("Constant", [], ["two"], value=helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])),
        helper.make_node("ReduceL2", ["t"], ["tn"], axes=[1], keepdims=1),  # normalised text vectors
        helper.make_node("Div", ["t", "tn"], ["t_unit"]),
        helper.make_node("MatMul", ["x", "wt"], ["y"]),  # depends on the input: kept
        helper.make_node("Mul", ["y", "two"], ["y2"]),
        helper.make_node("Gemm", ["x", "t_unit"], ["s"], transB=1),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                          [helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["n", 300]),
                           helper.make_tensor_value_info("s", TensorProto.FLOAT, ["n", 2])],
                          [store.append("w", w), store.append("t", t)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "graph.onnx"))
    return model, w


def test_weight_only_nodes_fold_and_the_outputs_do_not_change(tmp_path):
    import onnx
    import onnxruntime as ort

    from fsac.export.external import TensorFile, tensor_array
    from fsac.export.fold import fold_constants

    model, w = _graph(tmp_path)
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    want = ort.InferenceSession(str(tmp_path / "graph.onnx")).run(None, {"x": x})
    size_before = (tmp_path / "weights.bin").stat().st_size
    counts = fold_constants(model, tmp_path, TensorFile(tmp_path / "folded.bin"))
    assert dict(counts) == {"Identity": 1, "Transpose": 1, "Constant": 1, "ReduceL2": 1, "Div": 1}
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Mul", "Gemm"]
    inits = {t.name: t for t in model.graph.initializer}
    assert set(inits) == {"wt", "two", "t_unit"}  # w and t are used by nobody now: dropped
    assert np.array_equal(tensor_array(inits["wt"], tmp_path), w.T)
    assert (tmp_path / "weights.bin").stat().st_size == size_before  # the source file is never rewritten
    assert (tmp_path / "folded.bin").stat().st_size >= 300 * 64 * 4  # the transposed weight went there, once
    onnx.save(model, str(tmp_path / "folded.onnx"))
    onnx.checker.check_model(str(tmp_path / "folded.onnx"))
    got = ort.InferenceSession(str(tmp_path / "folded.onnx")).run(None, {"x": x})
    for a, b in zip(want, got):
        assert np.allclose(a, b, rtol=1e-6, atol=1e-6)


def test_an_identity_that_is_a_graph_output_is_kept(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from fsac.export.external import TensorFile
    from fsac.export.fold import fold_constants

    g = helper.make_graph([helper.make_node("Identity", ["c"], ["out"])], "g", [],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])],
                          [numpy_helper.from_array(np.ones(2, np.float32), "c")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    fold_constants(model, tmp_path, TensorFile(tmp_path / "f.bin"))
    names = {t.name for t in model.graph.initializer}
    assert "out" in names and not any(n.op_type == "Identity" for n in model.graph.node)
