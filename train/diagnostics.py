"""What a training run did, checked once it has run: `training_diagnostics` (recorded in the
checkpoint and the reports, with its warnings) and `check_finite` (a diverged run is refused
before anything is written). Shapes: f_pos (k, C) normal shots, f_neg (k, m, C) synthetic
anomalies."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as Fn

from fsac.errors import FsacError

from fsac.train.model import FSACHead

# Below this cosine the adapted prototypes point apart: A_g has overwhelmed the beta2 * T
# residual that keeps the text side near CLIP's (seen: 0.991 -> -0.988 in a 4-shot run).
MIN_PROTOTYPE_COSINE = 0.0


@torch.no_grad()
def training_diagnostics(head: FSACHead, use_text_adapter: bool, f_pos: torch.Tensor, f_neg: torch.Tensor) -> dict:
    """What training did to the text side and how far apart it pushed the training pairs.

    cos_t / cos_at     cos(T+, T-) from CLIP's prompts / cos(AT+, AT-) after the text adapter
    adapter_ratio      ||beta1 A_g(T)|| / ||beta2 T|| for T+ and T- (1: adapter as large as the residual)
    pair_gap           mean logit of the synthetic anomalies - mean logit of the normal shots
    pair_margin        min synthetic logit - max normal logit (> 0: every pair separated)
    """
    cfg = head.cfg
    at_pos, at_neg = head.adapted_text(use_text_adapter)
    d: dict = {
        "cos_t": float(Fn.cosine_similarity(head.t_pos, head.t_neg, dim=0)),
        "cos_at": float(Fn.cosine_similarity(at_pos, at_neg, dim=0)),
        "text_adapter_used": bool(use_text_adapter),
    }
    if use_text_adapter:
        t = torch.stack([head.t_pos, head.t_neg])
        ratio = (cfg.beta1 * head.text_adapter(t)).norm(dim=-1) / (cfg.beta2 * t).norm(dim=-1).clamp_min(1e-12)
        d["adapter_ratio"] = {"normal": float(ratio[0]), "anomalous": float(ratio[1])}
    head.eval()
    z_pos = head(f_pos, use_text_adapter).logit.double()
    z_neg = head(f_neg.reshape(-1, f_neg.shape[-1]), use_text_adapter).logit.double()
    d["pair_gap"] = float(z_neg.mean() - z_pos.mean())
    d["pair_margin"] = float(z_neg.min() - z_pos.max())
    warnings = []
    if d["cos_at"] < MIN_PROTOTYPE_COSINE:
        warnings.append(
            f"the text adapter has overwhelmed the residual: cos(AT+, AT-) = {d['cos_at']:.3f} (CLIP's prompts: "
            f"{d['cos_t']:.3f}), so beta no longer keeps the text side near CLIP's; try a smaller --beta1, a larger "
            "--beta2, fewer --epochs2 or --lr2")
    d["warnings"] = warnings
    return d


@torch.no_grad()
def check_finite(head: FSACHead, use_text_adapter: bool, history: dict[str, list[float]], f_pos: torch.Tensor) -> None:
    """Refuse a diverged training run (finite options can still overflow, e.g. --lr1 1e20):
    its checkpoint would score every image NaN, and `fsac train` would write it as if it
    were a model."""
    for stage, losses in history.items():
        bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
        if bad is not None:
            raise FsacError(f"training diverged: the {stage} loss became {losses[bad]} at epoch {bad + 1}; "
                            "lower --lr1 / --lr2 or check --alpha1/--alpha2/--beta1/--beta2")
    tensors = dict(head.named_parameters())
    tensors["AT+"], tensors["AT-"] = head.adapted_text(use_text_adapter)
    tensors["logit"] = head(f_pos, use_text_adapter).logit
    bad_name = next((n for n, t in tensors.items() if not torch.isfinite(t).all()), None)
    if bad_name is not None:
        raise FsacError(f"training diverged: {bad_name} is not finite (NaN or inf); "
                        "lower --lr1 / --lr2 or check --alpha1/--alpha2/--beta1/--beta2/--tau")
