"""The full ViT-B-16-plus-240 (random weights): export + ONNX Runtime parity on two real
bottle images. Slow-ish (~1 min on 2 cores) but run by default."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_full_architecture_parity(bottle, tmp_path, models):
    import torch

    from fsac.export.cli import export_trained
    from fsac.modelfile import load_model_file
    from fsac.train.checkpoint import checkpoint_sha256, random_trained_model, save_checkpoint

    torch.set_num_threads(2)
    trained = random_trained_model(models.FULL_ARCH, seed=0)
    assert trained.backbone.info.embed_dim == 640 and trained.backbone.spec.image_size == 240
    save_checkpoint(tmp_path / "ck", trained, extra={"train_images": []})
    images = [bottle / "test" / "good" / "000.png", bottle / "test" / "broken_large" / "000.png"]
    out = tmp_path / "full.onnx"
    res = export_trained(trained, checkpoint_sha256(tmp_path / "ck"), out, images, optimize="none", quiet=True)
    assert res["parity"]["n_images"] == 2
    assert res["parity_max_abs_diff_logit"] <= 1e-2  # tau = 0.01: 1e-4 in similarity units
    assert res["parity"]["max_abs_diff_sim"] <= 1e-4 and res["parity"]["passed"]
    _, info = load_model_file(out)
    assert info.arch == "ViT-B-16-plus-240" and info.precision == "fp32"
    assert json.loads(info.metadata["fsac.parity"])["images"] == ["000.png", "000.png"]
    assert out.stat().st_size > 300e6  # the whole encoder is in the one file
