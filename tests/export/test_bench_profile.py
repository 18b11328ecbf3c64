"""fsac.export.bench_profile: kernel times by op, the integer products' measured rate, the ceiling."""

from __future__ import annotations

import numpy as np
import pytest

from fsac.export.bench_profile import OpProfile, product_ops, profile_session, summarize_profile


def test_product_ops_from_shapes():
    # The profiler records activations, not constant weights: the encoder's qkv product at
    # batch 1 as it appears there, A (1, 226, 896) and scales, output (1, 226, 2688).
    assert product_ops("MatMulIntegerToFloat", [[1, 226, 896], [], [2688], [], [2688]], [1, 226, 2688]) == \
        2.0 * 226 * 896 * 2688
    assert product_ops("QLinearMatMul", [[4, 8], [], [], [], [], []], [4, 3]) == 2.0 * 4 * 8 * 3
    # convolution: output elements x C/group x kh x kw, when the weight's shape was recorded
    assert product_ops("QLinearConv", [[1, 3, 240, 240], [], [], [896, 3, 16, 16]], [1, 896, 15, 15]) == \
        2.0 * 896 * 15 * 15 * 3 * 16 * 16
    assert product_ops("QLinearConv", [[1, 3, 240, 240], [], []], [1, 896, 15, 15]) is None
    assert product_ops("MatMulInteger", [[4, 8]], [5, 3]) is None  # rows differ: not a shape it reads
    assert product_ops("MatMulInteger", [[4, 8]], None) is None
    assert product_ops("MatMul", [[4, 8]], [4, 3]) is None  # float: not an integer product


def _event(op, ts, dur, a=None, out=None):
    args = {"op_name": op}
    if a is not None:
        args["input_type_shape"] = [{"uint8": a}, {"float": []}]
        args["output_type_shape"] = [{"float": out}]
    return {"cat": "Node", "name": f"{op}_x_kernel_time", "ts": ts, "dur": dur, "args": args}


def test_summarize_profile_keeps_the_last_runs_and_averages_per_run():
    ev = [{"name": "model_run", "cat": "Session", "ts": 0, "dur": 100},
          _event("MatMulIntegerToFloat", 1, 9999, [2, 4], [2, 5]),  # the warm-up run: left out
          {"name": "model_run", "cat": "Session", "ts": 1000, "dur": 100},
          _event("MatMulIntegerToFloat", 1001, 300, [2, 4], [2, 5]), _event("Softmax", 1002, 100),
          {"name": "model_run", "cat": "Session", "ts": 2000, "dur": 100},
          _event("MatMulIntegerToFloat", 2001, 500, [2, 4], [2, 5]), _event("Softmax", 2002, 300)]
    p = summarize_profile(ev, runs=2)
    assert p.by_op == {"MatMulIntegerToFloat": pytest.approx(0.4), "Softmax": pytest.approx(0.2)}
    assert p.calls == {"MatMulIntegerToFloat": 1, "Softmax": 1}
    assert p.kernel_ms == pytest.approx(0.6) and p.int8_product_ms == pytest.approx(0.4)
    assert p.other_ms == pytest.approx(0.2) and p.unsized_products == 0
    assert p.int8_product_gop == pytest.approx(2 * 2 * 4 * 5 / 1e9)
    # a product whose shapes were not recorded: its time counts with the other ops (unimproved
    # in the ceiling), and it is counted
    ev += [_event("MatMulIntegerToFloat", 1003, 100), _event("MatMulIntegerToFloat", 2003, 100)]
    q = summarize_profile(ev, runs=2)
    assert q.unsized_products == 1 and q.int8_product_ms == pytest.approx(0.4)
    assert q.other_ms == pytest.approx(0.3) and q.int8_product_gop == pytest.approx(p.int8_product_gop)
    # nothing sized at all: no rate, no ceiling
    r = summarize_profile([e for e in ev if "input_type_shape" not in e.get("args", {})], runs=2)
    assert r.int8_product_gop is None and r.int8_product_gops() is None and r.ceiling(10.0, 100.0) is None
    with pytest.raises(ValueError, match="3 runs"):
        summarize_profile(ev, runs=4)


def test_ceiling_is_amdahl_on_the_measured_parts():
    p = OpProfile(runs=1, kernel_ms=194.5, int8_product_ms=153.1, int8_product_gop=52.26)
    # the figures of an AVX2 EPYC: products at a 355 GOP/s peak would take 147.2 ms, the rest 41.4
    assert p.int8_product_gops() == pytest.approx(52.26 / 0.1531)
    assert p.ceiling(340.1, 355.0) == pytest.approx(340.1 / (1e3 * 52.26 / 355.0 + 41.4))
    assert p.ceiling(340.1, None) is None
    # a peak measured under the products' own rate (341 GOP/s here) was measured low: the
    # ceiling is never under what the products already ran at
    assert p.ceiling(340.1, 200.0) == pytest.approx(340.1 / 194.5)


def _qdq_matmul_model(m: int, k: int, n: int) -> bytes:
    """float x -> QuantizeLinear -> DequantizeLinear -> MatMul(DQ(int8 weight)) -> Softmax: what
    `fsac quantize` writes, which ONNX Runtime runs as MatMulIntegerToFloat."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.integers(-63, 63, (k, n), dtype=np.int8), "w"),
            numpy_helper.from_array(np.full(n, 0.01, np.float32), "ws"),
            numpy_helper.from_array(np.zeros(n, np.int8), "wz"),
            numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
            numpy_helper.from_array(np.array(128, np.uint8), "xz")]
    nodes = [helper.make_node("QuantizeLinear", ["image", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["y"]),
             helper.make_node("Softmax", ["y"], ["p"], axis=-1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, m, k])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, m, n])], initializer=init)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_profile_session_times_a_real_quantized_product():
    m, k, n = 64, 128, 256
    x = np.random.default_rng(1).standard_normal((1, m, k)).astype(np.float32)
    p = profile_session(_qdq_matmul_model(m, k, n), x, threads=1, runs=3, warmup=1)
    assert p.runs == 3
    assert p.calls.get("MatMulIntegerToFloat") == 1 and p.calls.get("Softmax") == 1
    assert p.int8_product_gop == pytest.approx(2 * m * k * n / 1e9)  # from the shapes the profiler recorded
    assert 0 < p.int8_product_ms < p.kernel_ms and p.other_ms > 0
    assert p.int8_product_gops() == pytest.approx(p.int8_product_gop / (p.int8_product_ms / 1e3))
    d = p.to_dict()
    assert d["other_ms"] == pytest.approx(p.other_ms) and d["by_op"] == p.by_op
    assert OpProfile.from_dict(d) == p  # what bench.json holds reads back (derived figures recomputed)
