"""METHOD.md eq. 2-12, each on a small example worked out by hand (C = 2)."""

import math

import pytest
import torch

from fsac.errors import FsacError
from fsac.train.model import (DeployModel, FSACHead, HeadConfig, ImageToTextAttention, PixelNormalize,
                              anomaly_score, contrastive_loss, mlp, zero_shot_score)


def _set(linear: torch.nn.Linear, weight, bias) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        linear.bias.copy_(torch.tensor(bias, dtype=torch.float32))


@pytest.fixture
def head() -> FSACHead:
    """C = 2, A_f = Linear(I) - ReLU - Linear(2I), A_g = Linear(swap, b=[0.5, 0]), proj = I."""
    cfg = HeadConfig(embed_dim=2, image_adapter_reduction=1, alpha1=1.0, alpha2=1.0, beta1=0.1, beta2=0.9, tau=0.5)
    h = FSACHead(cfg, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    _set(h.image_adapter[0], [[1, 0], [0, 1]], [0, 0])
    _set(h.image_adapter[2], [[2, 0], [0, 2]], [0, 0])
    _set(h.text_adapter[0], [[0, 1], [1, 0]], [0.5, 0])
    _set(h.cross_attention.proj, [[1, 0], [0, 1]], [0, 0])
    return h


def test_adapter_shapes_follow_config():
    a = mlp(640, 2, 4)
    assert [m.__class__.__name__ for m in a] == ["Linear", "ReLU", "Linear"]
    assert a[0].weight.shape == (160, 640) and a[2].weight.shape == (640, 160)
    one = mlp(640, 1, 4)
    assert len(one) == 1 and one[0].weight.shape == (640, 640)
    with pytest.raises(ValueError):
        mlp(8, 0, 4)


def test_eq3_image_adapter_residual(head):
    f = torch.tensor([[1.0, -1.0]])
    # A_f(F) = 2 * relu([1, -1]) = [2, 0];  AF = 1 * [2, 0] + 1 * [1, -1] = [3, -1]
    cfg_no_attention = head.cfg
    cfg_no_attention.use_cross_attention = False
    af = head.fuse(f, head.t_pos, head.t_neg)
    assert torch.allclose(af, torch.tensor([[3.0, -1.0]]))
    head.cfg.alpha1, head.cfg.alpha2 = 0.5, 2.0  # AF = 0.5 [2, 0] + 2 [1, -1] = [3, -2]
    assert torch.allclose(head.fuse(f, head.t_pos, head.t_neg), torch.tensor([[3.0, -2.0]]))


def test_eq4_text_adapter_residual(head):
    at_pos, at_neg = head.adapted_text()
    # A_g(T+) = [0, 1] + [0.5, 0] = [0.5, 1];  AT+ = 0.1 [0.5, 1] + 0.9 [1, 0] = [0.95, 0.1]
    # A_g(T-) = [1, 0] + [0.5, 0] = [1.5, 0];  AT- = 0.1 [1.5, 0] + 0.9 [0, 1] = [0.15, 0.9]
    assert torch.allclose(at_pos, torch.tensor([0.95, 0.1]))
    assert torch.allclose(at_neg, torch.tensor([0.15, 0.9]))
    # Stage 1: text side fixed, AT = T.
    p, n = head.adapted_text(use_text_adapter=False)
    assert torch.equal(p, head.t_pos) and torch.equal(n, head.t_neg)


def _expected_attention():
    # psi = [[0.95, 0.1], [0.15, 0.9]], F = [1, -1]
    # F psi^T = [0.85, -0.75], / sqrt(2) -> softmax -> weights w
    logits = [0.85 / math.sqrt(2), -0.75 / math.sqrt(2)]
    e = [math.exp(x) for x in logits]
    w = [x / sum(e) for x in e]  # [0.75608, 0.24392]
    return [w[0] * 0.95 + w[1] * 0.15, w[0] * 0.1 + w[1] * 0.9]  # [0.75486, 0.29514]


def test_eq5_cross_attention(head):
    f = torch.tensor([[1.0, -1.0]])
    psi = torch.stack(head.adapted_text())
    out = head.cross_attention(f, psi)
    assert torch.allclose(out, torch.tensor([_expected_attention()]), atol=1e-6)
    assert abs(_expected_attention()[0] - 0.754864) < 1e-5  # the hand arithmetic itself
    # The Linear is applied after the attention-weighted sum: proj = 2I doubles it.
    _set(head.cross_attention.proj, [[2, 0], [0, 2]], [0, 0])
    assert torch.allclose(head.cross_attention(f, psi), 2 * torch.tensor([_expected_attention()]), atol=1e-6)


def test_eq6_fused_feature(head):
    f = torch.tensor([[1.0, -1.0]])
    at_pos, at_neg = head.adapted_text()
    cf = head.fuse(f, at_pos, at_neg)
    att = _expected_attention()
    assert torch.allclose(cf, torch.tensor([[3.0 + att[0], -1.0 + att[1]]]), atol=1e-6)  # [3.75486, -0.70486]


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_eq10_12_anomaly_score(head):
    f = torch.tensor([[1.0, -1.0]])
    score, logit, s_pos, s_neg = head(f)
    att = _expected_attention()
    cf = [3.0 + att[0], -1.0 + att[1]]
    sp, sn = _cos(cf, [0.95, 0.1]), _cos(cf, [0.15, 0.9])
    tau = 0.5
    S_pos = math.exp(sp / tau) / (math.exp(sp / tau) + math.exp(sn / tau))
    S_neg = math.exp(sn / tau) / (math.exp(sp / tau) + math.exp(sn / tau))
    assert s_pos.item() == pytest.approx(sp, abs=1e-6)
    assert s_neg.item() == pytest.approx(sn, abs=1e-6)
    assert score.item() == pytest.approx(S_neg / (S_neg + S_pos), abs=1e-6)
    assert logit.item() == pytest.approx((sn - sp) / tau, abs=1e-5)  # AS = sigmoid(z)
    assert 0.0 <= score.item() <= 1.0


def test_logit_does_not_saturate_where_the_score_does():
    """At tau = 0.01 a similarity gap of 0.5 rounds AS to exactly 1.0 in float32; z keeps ranking."""
    at_pos, at_neg = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    cf = torch.tensor([[0.3, 1.0], [0.2, 1.0], [0.1, 1.0]])  # gaps ~0.66, 0.78, 0.89
    out = anomaly_score(cf, at_pos, at_neg, tau=0.01)
    assert torch.all(out.score == 1.0)  # three ties in the score ...
    assert out.logit[0] < out.logit[1] < out.logit[2]  # ... three distinct, ordered logits
    assert torch.allclose(out.logit, (out.sim_anomalous - out.sim_normal) / 0.01)


def test_score_monotone_in_similarity_gap_and_tau():
    at_pos, at_neg = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    cf = torch.tensor([[1.0, 0.2], [1.0, 1.0], [0.2, 1.0]])  # increasingly "anomalous"
    s1 = anomaly_score(cf, at_pos, at_neg, tau=1.0).score
    s2 = anomaly_score(cf, at_pos, at_neg, tau=0.01).score
    assert s1[0] < s1[1] < s1[2] and s2[0] < s2[1] < s2[2]
    assert s1[1].item() == pytest.approx(0.5) and s2[1].item() == pytest.approx(0.5)
    assert s2[2] > s1[2]  # a lower tau sharpens the score


def test_zero_shot_is_eq12_on_raw_features():
    t_pos, t_neg = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    f = torch.tensor([[3.0, 4.0]])  # cos with T+ = 0.6, with T- = 0.8
    score, logit, sp, sn = zero_shot_score(f, t_pos, t_neg, tau=0.1)
    assert logit.item() == pytest.approx(2.0, rel=1e-5)  # (0.8 - 0.6) / 0.1
    expected = math.exp(8) / (math.exp(6) + math.exp(8))
    assert sp.item() == pytest.approx(0.6) and sn.item() == pytest.approx(0.8)
    assert score.item() == pytest.approx(expected, rel=1e-6)


def test_eq7_9_contrastive_loss_by_hand():
    at_pos, at_neg = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    cf_pos = torch.tensor([[2.0, 0.0]])  # s(CF+, AT+) = 1, s(CF+, AT-) = 0
    cf_neg = torch.tensor([[1.0, 1.0]])  # s(CF-, AT+) = s(CF-, AT-) = 1/sqrt(2)
    r = 1 / math.sqrt(2)

    def nll(a, b):  # -log(e^a / (e^a + e^b))
        return -math.log(math.exp(a) / (math.exp(a) + math.exp(b)))

    l_f2t = nll(1, 0) + nll(r, r)
    l_t2f = nll(1, r) + nll(r, 0)
    expected = 0.5 * (l_f2t + l_t2f)
    got = contrastive_loss(cf_pos, cf_neg, at_pos, at_neg)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # Temperature divides every similarity.
    t = 0.5
    l_f2t_t = nll(1 / t, 0) + nll(r / t, r / t)
    l_t2f_t = nll(1 / t, r / t) + nll(r / t, 0)
    assert contrastive_loss(cf_pos, cf_neg, at_pos, at_neg, t).item() == pytest.approx(0.5 * (l_f2t_t + l_t2f_t),
                                                                                       rel=1e-6)


def test_loss_is_mean_over_pairs_and_lower_when_separated():
    at_pos, at_neg = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    good = contrastive_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), at_pos, at_neg)
    bad = contrastive_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]), at_pos, at_neg)
    both = contrastive_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]]),
                            at_pos, at_neg)
    assert good < bad
    assert both.item() == pytest.approx((good.item() + bad.item()) / 2, rel=1e-6)


def test_no_cross_attention_ablation_gives_cf_equal_af(head):
    head.cfg.use_cross_attention = False
    f = torch.tensor([[1.0, -1.0]])
    assert torch.allclose(head.fuse(f, *head.adapted_text()), torch.tensor([[3.0, -1.0]]))
    assert head.stage1_parameters() == list(head.image_adapter.parameters())


def test_pixel_normalize_matches_formula():
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    px = torch.tensor([[[[255, 0, 51]]]], dtype=torch.uint8)  # (1, 1, 1, 3)
    out = PixelNormalize(mean, std)(px)
    assert out.shape == (1, 3, 1, 1)
    expected = [(1.0 - 0.5) / 0.5, (0.0 - 0.25) / 0.25, (0.2 - 0.0) / 1.0]
    assert torch.allclose(out.flatten(), torch.tensor(expected), atol=1e-6)


def test_deploy_model_equals_head_on_encoder_features(head):
    class Visual(torch.nn.Module):  # stand-in encoder: mean colour per channel pair
        def forward(self, x):
            return x.mean(dim=(2, 3))[:, :2]

    norm = PixelNormalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    deploy = DeployModel(Visual(), norm, head)
    px = torch.randint(0, 256, (3, 4, 4, 3), dtype=torch.uint8)
    got = deploy(px)
    want = head(Visual()(norm(px)))
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-6)
    # AT+- are folded constants: changing the text adapter afterwards does not change them.
    before = deploy.at_pos.clone()
    _set(head.text_adapter[0], [[5, 5], [5, 5]], [1, 1])
    assert torch.equal(deploy.at_pos, before)


def test_head_config_round_trip_and_unknown_key():
    cfg = HeadConfig(beta1=1.0, beta2=1.0, use_cross_attention=False)
    assert HeadConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown head settings"):
        HeadConfig.from_dict({"alpha3": 1})


def test_attention_module_shapes():
    att = ImageToTextAttention(8)
    out = att(torch.randn(5, 8), torch.randn(2, 8))
    assert out.shape == (5, 8)


@pytest.mark.parametrize("field,value", [("tau", float("nan")), ("tau", float("inf")), ("tau", 0.0),
                                         ("loss_temperature", float("nan")), ("loss_temperature", -1.0),
                                         ("alpha1", float("nan")), ("alpha2", float("inf")),
                                         ("beta1", float("nan")), ("beta2", float("-inf"))])
def test_head_config_refuses_non_finite_and_non_positive_settings(field, value):
    # A NaN tau or weight used to train silently into a checkpoint whose every logit is NaN.
    with pytest.raises(FsacError, match=f"--{field.replace('_', '-')} must be"):
        HeadConfig(**{field: value})
    # ... and a hand-edited model.json goes through from_dict, which must refuse it the same way.
    with pytest.raises(FsacError):
        HeadConfig.from_dict({**HeadConfig().to_dict(), field: value})
