"""INT8 static quantization end to end on CPU (tiny model, real bottle images) and the
agreement report. Random weights: the agreement numbers are computed, not judged."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fsac.errors import FsacError


@pytest.fixture(scope="module")
def int8_model(exported_model, bottle, tmp_path_factory):
    from fsac.calibration.cli import quantize_command

    out = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    res = quantize_command(exported_model, [bottle / "train" / "good"], [bottle / "test" / "good",
                           bottle / "test" / "contamination"], out=out, num_calib=6, allow_disagreement=True,
                           quiet=True, report=out.with_suffix(".json"))
    return out, res


def test_int8_model_end_to_end(int8_model, exported_model, bottle):
    import onnx

    from fsac.runner import score_model_file
    from fsac.modelfile import load_model_file

    path, res = int8_model
    _, info = load_model_file(path)  # sealed, metadata valid
    _, fp = load_model_file(exported_model)
    assert info.precision == "int8" and fp.precision == "fp32"
    assert info.checkpoint_sha256 == fp.checkpoint_sha256 and info.preprocess == fp.preprocess
    assert info.metadata["fsac.source_model_seal"] == fp.seal
    q = json.loads(info.metadata["fsac.quantization"])
    assert q["format"] == "QDQ" and q["method"] == "minmax" and q["per_channel"] and q["target"] == "cpu"
    assert q["n_calibration_images"] == 6 and len(q["calibration_images"]) == 6
    assert q["op_types"] == ["MatMul", "Gemm", "Conv"] and q["scope"] == "encoder" and q["nodes_excluded"] > 0
    assert q["reduce_range"] is True and q["weight_type"].startswith("7-bit")  # the CPU default
    m = onnx.load(str(path))
    weights = int8_weights(m)
    assert len(weights) >= 4 and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64  # 7 bits, so
    # no CPU without VNNI clamps its u8 x s8 pair sums (fsac/int8_saturation.py)
    ops = {n.op_type for n in m.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # Only the encoder is quantized: the head and the score tail stay float.
    producer = {o: n for n in m.graph.node for o in n.output}
    assert producer["score"].op_type not in ("DequantizeLinear", "QuantizeLinear")
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in producer:
            assert producer[n.input[0]].name.startswith(("/visual/", "/normalize/")), producer[n.input[0]].name
    assert m.graph.input[0].name == "image" and m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert path.stat().st_size < exported_model.stat().st_size  # int8 weights

    # It runs on ONNX Runtime CPU and gives scores close to fp32 on real images.
    imgs = sorted((bottle / "test" / "broken_small").glob("*.png"))[:4]
    s8, _ = score_model_file(path, imgs)
    s32, _ = score_model_file(exported_model, imgs)
    assert s8.score.shape == (4,) and np.all(np.isfinite(s8.score)) and np.all((s8.score >= 0) & (s8.score <= 1))
    assert np.max(np.abs(s8.score - s32.score)) < 0.2

    a = res["agreement"]
    assert a["n_images"] == 41  # 20 good + 21 contamination, none used for calibration
    assert -1 <= a["spearman"] <= 1 and math.isfinite(a["max_abs_diff"])
    assert 0 <= a["verdict_agreement"] <= 1 and a["threshold"] is not None
    assert "calibration images" in a["threshold_source"]  # the model had no threshold yet
    assert any("RANDOM" in n for n in a["notes"])
    assert json.loads(info.metadata["fsac.int8_agreement"])["n_images"] == 41
    assert json.loads(path.with_suffix(".json").read_text())["agreement"]["spearman"] == a["spearman"]


def int8_weights(model) -> list[np.ndarray]:
    """The int8 initializers that DequantizeLinear nodes read (the quantized weights)."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    return [numpy_helper.to_array(inits[n.input[0]]) for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits
            and inits[n.input[0]].data_type == TensorProto.INT8]


def test_full_range_weights_on_request_and_for_tensorrt():
    from fsac.calibration.quantize import QuantizeSettings

    assert QuantizeSettings().reduce_range is True
    assert QuantizeSettings(target="tensorrt").reduce_range is False  # GPUs accumulate in 32 bits
    assert QuantizeSettings(reduce_range=False).reduce_range is False
    assert QuantizeSettings(target="tensorrt", reduce_range=True).reduce_range is True


def test_refused_below_bounds_unless_allowed(exported_model, bottle, tmp_path):
    from fsac.calibration.cli import quantize_command
    from fsac.modelfile import load_model_file

    out = tmp_path / "q.onnx"
    # Impossible bound: Spearman can never exceed 1.
    with pytest.raises(FsacError, match="disagrees with fp32.*--allow-disagreement"):
        quantize_command(exported_model, [bottle / "train" / "good"], [bottle / "test" / "good"], out=out,
                         num_calib=4, min_spearman=1.01, quiet=True)
    assert not out.exists()
    res = quantize_command(exported_model, [bottle / "train" / "good"], [bottle / "test" / "good"], out=out,
                           num_calib=4, min_spearman=1.01, allow_disagreement=True, quiet=True,
                           calibration_method="percentile")
    assert any("disagrees" in w for w in res["warnings"])
    _, info = load_model_file(out)
    assert json.loads(info.metadata["fsac.quantization"])["method"] == "percentile"
    with pytest.raises(FsacError, match="--force"):
        quantize_command(exported_model, [bottle / "train" / "good"], out=out, quiet=True)


def test_user_errors(exported_model, int8_model, bottle, tmp_path):
    from fsac.calibration.cli import quantize_command

    with pytest.raises(FsacError, match="fp32 model"):
        quantize_command(int8_model[0], [bottle / "train" / "good"], out=tmp_path / "x.onnx", quiet=True)
    with pytest.raises(FsacError, match="at least 6"):
        quantize_command(exported_model, [bottle / "train" / "good" / "000.png"], out=tmp_path / "y.onnx", quiet=True)
    with pytest.raises(FsacError, match="--calibration-method"):
        quantize_command(exported_model, [bottle / "train" / "good"], out=tmp_path / "z.onnx",
                         calibration_method="kl", quiet=True)


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    from fsac.agreement import rankdata, spearman

    rng = np.random.default_rng(0)
    a = rng.integers(0, 10, 50).astype(float)  # many ties
    b = a + rng.normal(0, 2, 50)
    np.testing.assert_allclose(rankdata(a), stats.rankdata(a))
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_agreement_report_on_known_scores():
    from fsac.calibration.quantize import agreement, enforce_agreement

    fp = np.linspace(0.0, 1.0, 24)
    q = fp.copy()
    q[12] = 0.49  # 0.5217 -> 0.49 (still above 0.4783): same order, one verdict flips at 0.5
    r = agreement(fp, q, 0.5)
    assert r.spearman == pytest.approx(1.0) and r.max_abs_diff == pytest.approx(fp[12] - 0.49)
    assert r.verdict_agreement == pytest.approx(23 / 24) and (r.flagged_fp32, r.flagged_int8) == (12, 11)
    assert r.failures == ["verdicts agree on 23 of 24 images (95.83%) < 99.00%"]
    with pytest.raises(FsacError, match="verdicts agree on 23 of 24"):
        enforce_agreement(r, allow=False)
    assert "WARNING" in enforce_agreement(r, allow=True)
    ok = agreement(fp, fp + 0.01, 0.5)
    assert ok.passed and enforce_agreement(ok, allow=False) is None
    # The max |delta logit| bound: same order, same verdicts, but 0.15 of the spread away.
    far = fp + 0.15 * (fp > 0.5)  # the upper half moved up: order and verdicts kept
    assert agreement(fp, far, 0.5).failures == ["max |Δ logit| 0.15 = 0.150 x the logit spread > 0.1"]
    # A NaN logit ranks last and decides "good": it fails, whatever the other figures say.
    nan = fp.copy()
    nan[-1] = np.nan
    assert "1 of 24 images have a NaN or infinite logit" in agreement(fp, nan, 0.5).failures
    # On a few images a perfect match proves nothing: refused, with what to do about it.
    few = agreement(fp[:6], fp[:6], 0.5)
    assert few.failures == ["only 6 images compared; the bounds need at least 20"]
    with pytest.raises(FsacError, match="pass at least 20 held-out images with --eval-images"):
        enforce_agreement(few, allow=False)
    # Figures print with six digits, so one just below its bound never reads as the bound.
    swapped = fp.copy()
    swapped[[3, 7]] = swapped[[7, 3]]  # rho = 1 - 6 * 32 / (24 * 575) = 0.986087
    assert "Spearman 0.986087 < 0.99" in agreement(fp, swapped, 0.5).failures
    none = agreement(fp, q, None)
    assert none.verdict_agreement is None and "verdicts not compared (no decision threshold)" in none.failures
    with pytest.raises(FsacError, match=">= 3 held-out"):
        agreement([0.1, 0.2], [0.1, 0.2], 0.5)


def test_a_full_disk_is_one_line_naming_the_folder_and_leaves_nothing(exported_model, bottle, mount_small):
    """The quantizer's scratch folder sits beside the output: on a real small tmpfs its
    ENOSPC (from write(), which names no file) comes out of `fsac` as one line naming it."""
    import subprocess
    import sys

    fs = mount_small("200k")
    r = subprocess.run([sys.executable, "-m", "fsac.cli", "quantize", str(exported_model), "-c",
                        str(bottle / "train" / "good"), "-o", str(fs / "int8.onnx"), "-q"],
                       capture_output=True, text=True, timeout=600)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("fsac: ") or "Traceback" in ln]
    assert r.returncode == 2 and lines == [lines[-1]] and lines[-1].startswith(f"fsac: error: {fs}/"), r.stderr
    assert "No space left on device" in lines[-1]
    assert list(fs.iterdir()) == []
