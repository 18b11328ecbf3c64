"""fsac export on the tiny configuration: parity with PyTorch on real bottle images, the
metadata contract, sealing, --force, and the clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fsac.errors import FsacError


def _torch_scores(checkpoint: Path, pixels: np.ndarray) -> dict[str, np.ndarray]:
    from fsac.export.parity import run_torch
    from fsac.train.checkpoint import load_checkpoint

    return run_torch(load_checkpoint(checkpoint, device="cpu", quiet=True).deploy_model(), pixels)


def test_export_parity_on_real_images(tiny_export, tiny_checkpoint, bottle):
    """The export's own check passed, and an independent run of the written file through
    ONNX Runtime on other real images (good and defective, batch of 3) matches PyTorch."""
    from fsac.runner import load_pixels, make_session, run_session
    from fsac.modelfile import load_model_file

    path, result = tiny_export
    assert result["parity"]["passed"]
    assert result["parity"]["n_images"] >= 4  # 2 shots + held-out images from the same folder
    # tiny checkpoint: tau = 0.05, so the logit is held to 1e-4 / 0.05 = 2e-3
    assert result["parity_max_abs_diff_logit"] <= 2e-3 and result["parity"]["max_abs_diff_sim"] <= 1e-4
    assert result["parity"]["logit_tolerance"] == pytest.approx(2e-3)
    names = [Path(n).name for n in result["parity"]["images"]]
    assert names[:2] == ["000.png", "001.png"] and len(set(names)) == len(names)

    data, info = load_model_file(path)
    paths = [bottle / "test" / "good" / "000.png", bottle / "test" / "broken_large" / "000.png",
             bottle / "test" / "contamination" / "003.png"]
    pixels = load_pixels(paths, info.preprocess)
    ref = _torch_scores(tiny_checkpoint, pixels)
    got = run_session(make_session(data), pixels, batch_size=3)
    for k, tol in (("score", 1e-4), ("logit", 2e-3), ("sim_normal", 1e-4), ("sim_anomalous", 1e-4)):
        assert got[k].shape == (3,)
        assert np.max(np.abs(got[k] - ref[k])) <= tol, k
    # The graph's logit is the similarity gap over tau, and its score is sigmoid(logit).
    np.testing.assert_allclose(got["logit"], (got["sim_anomalous"] - got["sim_normal"]) / 0.05, atol=1e-4)
    np.testing.assert_allclose(got["score"], 1 / (1 + np.exp(-got["logit"].astype(np.float64))), atol=1e-6)
    # Batch 1 and batch 3 agree (dynamic batch axis).
    single = run_session(make_session(data), pixels, batch_size=1)
    assert np.max(np.abs(single["logit"] - got["logit"])) <= 1e-4


def test_metadata_round_trip(tiny_export, tiny_checkpoint):
    import onnx

    from fsac.modelfile import REQUIRED_KEYS, load_model_file
    from fsac.preprocess import PreprocessSpec
    from fsac.train.checkpoint import checkpoint_sha256, read_checkpoint_meta

    path, result = tiny_export
    _, info = load_model_file(path)
    _, ck = read_checkpoint_meta(tiny_checkpoint)
    assert info.arch == "ViT-B-16-plus-240-tiny"
    assert info.weights_id == "random" and info.metadata["fsac.weights_random"] == "true"
    assert info.object_name == "bottle"
    assert info.precision == "fp32"
    assert info.threshold is None and info.logit_threshold is None
    assert info.format_version == 2
    assert info.checkpoint_sha256 == checkpoint_sha256(tiny_checkpoint)
    assert info.preprocess == PreprocessSpec.from_dict(ck["preprocess"])
    assert info.seal == result["seal"]
    assert all(k in info.metadata for k in REQUIRED_KEYS)
    assert float(info.metadata["fsac.parity_max_abs_diff_logit"]) == pytest.approx(result["parity_max_abs_diff_logit"])
    assert float(info.metadata["fsac.tau"]) == pytest.approx(0.05)
    assert info.metadata["fsac.threshold_rule"] == "logit >= logit_threshold => defective"
    assert json.loads(info.metadata["fsac.inputs"])[0]["dtype"] == "uint8"
    assert [o["name"] for o in json.loads(info.metadata["fsac.outputs"])] == ["score", "logit", "sim_normal", "sim_anomalous"]
    assert json.loads(info.metadata["fsac.head"])["tau"] == pytest.approx(0.05)
    assert json.loads(info.metadata["fsac.train_images"]) == ck["train_images"]

    # onnx sees the same metadata and the contract's graph signature.
    m = onnx.load(str(path))
    assert {p.key: p.value for p in m.metadata_props} == info.metadata
    (inp,) = m.graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 240, 240, 3]
    assert [o.name for o in m.graph.output] == ["score", "logit", "sim_normal", "sim_anomalous"]
    # TensorRT wants the uint8 input to meet a Cast first.
    first = [n for n in m.graph.node if "image" in n.input]
    assert [n.op_type for n in first] == ["Cast"]


@pytest.mark.parametrize("where", ["weights", "metadata"])
def test_tampered_byte_is_detected(tiny_export, tmp_path, where):
    from fsac.modelfile import load_model_file

    path, _ = tiny_export
    data = bytearray(path.read_bytes())
    if where == "weights":
        i = len(data) // 2
    else:
        i = data.index(b"bottle")  # the fsac.object value
    data[i] ^= 0x01
    bad = tmp_path / "tampered.onnx"
    bad.write_bytes(bytes(data))
    with pytest.raises(FsacError, match="modified after export"):
        load_model_file(bad)


def test_existing_output_needs_force(tiny_export, tiny_checkpoint, tmp_path):
    from fsac.export.cli import export_command
    from fsac.modelfile import load_model_file

    path, _ = tiny_export
    out = tmp_path / "model.onnx"
    shutil.copy(path, out)
    before = out.read_bytes()
    with pytest.raises(FsacError, match="--force"):
        export_command(tiny_checkpoint, out=out, quiet=True, optimize="none")
    assert out.read_bytes() == before
    res = export_command(tiny_checkpoint, out=out, quiet=True, optimize="none", force=True)
    _, info = load_model_file(out)
    assert info.seal == res["seal"]
    assert json.loads(info.metadata["fsac.optimize"])["method"] == "none"
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # atomic write left no debris


def test_check_images_option_and_missing_images(models, bottle, bottle_shots, tmp_path):
    from fsac.export.cli import export_command

    # The checkpoint records only names, no folder: the parity check needs --check-images.
    ck = models.make_checkpoint(tmp_path / "ck", models.TINY_ARCH, bottle_shots, record_folder=False)
    with pytest.raises(FsacError, match="--check-images"):
        export_command(ck, out=tmp_path / "a.onnx", quiet=True, optimize="none")
    assert not (tmp_path / "a.onnx").exists()
    res = export_command(ck, out=tmp_path / "a.onnx", quiet=True, optimize="none",
                         check_images=[bottle / "test" / "broken_small" / "000.png", bottle / "test" / "good"])
    assert res["parity"]["n_images"] == 16  # capped: 1 file + the first 15 of the folder
    assert Path(res["parity"]["images"][0]).name == "000.png"


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    from fsac.export.cli import export_command

    with pytest.raises(FsacError, match="checkpoint not found"):
        export_command(tmp_path / "nope", out=tmp_path / "m.onnx", quiet=True)


def test_parity_gate_fails_with_the_numbers(tiny_export, bottle):
    from fsac.runner import load_pixels, make_session, run_session
    from fsac.export.parity import check_parity
    from fsac.modelfile import load_model_file

    data, info = load_model_file(tiny_export[0])
    pixels = load_pixels([bottle / "test" / "good" / "001.png", bottle / "test" / "good" / "002.png"], info.preprocess)
    ref = run_session(make_session(data), pixels)
    ok = check_parity(ref, data, pixels, ["a", "b"], tau=0.05)
    assert ok.passed and ok.max_abs_diff_logit == 0.0 and ok.max_abs_diff_sim == 0.0
    # A logit off by 3e-3 fails (its tolerance is 1e-4 / 0.05 = 2e-3), even with the score untouched.
    off = {k: v.copy() for k, v in ref.items()}
    off["logit"][1] += 3e-3
    with pytest.raises(FsacError, match=r"max \|Δ logit\| = 0\.003 \(<= 0\.002\).*worst: b"):
        check_parity(off, data, pixels, ["a", "b"], tau=0.05)
    # A similarity off by 3e-4 fails too.
    off = {k: v.copy() for k, v in ref.items()}
    off["sim_anomalous"][0] += 3e-4
    with pytest.raises(FsacError, match=r"max \|Δ similarity\| = 0\.0003 \(<= 0\.0001\)"):
        check_parity(off, data, pixels, ["a", "b"], tau=0.05)


def test_cast_before_transpose_keeps_the_function():
    """The graph rewrite on a minimal uint8 NHWC -> float NCHW graph."""
    import onnx
    from onnx import TensorProto, helper

    from fsac.runner import make_session
    from fsac.export.onnx_export import cast_before_transpose

    g = helper.make_graph(
        [helper.make_node("Transpose", ["image"], ["t"], perm=[0, 3, 1, 2]),
         helper.make_node("Cast", ["t"], ["c"], to=TensorProto.FLOAT),
         helper.make_node("ReduceSum", ["c", "axes"], ["score"], keepdims=0)],
        "g", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 4, 4, 3])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])],
        value_info=[helper.make_tensor_value_info("t", TensorProto.UINT8, ["N", 3, 4, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    before = make_session(m.SerializeToString()).run(None, {"image": x})[0]
    assert cast_before_transpose(m)
    onnx.checker.check_model(m, full_check=True)
    assert [n.op_type for n in m.graph.node][:2] == ["Cast", "Transpose"]
    after = make_session(m.SerializeToString()).run(None, {"image": x})[0]
    np.testing.assert_array_equal(before, after)
    assert not cast_before_transpose(m)  # already in order
