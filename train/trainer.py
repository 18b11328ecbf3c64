"""Two-stage CLIP-FSAC training (METHOD.md "Two-stage training").

Both CLIP encoders are frozen, so every image goes through the image encoder exactly once:
the k normal shots and their k x m synthetic anomalies are encoded up front (with a progress
bar) and the adapters then train on the cached features, which takes seconds.

    stage 1: train A_f and the cross-attention's Linear with L_con, text side fixed (AT = T);
             Adam, lr 5e-4, 100 epochs
    stage 2: freeze them, train A_g with L_con; Adam, lr 1e-4, 100 epochs
    batch  : the k normal images with one synthetic anomaly each (k pairs); an epoch visits
             all m synthetic anomalies of every image, so it is m steps

Ablations (`TrainConfig.mode`): "two-stage" (default), "joint" (both adapters at once, stage-1
lr and epochs), "one-stage" (stage 1 only; scoring then uses AT = T). HeadConfig's
`use_cross_attention=False` gives the no-cross-attention ablation.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fsac.errors import FsacError
from fsac.io import sha256_file
from fsac.preprocess import preprocess_file, stack
from fsac.train.backbone import Backbone
from fsac.train import precision as encoder_precisions
from fsac.train.checkpoint import TrainedModel
from fsac.train.diagnostics import check_finite, training_diagnostics
from fsac.train.model import FSACHead, HeadConfig, contrastive_loss
from fsac.train.presets import DEFAULT_PRESET, PRESETS, overrides
from fsac.train.prompts import build_prompts
from fsac.train.synth import SynthConfig, generate

log = logging.getLogger("fsac")

MODES = ("two-stage", "joint", "one-stage")


@dataclass
class TrainConfig:
    mode: str = "two-stage"
    stage1_epochs: int = 100
    stage2_epochs: int = 100
    stage1_lr: float = 5e-4
    stage2_lr: float = 1e-4
    seed: int = 0
    head: HeadConfig = field(default_factory=HeadConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    # The benchmark preset the settings not given explicitly came from (train/presets.py). The
    # defaults of HeadConfig and SynthConfig are the MVTec AD preset's, so that is the default.
    preset: str | None = DEFAULT_PRESET
    # Frozen image encoder in bf16 ("bf16"/"auto", a bf16 copy of its weights): the
    # first shot is also encoded in fp32 and the cosine of its features is recorded; auto
    # (bf16 where the hardware has it) falls back to fp32 below precision.BF16_MIN_COSINE.
    encoder_precision: str = "auto"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise FsacError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("stage1_epochs", "stage2_epochs"):
            if getattr(self, name) < 0:
                raise FsacError(f"{name} must be >= 0")
        if self.encoder_precision not in ("fp32", "bf16", "auto"):
            raise FsacError(f"encoder_precision must be fp32, bf16 or auto, got {self.encoder_precision!r}")
        for name in ("stage1_lr", "stage2_lr"):
            # inf passes `> 0` and turns every adapter weight into NaN after one step.
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise FsacError(f"{name} must be > 0 and finite (--lr{name[5]}), got {getattr(self, name)!r}")
        if self.preset is not None and self.preset not in PRESETS:
            raise FsacError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        # From the values actually used, never from what was asked: the record cannot disagree
        # with the settings it describes (a config built in code can differ from its preset).
        d["preset_overrides"] = overrides(self.preset, {"beta1": self.head.beta1, "beta2": self.head.beta2,
                                                        "synth": self.synth.kind})
        return d


@dataclass
class TrainResult:
    model: TrainedModel
    history: dict[str, list[float]]  # loss per epoch, per stage
    timings: dict[str, float]  # seconds
    train_images: list[dict]  # name + sha256 of each shot
    shot_pixels: np.ndarray  # (k, S, S, 3) uint8, the shots as the model saw them
    synth: list  # (k, m) SynthSample: the synthetic anomalies, for `--write-synth`
    diagnostics: dict = field(default_factory=dict)  # `fsac.train.diagnostics.training_diagnostics`


Progress = Callable[[str, int], Callable[[int], None]]  # (description, total) -> update(n)


def tqdm_progress(quiet: bool) -> Progress:
    """A tqdm bar factory, or a no-op one for --quiet."""

    def factory(desc: str, total: int):
        if quiet:
            return lambda n: None
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit="epoch" if "epoch" in desc else "img", leave=False, file=sys.stderr)

        def update(n: int) -> None:
            bar.update(n)
            if bar.n >= bar.total:
                bar.close()

        return update

    return factory


class FeatureCache:
    """Image features F keyed by file path: each file goes through the encoder once per run,
    however many seeds and shot counts an evaluation sweeps."""

    def __init__(self, backbone: Backbone, precision: str = "fp32"):
        self.backbone = backbone
        self.precision = precision  # one precision per cache: features of both never mix
        self._feats: dict[str, torch.Tensor] = {}

    def __contains__(self, path) -> bool:
        return str(path) in self._feats

    def get(self, paths: list[Path]) -> torch.Tensor:
        """(N, C) features of already cached paths."""
        return torch.stack([self._feats[str(p)] for p in paths]) if paths else torch.zeros(0, self.backbone.info.embed_dim)

    def add(self, paths: list[Path], pixels: np.ndarray, progress: Callable[[int], None] | None = None) -> None:
        feats = self.backbone.encode_images(pixels, progress=progress, precision=self.precision)
        for p, f in zip(paths, feats):
            self._feats[str(p)] = f


def load_training_images(paths: list[Path], backbone: Backbone) -> np.ndarray:
    """Decode + resize the shots. A bad image is an error naming the file: training on fewer
    shots than the user gave would silently change the model."""
    return stack(preprocess_file(p, backbone.spec) for p in paths)


def text_features(backbone: Backbone, object_name: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """T+ and T- (each (C,)) from the compositional prompt ensemble for `object_name`."""
    normal, anomalous = build_prompts(object_name)
    t_pos = backbone.class_text_features(normal)
    t_neg = backbone.class_text_features(anomalous)
    return t_pos, t_neg, {"normal": normal, "anomalous": anomalous}


def cached_text(backbone: Backbone, object_name: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """`text_features` through the on-disk cache (fsac.train.text_cache)."""
    from fsac.train.text_cache import cached_text_features

    t_pos, t_neg, prompts, _status = cached_text_features(backbone, object_name, text_features)
    return t_pos, t_neg, prompts


def feature_agreement(fp32: torch.Tensor, low: torch.Tensor) -> dict:
    """Cosine of low-precision encoder features with fp32 ones, per image: min and mean."""
    cos = torch.nn.functional.cosine_similarity(fp32.float(), low.float(), dim=-1)
    return {"images": int(cos.numel()), "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}


def adam(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam with its fused kernel (one call per step for all parameters) where this torch has it
    for the parameters' device: the adapters are tiny, so the per-tensor Python loop of the
    default implementation was most of a step (measured on 2 CPU cores, 400 steps a stage:
    stage 1 1.44 -> 0.96 s, stage 2 1.06 -> 0.82 s; the loss agrees to 6 digits)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch or an unsupported device / dtype
        return torch.optim.Adam(params, lr=lr)


def _run_stage(head: FSACHead, params: list[torch.nn.Parameter], lr: float, epochs: int,
               f_pos: torch.Tensor, f_neg: torch.Tensor, use_text_adapter: bool, temperature: float,
               generator: torch.Generator, update: Callable[[int], None] | None = None) -> list[float]:
    """One training stage on cached features: f_pos (k, C), f_neg (k, m, C)."""
    if epochs == 0 or not params:
        return []
    for p in head.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = adam(params, lr)
    head.train()
    m = f_neg.shape[1]
    losses = []
    for _ in range(epochs):
        total = 0.0
        for j in torch.randperm(m, generator=generator).tolist():
            at_pos, at_neg = head.adapted_text(use_text_adapter)
            loss = contrastive_loss(head.fuse(f_pos, at_pos, at_neg), head.fuse(f_neg[:, j], at_pos, at_neg),
                                    at_pos, at_neg, temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        losses.append(total / m)
        if update:
            update(1)
    for p in head.parameters():
        p.requires_grad_(False)
    head.eval()
    return losses


@contextmanager
def torch_threads(n: int):
    """Run a block with `n` intra-op threads. The adapters are tiny (a few 640x640 matmuls per
    step): on a CPU, waking a second thread for each op costs more than the op itself
    (measured: 640-d stage 1 took 2.9 s with 1 thread, 35 s with 2 on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_head(f_pos: torch.Tensor, f_neg: torch.Tensor, t_pos: torch.Tensor, t_neg: torch.Tensor,
               cfg: TrainConfig, on_stage_end: Callable[[str, FSACHead], None] | None = None,
               progress: Progress | None = None):
    """Train a fresh head on cached features. f_pos (k, C), f_neg (k, m, C).

    -> (head, use_text_adapter, history, timings). `on_stage_end(stage, head)` lets tests
    inspect the head between stages; `progress` draws a bar per stage (epochs).
    """
    if f_pos.ndim != 2 or f_neg.ndim != 3 or f_neg.shape[0] != f_pos.shape[0]:
        raise ValueError(f"expected f_pos (k, C) and f_neg (k, m, C), got {tuple(f_pos.shape)}, {tuple(f_neg.shape)}")
    with torch_threads(1):
        return _train_head(f_pos, f_neg, t_pos, t_neg, cfg, on_stage_end, progress or tqdm_progress(True))


def _train_head(f_pos, f_neg, t_pos, t_neg, cfg: TrainConfig, on_stage_end, progress: Progress):
    torch.manual_seed(cfg.seed)  # adapter initialisation
    head = FSACHead(cfg.head, t_pos, t_neg)
    gen = torch.Generator().manual_seed(cfg.seed)
    t = cfg.head.loss_temperature
    history: dict[str, list[float]] = {}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if cfg.mode == "joint":
        params = head.stage1_parameters() + head.stage2_parameters()
        history["joint"] = _run_stage(head, params, cfg.stage1_lr, cfg.stage1_epochs, f_pos, f_neg, True, t, gen,
                                      progress("joint training (epochs)", cfg.stage1_epochs))
        timings["joint_s"] = time.perf_counter() - t0
        return head, True, history, timings
    history["stage1"] = _run_stage(head, head.stage1_parameters(), cfg.stage1_lr, cfg.stage1_epochs,
                                   f_pos, f_neg, False, t, gen, progress("stage 1 (epochs)", cfg.stage1_epochs))
    timings["stage1_s"] = time.perf_counter() - t0
    if on_stage_end:
        on_stage_end("stage1", head)
    if cfg.mode == "one-stage":
        return head, False, history, timings
    t0 = time.perf_counter()
    history["stage2"] = _run_stage(head, head.stage2_parameters(), cfg.stage2_lr, cfg.stage2_epochs,
                                   f_pos, f_neg, True, t, gen, progress("stage 2 (epochs)", cfg.stage2_epochs))
    timings["stage2_s"] = time.perf_counter() - t0
    if on_stage_end:
        on_stage_end("stage2", head)
    return head, True, history, timings


def train(backbone: Backbone, image_paths: list[Path], object_name: str, cfg: TrainConfig,
          quiet: bool = False, cache: FeatureCache | None = None,
          text: tuple[torch.Tensor, torch.Tensor, dict] | None = None) -> TrainResult:
    """Full training run: shots -> synthetic anomalies -> cached features -> two stages."""
    if not image_paths:
        raise FsacError("no training images given")
    if backbone.info.embed_dim != cfg.head.embed_dim:
        # The head's width follows the backbone; the rest of the config is the user's.
        cfg = replace(cfg, head=replace(cfg.head, embed_dim=backbone.info.embed_dim))
    progress = tqdm_progress(quiet)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    t0 = time.perf_counter()
    pixels = load_training_images(image_paths, backbone)
    timings["load_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    synth = generate(list(pixels), cfg.synth)
    k, m = len(synth), cfg.synth.per_image
    synth_pixels = stack(s.image for row in synth for s in row)
    timings["synth_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if text is None:
        text = cached_text(backbone, object_name)
    t_pos, t_neg, prompts = text
    timings["text_s"] = time.perf_counter() - t0
    if cache is not None:
        precision = cache.precision
    else:
        precision = encoder_precisions.resolve_encoder_precision(cfg.encoder_precision, backbone.device)

    t0 = time.perf_counter()
    # The bar counts only images actually encoded: shots already in the cache are not.
    todo = [i for i, p in enumerate(image_paths) if cache is None or p not in cache]
    update = progress("encoding images", len(todo) + k * m)
    if cache is not None:
        if todo:
            cache.add([image_paths[i] for i in todo], pixels[todo], update)
        f_pos = cache.get(image_paths)
    else:
        f_pos = backbone.encode_images(pixels, progress=update, precision=precision)
    f_neg = backbone.encode_images(synth_pixels, progress=update, precision=precision).view(k, m, -1)
    timings["features_s"] = time.perf_counter() - t0
    encoder = {"precision": precision}
    if precision != "fp32":
        # What bf16 costs in the features, on the first shot: an fp32 pass costs as much as
        # two bf16 ones, so checking every shot would eat the time bf16 saves.
        t0 = time.perf_counter()
        encoder["vs_fp32"] = agreement = feature_agreement(backbone.encode_images(pixels[:1]), f_pos[:1])
        timings["encoder_check_s"] = time.perf_counter() - t0
        bound = encoder_precisions.BF16_MIN_COSINE
        if agreement["cosine_min"] < bound and cfg.encoder_precision == "auto" and cache is None:
            log.warning("encoder bf16: feature cosine vs fp32 %.5f < %.4g on the first shot; encoding the "
                        "images again in fp32 (--encoder-precision fp32 skips the bf16 attempt)",
                        agreement["cosine_min"], bound)
            t0 = time.perf_counter()
            f_pos = backbone.encode_images(pixels, precision="fp32")
            f_neg = backbone.encode_images(synth_pixels, precision="fp32").view(k, m, -1)
            timings["features_s"] += time.perf_counter() - t0
            encoder = {"precision": "fp32", "bf16_rejected": agreement}
        elif agreement["cosine_min"] < bound:
            log.warning("encoder %s: feature cosine vs fp32 %.5f < %.4g on the first shot", precision,
                        agreement["cosine_min"], bound)

    head, use_text_adapter, history, stage_times = train_head(f_pos, f_neg, t_pos, t_neg, cfg, progress=progress)
    timings.update(stage_times)
    check_finite(head, use_text_adapter, history, f_pos)
    diagnostics = training_diagnostics(head, use_text_adapter, f_pos, f_neg)
    timings["total_s"] = time.perf_counter() - t_start
    head = head.to(backbone.device)
    # The absolute path lets `fsac export` find the shots again for its parity check.
    train_images = [{"name": Path(p).name, "path": str(Path(p).resolve()), "sha256": sha256_file(p)}
                    for p in image_paths]
    model = TrainedModel(backbone, head, use_text_adapter, object_name,
                         meta={"prompts": prompts, "encoder": encoder})
    return TrainResult(model, history, timings, train_images, pixels, synth, diagnostics)
