"""`fsac explain`: where in the image the anomaly evidence comes from (paper Fig. 5).

grad_map = mean over colour channels of |d z / d x|, with z the anomaly logit and x the
model's input pixels (S, S, 3) after `fsac.preprocess.resize_crop`, so the map lines up with
the picture shown. The paper draws |d AS / d x|; since AS = sigmoid(z),
d AS / dx = AS (1 - AS) dz/dx: the same map scaled by a factor that underflows to zero on any
confidently scored image (AS = 1.0 in float32), which left the map blank. The logit's
gradient has the paper's shape and survives confidence.

The forward runs the last encoder block for [CLS] alone (`fsac.train.last_block`), as the
exported file and training do: z reads token 0 only, so the gradient is the same (the other
tokens still reach it as keys and values) and the block's other rows are never computed
(full architecture, AVX2 EPYC: forward + backward 813 -> 779 ms, 4 %).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from fsac.io import atomic_write_bytes
from fsac.preprocess import preprocess_file
from fsac.score import score_from_logit, verdict
from fsac.train.checkpoint import TrainedModel
from fsac.train.last_block import last_block


def gradient_map(model: TrainedModel, pixels: np.ndarray) -> tuple[float, np.ndarray]:
    """(S, S, 3) uint8 -> (logit z, (S, S) float32 map of mean_c |d z / d x|)."""
    deploy = model.deploy_model()
    x = torch.tensor(pixels, dtype=torch.float32, device=model.backbone.device)[None].requires_grad_(True)
    with last_block(deploy):
        logit = deploy(x)[1][0]
        (grad,) = torch.autograd.grad(logit, x)
    return float(logit.detach()), grad[0].abs().mean(dim=-1).cpu().numpy().astype(np.float32)


def smooth(grad: np.ndarray, sigma: float) -> np.ndarray:
    """Optional Gaussian smoothing for readability (sigma in pixels; 0 = raw, as in the paper)."""
    if sigma <= 0:
        return grad
    import cv2

    return cv2.GaussianBlur(grad, (0, 0), sigmaX=sigma)


def render(pixels: np.ndarray, grad: np.ndarray, logit: float, title: str,
           logit_threshold: float | None = None) -> bytes:
    """PNG bytes: the input image, the gradient map, and the map over the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = grad / (grad.max() + 1e-12)
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.8))
    axes[0].imshow(pixels)
    axes[0].set_title("model input")
    axes[1].imshow(g, cmap="inferno")
    axes[1].set_title("|dz/dx| (channel mean)")
    axes[2].imshow(pixels)
    axes[2].imshow(g, cmap="jet", alpha=0.45)
    said = "" if logit_threshold is None else " " + verdict(logit, logit_threshold)
    axes[2].set_title(f"z = {logit:.3f}, AS = {score_from_logit(logit):.6g}{said}")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def explain_names(images: list[str | Path]) -> list[str]:
    """Output file names `<stem>_explain.png`, one per image. Images with the same stem
    (good/000.png, broken/000.png) used to write the same file, the later map silently
    replacing the earlier: those get their parent folder's name too, then a number."""
    stems = [Path(p).stem for p in images]
    used: set[str] = set()
    names = []
    for stem, p in zip(stems, images):
        base = stem if stems.count(stem) == 1 else f"{stem}_{Path(p).parent.name}"
        name, n = f"{base}_explain.png", 1
        while name in used:
            n += 1
            name = f"{base}_{n}_explain.png"
        used.add(name)
        names.append(name)
    return names


def explain_image(model: TrainedModel, image: str | Path, out: str | Path, sigma: float = 0.0,
                  note: str = "") -> tuple[float, Path]:
    """Score one image file and write its explanation PNG. -> (logit z, path)."""
    pixels = preprocess_file(image, model.backbone.spec)
    logit, grad = gradient_map(model, pixels)
    title = f"{Path(image).name}  |  {model.backbone.info.arch} / {model.backbone.info.weights_id}{note}"
    path = atomic_write_bytes(out, render(pixels, smooth(grad, sigma), logit, title))
    return logit, path
