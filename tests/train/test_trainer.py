"""Two-stage training on cached features: stage separation, ablations, determinism."""

import math

import numpy as np
import pytest
import torch

from fsac.errors import FsacError
from fsac.train.model import HeadConfig
from fsac.train.synth import SynthConfig
from fsac.train.trainer import FeatureCache, TrainConfig, train, train_head


def _features(seed=0, k=3, m=4, c=16):
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(c, generator=g)
    f_pos = torch.randn(k, c, generator=g) + 2 * direction
    f_neg = torch.randn(k, m, c, generator=g) - 2 * direction
    t_pos = torch.nn.functional.normalize(torch.randn(c, generator=g), dim=0)
    t_neg = torch.nn.functional.normalize(torch.randn(c, generator=g), dim=0)
    return f_pos, f_neg, t_pos, t_neg


def _cfg(mode="two-stage", epochs=30, **head):
    return TrainConfig(mode=mode, stage1_epochs=epochs, stage2_epochs=epochs, head=HeadConfig(embed_dim=16, **head))


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_stage2_leaves_stage1_parameters_bit_identical():
    snaps = {}

    def on_stage_end(stage, head):
        snaps[stage] = {name: _snapshot(getattr(head, name))
                        for name in ("image_adapter", "cross_attention", "text_adapter")}

    head, use_text, hist, _ = train_head(*_features(), _cfg(), on_stage_end=on_stage_end)
    s1, s2 = snaps["stage1"], snaps["stage2"]
    for name in ("image_adapter", "cross_attention"):
        for key in s1[name]:
            assert torch.equal(s1[name][key], s2[name][key]), f"stage 2 changed {name}.{key}"
    assert any(not torch.equal(s1["text_adapter"][k], s2["text_adapter"][k]) for k in s1["text_adapter"])
    assert use_text and len(hist["stage1"]) == 30 and len(hist["stage2"]) == 30


def test_stage1_trains_image_side_and_leaves_text_adapter_at_init():
    torch.manual_seed(0)
    init = _snapshot(__import__("fsac.train.model", fromlist=["FSACHead"]).FSACHead(
        HeadConfig(embed_dim=16), *_features()[2:]).text_adapter)
    head, use_text, hist, _ = train_head(*_features(), _cfg(mode="one-stage"))
    assert not use_text and "stage2" not in hist
    after = _snapshot(head.text_adapter)
    assert all(torch.equal(init[k], after[k]) for k in init)  # same seed -> same init, untouched
    assert hist["stage1"][-1] < hist["stage1"][0]


def test_joint_mode_trains_both_adapters():
    f_pos, f_neg, t_pos, t_neg = _features()
    head0, _, _, _ = train_head(f_pos, f_neg, t_pos, t_neg, _cfg(epochs=0))
    head, use_text, hist, _ = train_head(f_pos, f_neg, t_pos, t_neg, _cfg(mode="joint"))
    assert use_text and list(hist) == ["joint"]
    for name in ("image_adapter", "text_adapter", "cross_attention"):
        a, b = _snapshot(getattr(head0, name)), _snapshot(getattr(head, name))
        assert any(not torch.equal(a[k], b[k]) for k in a), name


def test_no_cross_attention_leaves_attention_untrained():
    f_pos, f_neg, t_pos, t_neg = _features()
    head0, _, _, _ = train_head(f_pos, f_neg, t_pos, t_neg, _cfg(epochs=0, use_cross_attention=False))
    head, _, _, _ = train_head(f_pos, f_neg, t_pos, t_neg, _cfg(use_cross_attention=False))
    a, b = _snapshot(head0.cross_attention), _snapshot(head.cross_attention)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_separates_normal_from_synthetic_features():
    f_pos, f_neg, t_pos, t_neg = _features()
    head, use_text, hist, _ = train_head(f_pos, f_neg, t_pos, t_neg, _cfg(epochs=60))
    assert hist["stage1"][-1] < hist["stage1"][0]
    s_pos = head(f_pos, use_text).logit
    s_neg = head(f_neg.reshape(-1, 16), use_text).logit
    assert s_pos.max() < s_neg.min()


def test_same_seed_same_model_different_seed_different():
    feats = _features()
    h1, _, hist1, _ = train_head(*feats, _cfg())
    h2, _, hist2, _ = train_head(*feats, _cfg())
    assert hist1 == hist2
    assert all(torch.equal(a, b) for a, b in zip(h1.state_dict().values(), h2.state_dict().values()))
    cfg3 = _cfg()
    cfg3.seed = 1
    h3, _, _, _ = train_head(*feats, cfg3)
    assert not all(torch.equal(a, b) for a, b in zip(h1.state_dict().values(), h3.state_dict().values()))


def test_bad_settings_are_clear_errors():
    with pytest.raises(FsacError, match="mode must be one of"):
        TrainConfig(mode="three-stage")
    with pytest.raises(FsacError, match="stage1_lr must be > 0"):
        TrainConfig(stage1_lr=0)
    with pytest.raises(ValueError, match="expected f_pos"):
        train_head(torch.zeros(2, 16), torch.zeros(3, 1, 16), *_features()[2:], _cfg())


def test_train_on_real_images_encodes_each_image_once(tiny_backbone, bottle_shots, monkeypatch):
    calls = []
    real = tiny_backbone.encode_images

    def counting(images, **kw):
        calls.append(len(images))
        return real(images, **kw)

    monkeypatch.setattr(tiny_backbone, "encode_images", counting)
    cfg = TrainConfig(stage1_epochs=3, stage2_epochs=3, synth=SynthConfig(kind="nsa", per_image=2))
    cache = FeatureCache(tiny_backbone)
    result = train(tiny_backbone, bottle_shots[:2], "bottle", cfg, quiet=True, cache=cache)
    assert sum(calls) == 2 + 2 * 2  # shots + synthetic, once each
    assert [t["name"] for t in result.train_images] == [p.name for p in bottle_shots[:2]]
    assert all(len(t["sha256"]) == 64 for t in result.train_images)
    assert result.shot_pixels.shape == (2, 240, 240, 3) and len(result.synth) == 2 and len(result.synth[0]) == 2
    assert {"features_s", "stage1_s", "stage2_s", "total_s"} <= set(result.timings)
    calls.clear()
    train(tiny_backbone, bottle_shots[:2], "bottle", cfg, quiet=True, cache=cache)
    assert sum(calls) == 2 * 2  # shots come from the cache the second time
    out = result.model.score_features(cache.get(bottle_shots[:2]))
    assert out["score"].shape == (2,) and np.all((out["score"] >= 0) & (out["score"] <= 1))
    assert np.all(np.isfinite(out["logit"]))


def test_corrupt_training_image_names_the_file(tiny_backbone, bottle_shots, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(bottle_shots[0].read_bytes()[:300])
    with pytest.raises(FsacError, match="broken.png"):
        train(tiny_backbone, [bottle_shots[1], bad], "bottle", TrainConfig(stage1_epochs=1, stage2_epochs=1), quiet=True)


def test_diagnostics_record_the_text_side_and_warn_when_the_adapter_overwhelms_it():
    """C = 2 by hand: A_g maps T+ to 0 and T- to (-1.9, -0.336), so AT+ = (1, 0) and
    AT- = (-1, 0.1) point apart although cos(T+, T-) = 0.9."""
    from fsac.train.model import FSACHead, HeadConfig
    from fsac.train.diagnostics import training_diagnostics

    t_pos, t_neg = torch.tensor([1.0, 0.0]), torch.tensor([0.9, 0.43589])
    head = FSACHead(HeadConfig(embed_dim=2, beta1=1.0, beta2=1.0, image_adapter_reduction=1), t_pos, t_neg)
    with torch.no_grad():
        head.text_adapter[0].weight.copy_(torch.tensor([[0.0, -1.9 / 0.43589], [0.0, -0.336 / 0.43589]]))
        head.text_adapter[0].bias.zero_()
    f_pos, f_neg = torch.tensor([[1.0, 0.0]]), torch.tensor([[[-1.0, 0.1]]])
    d = training_diagnostics(head, True, f_pos, f_neg)
    assert d["cos_t"] == pytest.approx(0.9, abs=1e-4)
    assert d["cos_at"] == pytest.approx(-1.0 / math.sqrt(1.01), abs=1e-3)
    assert d["adapter_ratio"]["normal"] == pytest.approx(0.0, abs=1e-6)
    assert d["adapter_ratio"]["anomalous"] == pytest.approx(math.hypot(1.9, 0.336), rel=1e-3)
    assert d["pair_gap"] > 0 and d["pair_margin"] == pytest.approx(d["pair_gap"])  # one pair
    assert len(d["warnings"]) == 1 and "overwhelmed the residual" in d["warnings"][0]
    # Without the text adapter nothing is overwhelmed.
    d1 = training_diagnostics(head, False, f_pos, f_neg)
    assert d1["cos_at"] == pytest.approx(0.9, abs=1e-4) and d1["warnings"] == [] and "adapter_ratio" not in d1


def test_presets_set_the_paper_settings_and_explicit_options_win():
    from fsac.train.cli import build_train_config

    def cfg(preset, beta1=None, synth=None):
        return build_train_config("two-stage", 1, 1, 5e-4, 1e-4, 0, 1.0, 1.0, beta1, None, 0.01, 1.0, False, False,
                                  synth, 4, preset)

    visa = cfg("visa")
    assert (visa.head.beta1, visa.head.beta2, visa.synth.kind, visa.preset) == (1.0, 1.0, "nsa", "visa")
    mvtec = cfg("mvtec")
    assert (mvtec.head.beta1, mvtec.head.beta2, mvtec.synth.kind, mvtec.preset) == (0.1, 0.9, "gaussian", "mvtec")
    # No --preset: the defaults are the MVTec AD preset's values, and that is what is recorded.
    none = cfg(None)
    assert (none.head.beta1, none.head.beta2, none.synth.kind, none.preset) == (0.1, 0.9, "gaussian", "mvtec")
    assert none.to_dict()["preset_overrides"] == {} and TrainConfig().to_dict()["preset"] == "mvtec"
    assert cfg(None, synth="nsa").to_dict()["preset_overrides"] == {"synth": "nsa"}
    mixed = cfg("visa", beta1=0.5, synth="mixed")
    assert (mixed.head.beta1, mixed.head.beta2, mixed.synth.kind) == (0.5, 1.0, "mixed")
    assert mixed.to_dict()["preset"] == "visa" and mixed.to_dict()["preset_overrides"] == {"beta1": 0.5,
                                                                                            "synth": "mixed"}
    assert cfg("visa", beta1=1.0).to_dict()["preset_overrides"] == {}  # given, but the preset's own value
    # The overrides come from the values used, so a config built in code cannot claim a preset it is not.
    coded = TrainConfig(head=HeadConfig(beta1=1.0))
    assert coded.to_dict()["preset"] == "mvtec" and coded.to_dict()["preset_overrides"] == {"beta1": 1.0}
    assert TrainConfig(preset=None).to_dict()["preset_overrides"] == {}
    with pytest.raises(FsacError, match="preset must be one of"):
        TrainConfig(preset="cifar")
    with pytest.raises(FsacError, match="--preset must be one of mvtec, visa"):
        cfg("cifar")


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), 0.0])
def test_learning_rate_must_be_finite_and_positive(lr):
    # inf passed the `> 0` check and turned every adapter weight into NaN after one step.
    with pytest.raises(FsacError, match="stage1_lr must be > 0 and finite \\(--lr1\\)"):
        TrainConfig(stage1_lr=lr)


def test_diverged_training_is_refused_not_returned(tiny_backbone, bottle_shots):
    # A finite but huge learning rate overflows: train() must not hand back a NaN model
    # that `fsac train` would then write as a checkpoint.
    cfg = TrainConfig(stage1_epochs=2, stage2_epochs=2, stage1_lr=1e20, stage2_lr=1e20,
                      synth=SynthConfig(per_image=2), encoder_precision="fp32")
    with pytest.raises(FsacError, match="training diverged"):
        train(tiny_backbone, bottle_shots[:1], "bottle", cfg, quiet=True)
