"""CLIP-FSAC, the whole trainable model in one file (METHOD.md eq. 2-12).

Shapes: B = batch, C = embedding width (640 for ViT-B-16-plus-240).

    F        (B, C)  projected [CLS] image feature from the frozen image encoder
    T+, T-   (C,)    class text features from the prompt ensemble (unit length)
    AF       (B, C)  = a1 * A_f(F) + a2 * F                    eq. 2-3  image adapter
    AT+-     (C,)    = b1 * A_g(T+-) + b2 * T+-                eq. 4    text adapter
    psi      (2, C)  = [AT+; AT-]                              eq. 5
    Atten    (B, C)  = Linear(softmax(F psi^T / sqrt(C)) psi)  eq. 5    cross-attention
    CF       (B, C)  = AF + Atten                              eq. 6
    S+-      (B,)    softmax over s(CF, AT+-) / tau            eq. 10-11
    AS       (B,)    = S- / (S- + S+)                          eq. 12   anomaly score
    z        (B,)    = (s(CF, AT-) - s(CF, AT+)) / tau                  anomaly logit, AS = sigmoid(z)
    L_con            = (L_f2t + L_t2f) / 2, mean over pairs    eq. 7-9

Choices the paper leaves open are fields of `HeadConfig`, each documented there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as Fn
from torch import nn

from fsac.errors import FsacError


@dataclass
class HeadConfig:
    """Hyper-parameters of the CLIP-FSAC head. Defaults follow METHOD.md (MVTec AD)."""

    embed_dim: int = 640
    # eq. 3: AF = alpha1 * A_f(F) + alpha2 * F
    alpha1: float = 1.0
    alpha2: float = 1.0
    # eq. 4: AT = beta1 * A_g(T) + beta2 * T  (METHOD.md: 0.1 / 0.9 for MVTec AD, 1 / 1 for VisA)
    beta1: float = 0.1
    beta2: float = 0.9
    # eq. 11: scoring temperature. AUROC does not depend on it (AS is monotone in s- - s+);
    # it only shapes the [0, 1] score. 0.01 = CLIP's logit scale of 100.
    tau: float = 0.01
    # Open choice: eq. 7-9 carry no temperature; dividing the similarities by this is ours.
    loss_temperature: float = 1.0
    # Open choice: A_f is "a 2-layer MLP": Linear(C, C/r) - ReLU - Linear(C/r, C).
    image_adapter_layers: int = 2
    image_adapter_reduction: int = 4
    # Open choice: A_g is "1 MLP": read as one Linear(C, C) layer. >= 2 adds hidden layers.
    text_adapter_layers: int = 1
    text_adapter_reduction: int = 4
    # Ablation: without cross-attention, CF = AF.
    use_cross_attention: bool = True
    # Open choice: METHOD.md feeds the raw projected [CLS] feature F to the adapter and the
    # attention query. True L2-normalises F first (CLIP-Adapter style).
    normalize_image_feature: bool = False

    def __post_init__(self) -> None:
        # A NaN or infinite weight or temperature trains without complaint and writes a
        # checkpoint whose every logit is NaN (or 0): refuse it here, where both the options
        # and a hand-edited model.json pass. Names are the command-line options.
        for name in ("alpha1", "alpha2", "beta1", "beta2", "tau", "loss_temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise FsacError(f"--{name.replace('_', '-')} must be a finite number, got {value!r}")
        for name in ("tau", "loss_temperature"):
            if getattr(self, name) <= 0:
                raise FsacError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HeadConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown head settings: {sorted(unknown)}")
        return cls(**d)


def mlp(dim: int, layers: int, reduction: int) -> nn.Sequential:
    """`layers` Linear layers C -> C/r -> ... -> C with ReLU between them (not after the last)."""
    if layers < 1:
        raise ValueError("an adapter needs at least one layer")
    hidden = max(1, dim // reduction)
    widths = [dim] + [hidden] * (layers - 1) + [dim]
    mods: list[nn.Module] = []
    for i in range(layers):
        mods.append(nn.Linear(widths[i], widths[i + 1]))
        if i < layers - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


class ImageToTextAttention(nn.Module):
    """eq. 5: Atten = Linear(softmax(F psi^T / sqrt(C)) psi). Query = image feature F (B, C),
    keys = values = psi = [AT+; AT-] (2, C). Returns (B, C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, f: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(f @ psi.t() / math.sqrt(f.shape[-1]), dim=-1)  # (B, 2)
        return self.proj(weights @ psi)


class FSACHead(nn.Module):
    """Image adapter, text adapter and cross-attention, with T+ and T- as buffers."""

    def __init__(self, cfg: HeadConfig, t_pos: torch.Tensor, t_neg: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        c = cfg.embed_dim
        if t_pos.shape != (c,) or t_neg.shape != (c,):
            raise ValueError(f"text features must have shape ({c},), got {tuple(t_pos.shape)}, {tuple(t_neg.shape)}")
        self.image_adapter = mlp(c, cfg.image_adapter_layers, cfg.image_adapter_reduction)
        self.text_adapter = mlp(c, cfg.text_adapter_layers, cfg.text_adapter_reduction)
        self.cross_attention = ImageToTextAttention(c)
        self.register_buffer("t_pos", t_pos.detach().clone().float())
        self.register_buffer("t_neg", t_neg.detach().clone().float())

    # Parameter groups of the two training stages.
    def stage1_parameters(self) -> list[nn.Parameter]:
        params = list(self.image_adapter.parameters())
        if self.cfg.use_cross_attention:
            params += list(self.cross_attention.parameters())
        return params

    def stage2_parameters(self) -> list[nn.Parameter]:
        return list(self.text_adapter.parameters())

    def adapted_text(self, use_text_adapter: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """eq. 4 -> (AT+, AT-), each (C,). Stage 1 trains with the text side fixed (AT = T)."""
        if not use_text_adapter:
            return self.t_pos, self.t_neg
        b1, b2 = self.cfg.beta1, self.cfg.beta2
        t = torch.stack([self.t_pos, self.t_neg])  # (2, C)
        at = b1 * self.text_adapter(t) + b2 * t
        return at[0], at[1]

    def fuse(self, f: torch.Tensor, at_pos: torch.Tensor, at_neg: torch.Tensor) -> torch.Tensor:
        """eq. 2-6: image feature F (B, C) -> fused feature CF (B, C)."""
        if self.cfg.normalize_image_feature:
            f = Fn.normalize(f, dim=-1)
        af = self.cfg.alpha1 * self.image_adapter(f) + self.cfg.alpha2 * f
        if not self.cfg.use_cross_attention:
            return af
        psi = torch.stack([at_pos, at_neg])  # (2, C)
        return af + self.cross_attention(f, psi)

    def forward(self, f: torch.Tensor, use_text_adapter: bool = True):
        """F (B, C) -> ScoreOutputs (AS, z, s(CF, AT+), s(CF, AT-)), each (B,)."""
        at_pos, at_neg = self.adapted_text(use_text_adapter)
        cf = self.fuse(f, at_pos, at_neg)
        return anomaly_score(cf, at_pos, at_neg, self.cfg.tau)


def similarities(cf: torch.Tensor, at_pos: torch.Tensor, at_neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine s(CF, AT+) and s(CF, AT-), each (B,)."""
    cfn = Fn.normalize(cf, dim=-1)
    return cfn @ Fn.normalize(at_pos, dim=-1), cfn @ Fn.normalize(at_neg, dim=-1)


class ScoreOutputs(NamedTuple):
    """eq. 10-12 for a batch, each (B,). Field order = the model file's outputs."""

    score: torch.Tensor  # AS = S- / (S- + S+) = sigmoid(logit), for people (saturates in float32)
    logit: torch.Tensor  # z = (sim_anomalous - sim_normal) / tau: ranks and decides
    sim_normal: torch.Tensor  # s(CF, AT+)
    sim_anomalous: torch.Tensor  # s(CF, AT-)


def anomaly_score(cf: torch.Tensor, at_pos: torch.Tensor, at_neg: torch.Tensor, tau: float) -> ScoreOutputs:
    """eq. 10-12. S+- = softmax of s(CF, AT+-)/tau and AS = S- / (S- + S+); a two-way
    softmax is the sigmoid of the difference, so AS = sigmoid(z) with the logit
    z = (s(CF, AT-) - s(CF, AT+)) / tau, computed directly (it does not saturate)."""
    sim_normal, sim_anomalous = similarities(cf, at_pos, at_neg)
    logit = (sim_anomalous - sim_normal) / tau
    return ScoreOutputs(torch.sigmoid(logit), logit, sim_normal, sim_anomalous)


def zero_shot_score(f: torch.Tensor, t_pos: torch.Tensor, t_neg: torch.Tensor, tau: float):
    """k = 0 baseline (WinCLIP image-level zero-shot): eq. 10-12 on the raw F and T+-."""
    return anomaly_score(f, t_pos, t_neg, tau)


def contrastive_loss(cf_pos: torch.Tensor, cf_neg: torch.Tensor, at_pos: torch.Tensor, at_neg: torch.Tensor,
                     temperature: float = 1.0) -> torch.Tensor:
    """eq. 7-9, fusion-text contrastive loss over B (normal, synthetic) pairs -> scalar.

    -log(e^a / (e^a + e^b)) is written softplus(b - a) for numerical stability.
    """
    s_pp, s_pn = similarities(cf_pos, at_pos, at_neg)  # s(CF+, AT+), s(CF+, AT-)
    s_np, s_nn = similarities(cf_neg, at_pos, at_neg)  # s(CF-, AT+), s(CF-, AT-)
    t = temperature
    l_f2t = Fn.softplus((s_pn - s_pp) / t) + Fn.softplus((s_np - s_nn) / t)
    l_t2f = Fn.softplus((s_np - s_pp) / t) + Fn.softplus((s_pn - s_nn) / t)
    return (0.5 * (l_f2t + l_t2f)).mean()


class PixelNormalize(nn.Module):
    """(N, S, S, 3) uint8 RGB pixels -> (N, 3, S, S) float, normalised by the CLIP mean/std.

    The only normalisation in fsac: training runs it in PyTorch and export puts it in the
    ONNX graph, so the runtime feeds the uint8 pixels of `fsac.preprocess.resize_crop`.
    """

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("scale", (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(1, 3, 1, 1))
        self.register_buffer("shift", (torch.tensor(mean, dtype=torch.float32) / torch.tensor(std)).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # Cast first, then transpose: the same numbers, and TensorRT accepts a uint8 network
        # input only when it feeds a Cast.
        x = pixels.float().permute(0, 3, 1, 2)
        return x * self.scale - self.shift


class DeployModel(nn.Module):
    """What `fsac export` traces: uint8 pixels -> (score, logit, sim_normal, sim_anomalous).

    Image encoder + image adapter + cross-attention, with AT+ and AT- folded in as constants
    (METHOD.md "Scoring": after training the text side is fixed).
    """

    def __init__(self, visual: nn.Module, normalize: PixelNormalize, head: FSACHead,
                 use_text_adapter: bool = True):
        super().__init__()
        self.visual = visual
        self.normalize = normalize
        self.head = head
        with torch.no_grad():
            at_pos, at_neg = head.adapted_text(use_text_adapter)
        self.register_buffer("at_pos", at_pos.detach().clone())
        self.register_buffer("at_neg", at_neg.detach().clone())

    def forward(self, pixels: torch.Tensor):
        f = self.visual(self.normalize(pixels))
        cf = self.head.fuse(f, self.at_pos, self.at_neg)
        return tuple(anomaly_score(cf, self.at_pos, self.at_neg, self.head.cfg.tau))
