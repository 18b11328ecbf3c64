import numpy as np
import pytest
import torch

from fsac.preprocess import preprocess_file
from fsac.train.checkpoint import TrainedModel
from fsac.train.explain import explain_names, gradient_map, render, smooth
from fsac.train.last_block import last_block_of
from fsac.train.model import FSACHead, HeadConfig


def test_gradient_map_is_abs_grad_mean_over_channels(tiny_backbone, bottle, last_mlp_tokens):
    torch.manual_seed(0)
    t = torch.nn.functional.normalize(torch.randn(2, 64), dim=-1)
    model = TrainedModel(tiny_backbone, FSACHead(HeadConfig(embed_dim=64, tau=1.0), t[0], t[1]), True, "bottle")
    px = preprocess_file(next((bottle / "test" / "broken_large").glob("*.png")), tiny_backbone.spec)
    logit, grad = gradient_map(model, px)
    assert last_mlp_tokens == [1]  # the last block ran for [CLS] alone
    assert "forward" not in vars(last_block_of(tiny_backbone.visual))
    assert grad.shape == (240, 240) and grad.dtype == np.float32
    assert (grad >= 0).all() and grad.max() > 0
    # Reference: autograd through the unchanged deploy model (full last block), by hand.
    x = torch.tensor(px, dtype=torch.float32)[None].requires_grad_(True)
    z = model.deploy_model()(x)[1][0]  # the logit output
    z.backward()
    ref = x.grad[0].abs().mean(-1).numpy()
    assert np.abs(grad - ref).max() <= 1e-4 * ref.max()
    assert abs(logit - z.item()) < 1e-5
    png = render(px, smooth(grad, 2.0), logit, "t", logit_threshold=0.0)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_map_is_not_blank_on_a_confidently_anomalous_image(tiny_backbone, bottle):
    """A head whose score saturates: AS is exactly 1.0 in float32, |dAS/dx| is all zero, and
    the map of the logit still shows where the evidence is."""
    torch.manual_seed(0)
    px = preprocess_file(next((bottle / "test" / "broken_large").glob("*.png")), tiny_backbone.spec)
    with torch.no_grad():
        f = tiny_backbone.encode_images(px[None])[0]
    # T- along the image's own feature, T+ against it, tau tiny: a confident "anomalous".
    t_anom = torch.nn.functional.normalize(f, dim=0)
    head = FSACHead(HeadConfig(embed_dim=64, tau=0.001, use_cross_attention=False), -t_anom, t_anom)
    torch.nn.init.zeros_(head.image_adapter[-1].weight)
    torch.nn.init.zeros_(head.image_adapter[-1].bias)
    model = TrainedModel(tiny_backbone, head, False, "bottle")
    x = torch.tensor(px, dtype=torch.float32)[None].requires_grad_(True)
    score = model.deploy_model()(x)[0][0]
    assert score.item() == 1.0  # saturated in float32
    (g_score,) = torch.autograd.grad(score, x)
    assert float(g_score.abs().max()) == 0.0  # the old map: blank
    logit, grad = gradient_map(model, px)
    assert logit > 100 and grad.max() > 0 and np.count_nonzero(grad) > 0.5 * grad.size


def test_map_is_not_blank_for_a_trained_model_whose_score_saturates(tiny_backbone, bottle, bottle_shots):
    """The same on a model that was trained, not set by hand: the trained tiny model scores a confidently anomalous image with AS exactly 1.0 in float32, and the map of
    the logit is still not blank. With random backbone weights the real defects need not look
    anomalous to it, so the candidates are fresh synthetic anomalies of the shots (another seed
    than training's): what this model was trained to flag, on pixels it has not seen."""
    from fsac.train.synth import SynthConfig, generate
    from fsac.train.trainer import TrainConfig, train

    # The default schedule and tau = 0.01: the saturation is the default case, not a contrived one.
    cfg = TrainConfig(synth=SynthConfig(per_image=4), head=HeadConfig(embed_dim=64))
    model = train(tiny_backbone, bottle_shots[:2], "bottle", cfg, quiet=True).model
    shots = [preprocess_file(p, tiny_backbone.spec) for p in bottle_shots[:2]]
    px = np.stack([s.image for row in generate(shots, SynthConfig(per_image=3, seed=99)) for s in row])
    deploy = model.deploy_model()
    with torch.no_grad():
        logits = deploy(torch.tensor(px, dtype=torch.float32))[1].double().numpy()
    best = px[int(np.argmax(logits))]
    x = torch.tensor(best, dtype=torch.float32)[None].requires_grad_(True)
    score = deploy(x)[0][0]
    assert score.item() == 1.0, f"not saturated (logits {logits}): the test lost its point"
    (g_score,) = torch.autograd.grad(score, x)
    assert float(g_score.abs().max()) == 0.0  # |dAS/dx|: the blank map this replaces
    logit, grad = gradient_map(model, best)
    assert logit == pytest.approx(float(logits.max()), rel=1e-4) and logit > 17  # sigmoid(17) == 1 in float32
    assert grad.max() > 0 and np.count_nonzero(grad) > 0.5 * grad.size


def test_explain_names_are_unique_for_images_with_the_same_stem(tmp_path):
    # good/000.png and broken/000.png used to write the same 000_explain.png, the later map
    # silently replacing the earlier one.
    images = [tmp_path / "good" / "000.png", tmp_path / "broken" / "000.png", tmp_path / "good" / "001.png",
              tmp_path / "good" / "000.png"]
    names = explain_names(images)
    assert len(set(names)) == len(images) and all(n.endswith("_explain.png") for n in names)
    assert names[2] == "001_explain.png"  # a unique stem keeps the plain name
    assert "good" in names[0] and "broken" in names[1]
