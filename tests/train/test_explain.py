import numpy as np
import torch

from fsac.preprocess import preprocess_file
from fsac.train.checkpoint import TrainedModel
from fsac.train.explain import gradient_map, render, smooth
from fsac.train.model import FSACHead, HeadConfig


def test_gradient_map_is_abs_grad_mean_over_channels(tiny_backbone, bottle):
    torch.manual_seed(0)
    t = torch.nn.functional.normalize(torch.randn(2, 64), dim=-1)
    model = TrainedModel(tiny_backbone, FSACHead(HeadConfig(embed_dim=64, tau=1.0), t[0], t[1]), True, "bottle")
    px = preprocess_file(next((bottle / "test" / "broken_large").glob("*.png")), tiny_backbone.spec)
    score, grad = gradient_map(model, px)
    assert grad.shape == (240, 240) and grad.dtype == np.float32
    assert (grad >= 0).all() and grad.max() > 0
    # Reference: autograd through the same deploy model, by hand.
    x = torch.tensor(px, dtype=torch.float32)[None].requires_grad_(True)
    s = model.deploy_model()(x)[0][0]
    s.backward()
    assert np.allclose(grad, x.grad[0].abs().mean(-1).numpy(), atol=1e-9)
    assert abs(score - s.item()) < 1e-6
    png = render(px, smooth(grad, 2.0), score, "t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
