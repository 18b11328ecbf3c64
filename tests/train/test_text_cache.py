"""Text features cached on disk (keyed by what they depend on) and bf16 autocast of the encoder."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fsac.errors import FsacError
from fsac.train.text_cache import _path, cached_text_features, text_cache_key
from fsac.train.trainer import text_features


class Counting:
    def __init__(self):
        self.calls = 0

    def __call__(self, backbone, obj):
        self.calls += 1
        return text_features(backbone, obj)


def test_text_features_are_cached_and_keyed(tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("FSAC_CACHE_DIR", str(tmp_path))
    compute = Counting()
    p1, n1, prompts, status = cached_text_features(tiny_backbone, "bottle", compute)
    assert status == "miss" and compute.calls == 1
    files = list((tmp_path / "text").glob("*.safetensors"))
    assert len(files) == 1
    p2, n2, prompts2, status = cached_text_features(tiny_backbone, "bottle", compute)
    assert status == "hit" and compute.calls == 1 and prompts2 == prompts
    assert torch.equal(p1, p2) and torch.equal(n1, n2)
    want_p, want_n, _ = text_features(tiny_backbone, "bottle")
    torch.testing.assert_close(p2, want_p, rtol=0, atol=0)
    # another object, or other weights: another entry, computed
    assert cached_text_features(tiny_backbone, "screw", compute)[3] == "miss" and compute.calls == 2
    other = dataclasses.replace(tiny_backbone.info, weights_id="file:other.safetensors", weights_sha256="ab" * 32)
    key_a = text_cache_key(tiny_backbone.info, "bottle", prompts)
    key_b = text_cache_key(other, "bottle", prompts)
    assert key_a != key_b and _path(tmp_path, key_a) != _path(tmp_path, key_b)
    assert key_a["random_init_seed"] == str(tiny_backbone.info.random_init_seed) and "torch" in key_a


def test_a_foreign_or_damaged_entry_is_recomputed(tiny_backbone, tmp_path, monkeypatch):
    from safetensors.torch import save

    monkeypatch.setenv("FSAC_CACHE_DIR", str(tmp_path))
    compute = Counting()
    t_pos, _, prompts, _ = cached_text_features(tiny_backbone, "bottle", compute)
    path = _path(tmp_path, text_cache_key(tiny_backbone.info, "bottle", prompts))
    # same file name, but written for another key (e.g. renamed by hand): never trusted
    wrong = {**text_cache_key(tiny_backbone.info, "bottle", prompts), "object": "screw"}
    path.write_bytes(save({"t_pos": torch.zeros_like(t_pos), "t_neg": torch.zeros_like(t_pos)}, metadata=wrong))
    got, _, _, status = cached_text_features(tiny_backbone, "bottle", compute)
    assert status == "miss" and compute.calls == 2 and torch.equal(got, t_pos)
    path.write_bytes(b"not a safetensors file")
    assert cached_text_features(tiny_backbone, "bottle", compute)[3] == "miss" and compute.calls == 3
    assert cached_text_features(tiny_backbone, "bottle", compute)[3] == "hit"


def test_cache_off(tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("FSAC_CACHE_DIR", "off")
    compute = Counting()
    assert cached_text_features(tiny_backbone, "bottle", compute)[3] == "off"
    assert cached_text_features(tiny_backbone, "bottle", compute)[3] == "off" and compute.calls == 2


def test_bf16_autocast_of_the_encoder(tiny_backbone, bottle_shots):
    from fsac.preprocess import preprocess_file, stack
    from fsac.train.precision import bf16_supported, resolve_encoder_precision
    from fsac.train.trainer import feature_agreement

    if not bf16_supported("cpu"):
        with pytest.raises(FsacError, match="--encoder-precision bf16: device cpu has no native bf16"):
            resolve_encoder_precision("bf16", "cpu")
        assert resolve_encoder_precision("auto", "cpu") == "fp32"
        return
    assert resolve_encoder_precision("auto", "cpu") == "bf16"
    px = stack(preprocess_file(p, tiny_backbone.spec) for p in bottle_shots)
    f32 = tiny_backbone.encode_images(px)
    b16 = tiny_backbone.encode_images(px, precision="bf16")
    assert b16.dtype == torch.float32 and b16.shape == f32.shape
    assert not torch.equal(f32, b16)  # it really ran in bf16
    a = feature_agreement(f32, b16)
    assert a["images"] == len(px) and 0.99 < a["cosine_min"] < 1.0


def test_training_with_bf16_encoder_records_the_agreement(tiny_backbone, bottle_shots, tmp_path, monkeypatch):
    from fsac.train.precision import bf16_supported
    from fsac.train.trainer import TrainConfig, train

    monkeypatch.setenv("FSAC_CACHE_DIR", str(tmp_path))
    if not bf16_supported("cpu"):
        pytest.skip("this CPU has no bf16 (covered by the refusal test above)")
    cfg = TrainConfig(stage1_epochs=2, stage2_epochs=2, encoder_precision="bf16")
    res = train(tiny_backbone, bottle_shots, "bottle", cfg, quiet=True)
    enc = res.model.meta["encoder"]
    assert enc["precision"] == "bf16" and enc["vs_fp32"]["images"] == 1
    assert 0.99 < enc["vs_fp32"]["cosine_min"] <= enc["vs_fp32"]["cosine_mean"] < 1.0
    assert np.isfinite(res.history["stage1"]).all()


def test_a_cache_hit_never_builds_the_text_tower(tmp_path, monkeypatch, bottle_shots):
    """The point of building the image tower alone: a training whose text features come from
    the cache never builds (nor randomly initialises) the text tower."""
    from fsac.train.backbone import load_backbone
    from fsac.train.trainer import cached_text
    from tests.conftest import TINY_ARCH

    monkeypatch.setenv("FSAC_CACHE_DIR", str(tmp_path))
    first = load_backbone(TINY_ARCH, "random", random_init_seed=4, quiet=True)
    t_pos, t_neg, _ = cached_text(first, "bottle")  # miss: builds the text tower
    assert first.has_text_tower
    second = load_backbone(TINY_ARCH, "random", random_init_seed=4, quiet=True)
    hit_pos, hit_neg, _ = cached_text(second, "bottle")
    assert not second.has_text_tower
    assert torch.equal(hit_pos, t_pos) and torch.equal(hit_neg, t_neg)


def test_auto_falls_back_to_fp32_when_bf16_features_disagree(tiny_backbone, bottle_shots, tmp_path, monkeypatch,
                                                             caplog):
    """auto (the default) keeps bf16 features only above BF16_MIN_COSINE on the first shot;
    below it the images are encoded again in fp32, the features are fp32's, and it is said.
    The bound is raised past 1 to force the case (random weights agree at 0.9999x)."""
    import fsac.train.precision as precision
    from fsac.train.trainer import TrainConfig, train

    monkeypatch.setenv("FSAC_CACHE_DIR", str(tmp_path))
    assert TrainConfig().encoder_precision == "auto"
    # bf16 runs (emulated, slowly) on any CPU: pretend it is native so auto tries it here too
    monkeypatch.setattr(precision, "bf16_supported", lambda device: True)
    cfg = TrainConfig(stage1_epochs=2, stage2_epochs=2)
    kept = train(tiny_backbone, bottle_shots, "bottle", cfg, quiet=True)
    assert kept.model.meta["encoder"]["precision"] == "bf16"
    assert kept.model.meta["encoder"]["vs_fp32"]["cosine_min"] >= precision.BF16_MIN_COSINE
    monkeypatch.setattr(precision, "BF16_MIN_COSINE", 1.01)
    with caplog.at_level("WARNING", logger="fsac"):
        refused = train(tiny_backbone, bottle_shots, "bottle", cfg, quiet=True)
    enc = refused.model.meta["encoder"]
    assert enc["precision"] == "fp32" and enc["bf16_rejected"]["cosine_min"] < 1.0
    assert "encoding the images again in fp32" in caplog.text
    fp32 = train(tiny_backbone, bottle_shots, "bottle", TrainConfig(stage1_epochs=2, stage2_epochs=2,
                                                                     encoder_precision="fp32"), quiet=True)
    assert fp32.model.meta["encoder"] == {"precision": "fp32"}
    assert refused.history == fp32.history  # trained on the same (fp32) features
    # an explicit bf16 is kept, with a warning
    caplog.clear()
    with caplog.at_level("WARNING", logger="fsac"):
        forced = train(tiny_backbone, bottle_shots, "bottle", TrainConfig(stage1_epochs=2, stage2_epochs=2,
                                                                          encoder_precision="bf16"), quiet=True)
    assert forced.model.meta["encoder"]["precision"] == "bf16" and "< 1.01" in caplog.text
