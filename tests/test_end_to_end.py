"""The whole chain as a user runs it, on real images, tiny configuration:
fsac train -> fsac export -> fsac calibrate -> fsac-run, and the edge box's scores equal
the workstation's."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from fsac.cli import main
from fsac.modelfile import load_model_file
from fsac.preprocess import preprocess_file, stack
from fsac.train.checkpoint import load_checkpoint
from tests.conftest import TINY_ARCH


def test_train_export_calibrate_run(bottle, tmp_path):
    shots = sorted((bottle / "train" / "good").glob("*.png"))[:4]
    ckpt, model = tmp_path / "ckpt", tmp_path / "bottle.onnx"
    assert main(["train", *map(str, shots), "--arch", TINY_ARCH, "--weights", "random", "--epochs1", "10",
                 "--epochs2", "10", "--out", str(ckpt), "-q"]) == 0
    # Export finds the training shots by their recorded paths for its parity check.
    assert main(["export", str(ckpt), "-o", str(model), "-q"]) == 0
    _, info = load_model_file(model)
    tau = float(info.metadata["fsac.tau"])
    assert info.logit_threshold is None and float(info.metadata["fsac.parity_max_abs_diff_logit"]) <= 1e-4 / tau
    held_out = sorted((bottle / "train" / "good").glob("*.png"))[100:130]
    calib = tmp_path / "calib"
    calib.mkdir()
    for p in held_out:
        shutil.copy(p, calib / p.name)
    assert main(["calibrate", str(model), "--normal", str(calib), "--alpha", "0.1", "-q"]) == 0
    _, info = load_model_file(model)
    assert info.logit_threshold is not None

    # The line: a folder with good and defective parts, plus one corrupt file.
    line = tmp_path / "line"
    line.mkdir()
    frames = sorted((bottle / "test" / "good").glob("*.png"))[:3] + sorted((bottle / "test" / "broken_large").glob("*.png"))[:3]
    for i, p in enumerate(frames):
        shutil.copy(p, line / f"{i:02d}_{p.parent.name}_{p.name}")
    (line / "99_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    jsonl = tmp_path / "results.jsonl"
    r = subprocess.run([sys.executable, "-m", "fsac.runtime.cli", "--model", str(model), "--source", str(line),
                        "--jsonl", str(jsonl), "--set", "http.enabled=false"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == 7
    errors = [rec for rec in records if rec["verdict"] == "error"]
    assert len(errors) == 1 and "corrupt" in errors[0]["source"] + str(errors[0].get("error", ""))
    scored = [rec for rec in records if rec["verdict"] != "error"]

    # Workstation scores for the same files, through PyTorch.
    trained = load_checkpoint(ckpt, quiet=True)
    files = sorted(line.glob("0*.png"))
    px = stack(preprocess_file(p, trained.backbone.spec) for p in files)
    with torch.no_grad():
        want = trained.deploy_model()(torch.from_numpy(px))[1].numpy()  # the logit
    got = np.array([rec["logit"] for rec in sorted(scored, key=lambda rec: rec["source"])])
    assert np.max(np.abs(got - want)) <= 1e-4 / tau
    for rec in scored:
        assert rec["logit_threshold"] == info.logit_threshold and rec["threshold"] == info.threshold
        assert rec["verdict"] == ("defective" if rec["logit"] >= info.logit_threshold else "good")
        assert rec["score"] == pytest.approx(1 / (1 + np.exp(-rec["logit"])), rel=1e-12)  # float64 sigmoid
        assert rec["model_sha256"] == info.seal
