"""8-bit INT8 weights on CPUs whose int8 dot product saturates: the flags rule is checked
against what ONNX Runtime's own integer kernel computes on the machine the test runs on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fsac.int8_saturation import int8_dot_saturates, saturation_warning, weight_bits


def _matmul_integer(a_value: int, w_value: int, k: int = 64, n: int = 16) -> np.ndarray:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((k, n), w_value, np.int8), "w")  # a weight: prepacked, as in a model
    g = helper.make_graph([helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "dot",
                          [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, k])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, None)], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"a": np.full((1, k), a_value, np.uint8)})[0]


def test_the_cpu_flags_predict_what_onnx_runtime_computes_here():
    """255 x 127, 64 terms: exact is 2072640; a CPU that clamps each pair sum to 2^15 - 1
    gives 32 x 32767 = 1048544. Which one ONNX Runtime returns here is what the flags say."""
    from fsac.peaks import cpu_flags, matrix_flags

    y = _matmul_integer(255, 127)
    exact = 255 * 127 * 64
    assert np.all(y == exact) or np.all(y == 32 * 32767), y[0, :4]
    assert bool(np.all(y != exact)) == int8_dot_saturates(), (y[0, 0], matrix_flags(cpu_flags()))


def test_seven_bit_weights_are_exact_on_every_cpu():
    """The fix: |w| <= 63 keeps each pair sum at most 255 * 63 * 2 = 32130 < 2^15."""
    assert np.all(_matmul_integer(255, 63) == 255 * 63 * 64)
    assert np.all(_matmul_integer(255, -64) == -255 * 64 * 64)


@pytest.mark.parametrize("flags,saturates", [
    (["sse2", "avx2", "fma"], True),  # AVX2 only
    (["sse2", "avx2", "fma", "avx512f", "avx512bw"], True),  # Skylake-SP: AVX-512 without VNNI
    (["sse2", "avx2", "avx_vnni"], False),  # Alder Lake
    (["sse2", "avx2", "avx512f", "avx512_vnni"], False),
    (["sse2", "avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"], False),
    (["fp", "asimd", "asimddp"], False),  # ARM: 32-bit accumulation (sdot/udot)
    ([], False),  # nothing readable: no claim
])
def test_which_cpus_saturate(flags, saturates):
    assert int8_dot_saturates(flags) is saturates


def test_weight_bits_and_the_warning_come_from_the_files_quantization_record():
    eight = {"fsac.quantization": json.dumps({"target": "cpu", "reduce_range": False})}
    seven = {"fsac.quantization": json.dumps({"target": "cpu", "reduce_range": True})}
    assert weight_bits(eight) == 8 and weight_bits(seven) == 7
    assert weight_bits({}) is None and weight_bits({"fsac.quantization": "{not json"}) is None
    avx2 = ["sse2", "avx2", "fma"]
    w = saturation_warning(eight, "m.int8.onnx", on_cpu=True, flags=avx2)
    assert w.startswith("m.int8.onnx: INT8 file with 8-bit weights") and "class avx2" in w and "fsac quantize" in w
    assert saturation_warning(seven, "m", True, avx2) is None
    assert saturation_warning(eight, "m", False, avx2) is None  # a GPU does not saturate
    assert saturation_warning(eight, "m", True, avx2 + ["avx512f", "avx512_vnni"]) is None
    assert saturation_warning({}, "m", True, avx2) is None  # fp32 file
