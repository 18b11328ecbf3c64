"""`fsac quantize --engine nncf`: Intel's NNCF places the quantizers on the ONNX graph; the
result is a sealed fsac INT8 file that OpenVINO and ONNX Runtime both run (tiny model, real
bottle images), and settings NNCF would ignore are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fsac.errors import FsacError

pytest.importorskip("nncf", reason="fsac[nncf] is part of fsac[all]; install it to test --engine nncf")


@pytest.fixture(scope="module")
def nncf_model(exported_model, bottle, tmp_path_factory):
    from fsac.calibration.cli import quantize_command

    out = tmp_path_factory.mktemp("nncf") / "model.nncf.onnx"
    res = quantize_command(exported_model, [bottle / "train" / "good"], [bottle / "test" / "good",
                           bottle / "test" / "contamination"], out=out, num_calib=6, allow_disagreement=True,
                           engine="nncf", quiet=True)
    return out, res


def test_nncf_file_is_a_sealed_encoder_only_qdq_model(nncf_model, exported_model):
    import onnx

    from fsac.modelfile import load_model_file

    path, _ = nncf_model
    _, info = load_model_file(path)
    _, fp = load_model_file(exported_model)
    assert info.precision == "int8" and info.metadata["fsac.source_model_seal"] == fp.seal
    q = json.loads(info.metadata["fsac.quantization"])
    assert q["engine"] == "nncf" and q["model_type"] == "transformer" and q["nncf"]
    assert q["n_calibration_images"] == 6 and q["nodes_excluded"] > 0
    assert q["reduce_range"] is True and q["overflow_fix"] == "enable"  # 7-bit weights on every product
    m = onnx.load(str(path))
    from tests.calibration.test_calib_quantize import int8_weights

    weights = int8_weights(m)
    assert len(weights) >= 4 and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in m.graph.node}
    producer = {o: n for n in m.graph.node for o in n.output}
    assert producer["score"].op_type not in ("DequantizeLinear", "QuantizeLinear")
    for n in m.graph.node:  # the head and the score tail stay float
        if n.op_type == "QuantizeLinear" and n.input[0] in producer:
            assert producer[n.input[0]].name.startswith(("/visual/", "/normalize/")), producer[n.input[0]].name


def test_nncf_file_runs_on_both_runtimes_close_to_fp32(nncf_model, exported_model, bottle):
    pytest.importorskip("openvino")
    from fsac.runtime.backends import load_model
    from fsac.runtime.config import ModelConfig
    from fsac.runner import load_pixels

    path, _ = nncf_model
    out = {}
    for name, file, backend in (("fp32", exported_model, "onnxruntime"), ("ort", path, "onnxruntime"),
                                ("ov", path, "openvino")):
        model = load_model(ModelConfig(path=str(file), threshold=0.5, backend=backend))
        if name == "fp32":
            px = load_pixels(sorted((bottle / "test" / "broken_small").glob("*.png"))[:4], model.info.preprocess)
        out[name] = np.asarray(model.backend.infer(px)["logit"], np.float64)
        if name == "ov":
            assert model.backend.precision == "int8"
        model.backend.close()
    spread = max(np.ptp(out["fp32"]), 1e-6)
    for name in ("ort", "ov"):
        err = np.abs(out[name] - out["fp32"]).max()
        assert 0 < err < 0.5 * spread + 1e-3, (name, err, spread)  # quantized (not fp32), and close to it


@pytest.mark.parametrize("kw,msg", [
    ({"target": "tensorrt"}, "for TensorRT use --engine onnxruntime"),
    ({"method": "entropy"}, "do not apply: method"),
    ({"per_channel": False, "float_outputs": False}, "do not apply: per_channel, float_outputs"),
    ({"op_types": None}, "do not apply: op_types"),
])
def test_nncf_refuses_settings_it_would_ignore(kw, msg):
    from fsac.calibration.quantize import QuantizeSettings

    with pytest.raises(FsacError, match=msg):
        QuantizeSettings(engine="nncf", **kw)
    with pytest.raises(FsacError, match="--engine must be one of onnxruntime, nncf"):
        QuantizeSettings(engine="openvino")
