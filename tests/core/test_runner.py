"""Scoring through the model file with ONNX Runtime, torch-free (runs on the edge box)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fsac.errors import FsacError


def test_calibration_imports_no_torch():
    code = ("import sys; import fsac.calibration.cli, fsac.runner, fsac.calibration.threshold, "
            "fsac.metadata, fsac.calibration.quantize, fsac.calibration.plot, fsac.export.cli, "
            "fsac.export.parity, fsac.export.tensorrt_build, fsac.export.bench; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_score_model_file_matches_session_and_hashes(exported_model, bottle):
    from fsac.runner import load_pixels, make_session, run_session, score_model_file
    from fsac.io import sha256_file
    from fsac.modelfile import load_model_file

    imgs = sorted((bottle / "test" / "good").glob("*.png"))[:5]
    s, info = score_model_file(exported_model, imgs, batch_size=2)
    data, _ = load_model_file(exported_model)
    ref = run_session(make_session(data), load_pixels(imgs, info.preprocess), batch_size=5)
    np.testing.assert_allclose(s.score, ref["score"], atol=1e-6)
    assert len(s) == 5 and s.sha256 == [sha256_file(p) for p in imgs]
    np.testing.assert_allclose(s.logit, ref["logit"], atol=1e-5)
    assert s.sim_normal.dtype == np.float32 and s.sim_anomalous.shape == (5,) and s.logit.shape == (5,)


def test_bad_images_are_named(exported_model, tmp_path):
    from fsac.runner import expand_images, score_model_file

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(FsacError, match="broken.png"):
        score_model_file(exported_model, [bad])
    with pytest.raises(FsacError, match="not found"):
        expand_images([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FsacError, match="no images"):
        expand_images([tmp_path / "empty"])
