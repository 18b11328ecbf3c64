"""`fsac calibrate` end to end on the tiny model and real bottle images (random weights:
the thresholds themselves mean nothing; what is tested is where they go and how)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fsac.errors import FsacError


def test_conformal_calibration_writes_threshold_and_plot(model_copy, bottle, tmp_path):
    from fsac.calibration.cli import calibrate_command
    from fsac.runner import score_model_file
    from fsac.modelfile import load_model_file

    good = bottle / "test" / "good"  # 20 held-out good images
    res = calibrate_command(model_copy, [good], alpha=0.1, quiet=True, report=tmp_path / "cal.json")
    _, info = load_model_file(model_copy)  # seal verifies after the in-place update
    assert info.logit_threshold == res["logit_threshold"]
    assert info.threshold == pytest.approx(1 / (1 + math.exp(-res["logit_threshold"])))  # the score twin
    assert float(info.metadata["fsac.threshold"]) == pytest.approx(info.threshold)
    ti = json.loads(info.metadata["fsac.threshold_info"])
    assert ti["method"] == "conformal" and ti["alpha"] == 0.1 and ti["n_normal"] == 20 and ti["k"] == 19
    assert ti["rule"] == "logit >= logit_threshold => defective"
    assert len(ti["normal_images"]) == 20 and all(len(e["sha256"]) == 64 for e in ti["normal_images"])
    # The stored threshold is just above the 19th smallest of the 20 LOGITS.
    scores, _ = score_model_file(model_copy, sorted(good.glob("*.png")))
    z = np.sort(scores.logit)
    assert len(np.unique(z)) == 20  # distinct logits: the order statistic is well defined
    assert ti["order_statistic"] == pytest.approx(float(z[18]))
    assert float(z[18]) < info.logit_threshold <= float(z[19])
    assert ti["fpr"] == pytest.approx(np.mean(scores.logit >= info.logit_threshold)) and ti["fpr"] == 0.05
    png = (tmp_path / "model.scores.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    cal = json.loads((tmp_path / "cal.json").read_text())
    assert cal["logit_threshold"] == info.logit_threshold and len(cal["normal_logits"]) == 20

    # A second calibration must be asked for explicitly.
    with pytest.raises(FsacError, match="already has a threshold"):
        calibrate_command(model_copy, [good], alpha=0.1, quiet=True)
    calibrate_command(model_copy, [good], alpha=0.2, quiet=True, force=True)
    _, info2 = load_model_file(model_copy)
    assert json.loads(info2.metadata["fsac.threshold_info"])["k"] == math.ceil(21 * 0.8)


def test_unattainable_alpha_is_refused_and_file_unchanged(model_copy, bottle):
    from fsac.calibration.cli import calibrate_command

    before = model_copy.read_bytes()
    with pytest.raises(FsacError, match="unattainable"):
        calibrate_command(model_copy, [bottle / "test" / "good"], alpha=0.01, quiet=True)
    assert model_copy.read_bytes() == before


def test_training_shots_are_left_out(model_copy, bottle):
    from fsac.calibration.cli import calibrate_command
    from fsac.modelfile import load_model_file

    shots = [bottle / "train" / "good" / "000.png", bottle / "train" / "good" / "001.png"]
    res = calibrate_command(model_copy, shots + [bottle / "test" / "good"], alpha=0.1, quiet=True)
    assert any("2 training shot" in n for n in res["notes"])
    _, info = load_model_file(model_copy)
    assert json.loads(info.metadata["fsac.threshold_info"])["n_normal"] == 20


def test_f1_and_recall_with_labelled_anomalies(model_copy, bottle, tmp_path):
    from fsac.calibration.cli import calibrate_command
    from fsac.modelfile import load_model_file

    good, bad = bottle / "test" / "good", bottle / "test" / "broken_large"
    out = tmp_path / "f1.onnx"
    res = calibrate_command(model_copy, [good], [bad], method="f1", out=out, quiet=True)
    _, info = load_model_file(out)
    ti = json.loads(info.metadata["fsac.threshold_info"])
    assert ti["method"] == "f1" and ti["n_anomalous"] == 20 and 0 < ti["f1"] <= 1
    assert info.threshold == pytest.approx(res["threshold"])
    _, orig = load_model_file(model_copy)
    assert orig.threshold is None  # --out leaves the source model alone

    res = calibrate_command(model_copy, [good], [bad], method="recall", target_recall=0.9, quiet=True)
    ti = json.loads(load_model_file(model_copy)[1].metadata["fsac.threshold_info"])
    assert ti["method"] == "recall" and ti["recall"] >= 0.9 and ti["target_recall"] == 0.9

    with pytest.raises(FsacError, match="--anomalous"):
        calibrate_command(model_copy, [good], method="f1", quiet=True, force=True)


def test_user_errors(model_copy, tmp_path):
    from fsac.calibration.cli import calibrate_command

    with pytest.raises(FsacError, match="--alpha"):
        calibrate_command(model_copy, [tmp_path], alpha=1.5, quiet=True)
    with pytest.raises(FsacError, match="no images"):
        calibrate_command(model_copy, [tmp_path], quiet=True)  # empty folder
    with pytest.raises(FsacError, match="not found"):
        calibrate_command(tmp_path / "missing.onnx", [tmp_path], quiet=True)


@pytest.fixture(scope="module")
def saturated_model(tmp_path_factory, bottle):
    """A tiny export at tau = 0.004: every float32 score on the bottle images is exactly 1.0
    (logits about 30-32), while sigmoid in float64 still tells them apart (it ties only above ~37)."""
    from fsac.export.cli import export_command
    from tests.conftest import _helpers

    models = _helpers()
    shots = sorted((bottle / "train" / "good").glob("*.png"))[:2]
    root = tmp_path_factory.mktemp("saturated")
    ck = models.make_checkpoint(root / "ck", models.TINY_ARCH, shots, tau=0.004)
    out = root / "sat.onnx"
    export_command(ck, out=out, quiet=True, optimize="none")
    return out


def test_saturated_model_calibrates_on_logits_and_flags_images(saturated_model, bottle, tmp_path):
    """The bug this replaces: on tied scores of 1.0 the conformal threshold was 1.00000012
    and nothing could ever be flagged. On logits the threshold sits inside the data."""
    import shutil

    from fsac.calibration.cli import calibrate_command
    from fsac.runner import score_model_file
    from fsac.score import is_defective

    model = tmp_path / "sat.onnx"
    shutil.copy(saturated_model, model)
    good = sorted((bottle / "test" / "good").glob("*.png"))
    scores, _ = score_model_file(model, good)
    assert np.all(scores.score == np.float32(1.0))  # the saturated case, for real
    res = calibrate_command(model, [bottle / "test" / "good"], alpha=0.1, quiet=True, report=tmp_path / "cal.json")
    t = res["logit_threshold"]
    # The report's scores are sigmoid of its logits in float64, not the graph's saturated float32 score.
    from fsac.score import score_from_logit

    cal = json.loads((tmp_path / "cal.json").read_text())
    assert cal["normal_logits"] == pytest.approx(scores.logit.tolist(), rel=1e-7)
    np.testing.assert_allclose(cal["normal_scores"], score_from_logit(np.array(cal["normal_logits"])), rtol=1e-15)
    assert len(set(cal["normal_scores"])) == 20, "float64 scores from the logits must not tie like the graph's"
    assert math.isfinite(t) and float(np.min(scores.logit)) < t <= float(np.max(scores.logit))
    flagged = is_defective(scores.logit, t)
    assert int(flagged.sum()) == 1  # 20 images, k = 19: exactly the largest logit is above
    defects = sorted((bottle / "test" / "broken_large").glob("*.png"))
    d, _ = score_model_file(model, defects)
    assert 0 < int(is_defective(d.logit, t).sum())  # the line can reject parts


def test_unreadable_images_are_skipped_and_listed(model_copy, bottle, tmp_path):
    import shutil

    from fsac.calibration.cli import calibrate_command
    from fsac.modelfile import load_model_file

    folder = tmp_path / "normal"
    folder.mkdir()
    for p in sorted((bottle / "test" / "good").glob("*.png")):
        shutil.copy(p, folder / p.name)
    (folder / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (folder / "zz_truncated.png").write_bytes((bottle / "test" / "good" / "000.png").read_bytes()[:300])
    res = calibrate_command(model_copy, [folder], alpha=0.1, quiet=True)
    assert sorted(Path(e["file"]).name for e in res["skipped"]) == ["zz_corrupt.png", "zz_truncated.png"]
    assert all(e["reason"] for e in res["skipped"])
    ti = json.loads(load_model_file(model_copy)[1].metadata["fsac.threshold_info"])
    assert ti["n_normal"] == 20 and len(ti["skipped"]) == 2
    assert any("skipped 2 unreadable" in n for n in res["notes"])


def test_degenerate_calibration_is_refused(tmp_path):
    from fsac.threshold import check_not_degenerate, compute_threshold

    res = compute_threshold("conformal", [3.0] * 20, alpha=0.1)
    with pytest.raises(FsacError, match="all 20 normal images have the same logit"):
        check_not_degenerate(res, [3.0] * 20)
    res = compute_threshold("recall", [0.0, 1.0, 2.0], [5.0, 6.0], target_recall=1.0)
    check_not_degenerate(res, [0.0, 1.0, 2.0], [5.0, 6.0])  # a real threshold passes
    res.threshold = 10.0
    with pytest.raises(FsacError, match="above every calibration logit"):
        check_not_degenerate(res, [0.0, 1.0, 2.0], [5.0, 6.0])
