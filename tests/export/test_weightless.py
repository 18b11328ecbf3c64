"""Weights detached while an optimiser runs come back bit for bit; a renamed weight is an error."""

from __future__ import annotations

import numpy as np
import pytest

from fsac.errors import FsacError


def _graph():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 512)).astype(np.float32)  # 128 KiB: detached
    unused = rng.standard_normal((128, 128)).astype(np.float32)  # 64 KiB, used by nothing
    b = np.arange(4, dtype=np.float32)  # small: stays an initializer
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 512])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.resize(b, 512), "b"),
                           numpy_helper.from_array(unused, "unused")])
    return onnx.helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), w


def test_detach_then_attach_restores_the_weights():
    from onnx import numpy_helper

    from fsac.export.weightless import attach_weights, detach_weights

    model, w = _graph()
    stash = detach_weights(model)
    assert set(stash) == {"w", "unused"}
    assert [i.name for i in model.graph.input] == ["x", "w", "unused"]
    assert {t.name for t in model.graph.initializer} == {"b"} and model.ByteSize() < 8192
    del model.graph.node[1].input[:]  # what an optimiser may do: the Add now reads y and a new b
    model.graph.node[1].input.extend(["y", "b"])
    attach_weights(model, stash, ("x",))
    assert [i.name for i in model.graph.input] == ["x"] and not stash
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert set(inits) == {"b", "w"}  # "unused" is dropped with its input
    assert np.array_equal(inits["w"], w)


def test_a_renamed_weight_input_is_refused():
    from fsac.export.weightless import attach_weights, detach_weights

    model, _ = _graph()
    stash = detach_weights(model)
    model.graph.input[1].name = "w_renamed"
    model.graph.node[0].input[1] = "w_renamed"
    with pytest.raises(FsacError, match="changed the graph's inputs"):
        attach_weights(model, stash, ("x",))


def test_slim_keeps_the_numbers_of_the_tiny_export(tiny_export):
    import onnx
    import onnxruntime as ort

    from fsac.export.optimize import optimize_graph
    from fsac.modelfile import load_model_file

    data, info = load_model_file(tiny_export[0])
    slimmed = optimize_graph(onnx.load_from_string(data), "slim")
    x = np.random.default_rng(1).integers(0, 255, (2, info.image_size, info.image_size, 3), dtype=np.uint8)
    a = ort.InferenceSession(data).run(None, {"image": x})
    b = ort.InferenceSession(slimmed.SerializeToString()).run(None, {"image": x})
    assert [i.name for i in slimmed.graph.input] == ["image"]
    for u, v in zip(a, b):
        assert np.allclose(u, v, atol=1e-5)
