"""The frozen OpenCLIP backbone: build by name, load weights, encode images and prompts.

    load_backbone("ViT-B-16-plus-240", "laion400m_e31")   # open_clip downloads (needs internet)
    load_backbone("ViT-B-16-plus-240", "/path/model.safetensors")  # local checkpoint file
    load_backbone("ViT-B-16-plus-240", "random")          # offline pipeline runs: scores meaningless
    load_backbone("ViT-B-16-plus-240-tiny", "random")     # tiny config of the same family, for tests

A pretrained tag and a local file take the same path: the tag is resolved to a file in
open_clip's download cache (train/pretrained.py), then `load_weights_file` loads it (safetensors, or torch's
restricted `weights_only` loader for open_clip's .bin/.pt files) and records its sha256.
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fsac.errors import FsacError
from fsac.io import sha256_file
from fsac.preprocess import PreprocessSpec
from fsac.train.last_block import last_block
from fsac.train.model import PixelNormalize
from fsac.train.pretrained import RANDOM_WEIGHTS, quiet_logger, resolve_weights

log = logging.getLogger("fsac")

DEFAULT_ARCH = "ViT-B-16-plus-240"
DEFAULT_WEIGHTS = "laion400m_e31"
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"

RANDOM_WEIGHTS_WARNING = (
    "!" * 78 + "\n"
    "!! fsac: RANDOM BACKBONE WEIGHTS. No pretrained CLIP weights are loaded, so every\n"
    "!! score, metric and threshold of this run is MEANINGLESS. Use it to test the pipeline\n"
    "!! only. For real use: --weights laion400m_e31 (downloads) or --weights PATH.\n" + "!" * 78
)

_configs_registered = False


def _register_configs() -> None:
    global _configs_registered
    if not _configs_registered:
        import open_clip

        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _configs_registered = True


def available_archs() -> list[str]:
    _register_configs()
    import open_clip

    return open_clip.list_models()


@dataclass(frozen=True)
class BackboneInfo:
    """Identifies the frozen encoders; recorded in every checkpoint, report and model file."""

    arch: str
    weights_id: str  # pretrained tag, "file:<name>", or "random"
    weights_sha256: str | None
    embed_dim: int
    image_size: int
    random_init_seed: int = 0  # only meaningful when weights_id == "random"

    @property
    def is_random(self) -> bool:
        return self.weights_id == RANDOM_WEIGHTS

    def to_dict(self) -> dict:
        return asdict(self)


def load_weights_file(model: torch.nn.Module, path: Path, arch: str | None = None) -> None:
    """Load a CLIP checkpoint into `model` without unrestricted pickle.

    `model` is a full CLIP model, or a `VisualOnly` (then `arch` is needed): the file is
    still checked strictly against the whole CLIP architecture (every key and shape, text
    tower included), but only the image tower's tensors are kept."""
    import open_clip

    target = model
    if isinstance(model, VisualOnly):
        if arch is None:
            raise ValueError("loading into a VisualOnly model needs its arch")
        target = _meta_clip(arch, model.visual)
    try:
        with warnings.catch_warnings():
            # Copying into the meta text tower is a no-op by design (see _meta_clip).
            warnings.filterwarnings("ignore", message=".*meta parameter.*")
            open_clip.load_checkpoint(target, str(path), strict=True, weights_only=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0][:200]
        raise FsacError(f"{path}: checkpoint does not fit the model architecture ({first})") from None
    except Exception as e:
        raise FsacError(f"{path}: cannot load checkpoint ({type(e).__name__}: {str(e)[:200]})") from None


def _meta_clip(arch: str, visual: torch.nn.Module) -> torch.nn.Module:
    """The full CLIP model of `arch` with `visual` as its image tower and everything else on
    the meta device (shapes only: no memory, no initialisation, no RNG drawn). A strict
    load_state_dict into it checks every key and shape of a checkpoint, and fills `visual`."""
    import open_clip

    with quiet_logger(""), torch.device("meta"):
        model = open_clip.create_model(arch, pretrained=None, device="meta")
    model.visual = visual
    return model


class VisualOnly(torch.nn.Module):
    """A CLIP model's image tower alone, under the attribute name it has in CLIP (`visual`),
    so that state-dict keys and `model.visual` read the same as for the full model."""

    def __init__(self, visual: torch.nn.Module):
        super().__init__()
        self.visual = visual


def _check_arch(arch: str) -> dict:
    _register_configs()
    import open_clip

    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise FsacError(f"unknown model '{arch}' (e.g. {DEFAULT_ARCH}, {DEFAULT_ARCH}-tiny; `fsac models` lists all)")
    return cfg


def build_model(arch: str, random_init_seed: int = 0) -> torch.nn.Module:
    """An open_clip CLIP model of architecture `arch` with random initial weights.

    The initialisation is seeded (without touching the global RNG), so a run with random
    weights can be rebuilt bit-identically for export: the seed is recorded in BackboneInfo.
    """
    _check_arch(arch)
    import open_clip

    # open_clip warns "no pretrained weights" on the root logger; we warn ourselves.
    with quiet_logger(""), torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_init_seed)
        return open_clip.create_model(arch, pretrained=None, device="cpu")


def uninitialised(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """`build()` with its tensors allocated but not initialised, for a model a weights file
    is about to fill strictly: the random initialisation of the image tower costs 1.1-2.0 s
    on a 2-core CPU (117 M parameters), all of it overwritten by the file. Falls back to the
    initialised build when a tensor would not be in the file (a non-persistent buffer)."""
    with torch.device("meta"):
        model = build()
    filled = set(model.state_dict())
    if any(name not in filled for name, _ in model.named_buffers()):
        return build()
    return model.to_empty(device="cpu")


def build_visual(arch: str, random_init_seed: int = 0) -> VisualOnly:
    """The image tower of `build_model(arch, random_init_seed)`, bit-identical, without
    building (and randomly initialising) the text tower: about half the parameters of
    ViT-B-16-plus-240, which training needs only when the text-feature cache misses.

    Identical because open_clip's CLIP and CustomTextCLIP build the image tower first, from
    the freshly seeded RNG, and draw nothing before it (tested against `build_model`). Other
    model classes (CoCa) fall back to the full build.
    """
    cfg = _check_arch(arch)
    if "multimodal_cfg" in cfg or "hf_model_name" in cfg.get("text_cfg", {}):
        return VisualOnly(build_model(arch, random_init_seed).visual)
    from open_clip.model import _build_vision_tower

    with quiet_logger(""), torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_init_seed)
        visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], cfg.get("quick_gelu", False), None)
    return VisualOnly(visual)


class Backbone:
    """Frozen CLIP image and text encoders with the fsac preprocessing spec attached.

    `model` may hold the image tower only (`VisualOnly`): the text tower is then built by
    `text_loader` the first time prompts are encoded, i.e. only when the text-feature cache
    misses. Checkpoints store the text vectors, so export, eval and scoring never need it.
    """

    def __init__(self, model: torch.nn.Module, info: BackboneInfo, spec: PreprocessSpec, device: str = "cpu",
                 text_loader: Callable[[], torch.nn.Module] | None = None):
        self.model = model.eval().requires_grad_(False).to(device)
        self.info = info
        self.spec = spec
        self.device = device
        self.normalize = PixelNormalize(spec.mean, spec.std).to(device)
        self._text_loader = text_loader
        self._tokenizer = None

    @property
    def has_text_tower(self) -> bool:
        return not isinstance(self.model, VisualOnly)

    @property
    def tokenizer(self):
        if self._tokenizer is None:  # building the BPE tables costs ~0.1 s: only when prompts are encoded
            import open_clip

            self._tokenizer = open_clip.get_tokenizer(self.info.arch)
        return self._tokenizer

    def text_model(self) -> torch.nn.Module:
        """The full CLIP model, its text tower built on first use (same weights as a full build)."""
        if not self.has_text_tower:
            if self._text_loader is None:
                raise FsacError("this backbone was built without its text tower and cannot encode prompts")
            full = self._text_loader()
            full.visual = self.model.visual  # keep the one image tower (and its memory) already loaded
            self.model = full.eval().requires_grad_(False).to(self.device)
        return self.model

    # Image side ---------------------------------------------------------------------

    @property
    def visual(self) -> torch.nn.Module:
        return self.model.visual

    @torch.no_grad()
    def encode_images(self, images: np.ndarray, batch_size: int = 8,
                      progress: Callable[[int], None] | None = None, precision: str = "fp32",
                      last_block_mode: str = "class-token") -> torch.Tensor:
        """(N, S, S, 3) uint8 RGB -> (N, C) projected [CLS] features F (not normalised), float32.

        precision "bf16" runs a bf16 copy of the frozen encoder (AMX / AVX-512 BF16 on a CPU,
        tensor cores on a GPU; see `resolve_encoder_precision`). A bf16 copy of the weights,
        not torch.autocast: autocast re-casts every weight at every call, and measured on a
        2-core AMX Xeon it was 2.5x *slower* than fp32 (1.74 vs 0.70 s per image) while the
        bf16 copy was 2x faster (0.36 s), with the same features (cosine 1.0000).

        last_block_mode "class-token" (the default) runs the last block for token 0 alone,
        as `fsac export` traces it; "all-tokens" runs it for every token (same features)."""
        if images.ndim != 4 or images.shape[1:] != (self.spec.image_size, self.spec.image_size, 3):
            raise FsacError(
                f"expected images of shape (N, {self.spec.image_size}, {self.spec.image_size}, 3), got {images.shape}"
            )
        visual = self._bf16_visual() if precision == "bf16" else self.visual
        out = []
        # Only [CLS] leaves the last block (train/last_block.py): the same features, about 10 %
        # fewer multiply-adds on ViT-B-16-plus-240; "all-tokens" runs the block as it is.
        with last_block(visual, last_block_mode):
            for i in range(0, len(images), batch_size):
                # A read-only array (pixels from a memory-mapped cache) is copied: torch warns otherwise.
                x = torch.from_numpy(np.require(images[i : i + batch_size], requirements=("C", "W"))).to(self.device)
                x = self.normalize(x)
                out.append(visual(x.to(torch.bfloat16) if precision == "bf16" else x).float().cpu())
                if progress:
                    progress(len(x))
        return torch.cat(out) if out else torch.zeros(0, self.info.embed_dim)

    def _bf16_visual(self) -> torch.nn.Module:
        """The image encoder with its weights in bf16, built once (frozen, so never stale)."""
        if getattr(self, "_visual_bf16", None) is None:
            import copy

            self._visual_bf16 = copy.deepcopy(self.visual).to(torch.bfloat16).eval()
        return self._visual_bf16

    # Text side ----------------------------------------------------------------------

    @torch.no_grad()
    def encode_texts(self, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Prompts -> (P, C) projected [EOS] text features g (not normalised)."""
        out = []
        for i in range(0, len(prompts), batch_size):
            tokens = self.tokenizer(prompts[i : i + batch_size]).to(self.device)
            out.append(encode_text_truncated(self.text_model(), tokens).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def class_text_features(self, prompts: list[str]) -> torch.Tensor:
        """METHOD.md: T = mean of the L2-normalised prompt features, re-normalised. -> (C,)"""
        feats = torch.nn.functional.normalize(self.encode_texts(prompts), dim=-1)
        return torch.nn.functional.normalize(feats.mean(dim=0), dim=-1)


def encode_text_truncated(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's CLIP.encode_text, run only up to the longest prompt's [EOS] token.

    The text transformer is causal, so the [EOS] output depends only on the tokens before
    it: cutting the padded 77-token context to the longest prompt gives the same features
    (tested against `encode_text`) about 4x faster for the CPE's short prompts.
    """
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask", "text_projection")
    if not all(hasattr(model, n) for n in needed) or getattr(model, "text_pool_type", "argmax") != "argmax":
        return model.encode_text(tokens)
    eos = tokens.argmax(dim=-1)
    length = int(eos.max().item()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    attn_mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    x = model.transformer(x, attn_mask=attn_mask)
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), eos]
    proj = model.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return x


def preprocess_spec_for(model: torch.nn.Module, arch: str, weights: str, resize_mode: str = "squash") -> PreprocessSpec:
    """The preprocessing the backbone's weights expect (mean/std/interpolation from open_clip)."""
    import open_clip

    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    cfg = open_clip.get_pretrained_cfg(arch, weights) if weights not in (RANDOM_WEIGHTS,) else {}
    mean = tuple(cfg.get("mean") or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(cfg.get("std") or open_clip.OPENAI_DATASET_STD)
    interpolation = cfg.get("interpolation") or "bicubic"
    return PreprocessSpec(image_size=size, resize_mode=resize_mode, interpolation=interpolation, mean=mean, std=std)


def load_backbone(arch: str = DEFAULT_ARCH, weights: str = DEFAULT_WEIGHTS, device: str | None = None,
                  cache_dir: str | None = None, resize_mode: str = "squash", random_init_seed: int = 0,
                  quiet: bool = False, text_tower: bool = False,
                  weights_loader: Callable[[torch.nn.Module, Path, str], None] | None = None) -> Backbone:
    """Build the frozen backbone. See the module docstring for `weights`.

    By default only the image tower is built now (`build_visual`, or a weights file loaded
    strictly into it); the text tower follows on the first prompt encoding. `text_tower`
    builds both at once. `weights_loader(model, path, arch)` reads a weights file into the
    image tower instead of `load_weights_file` (`fsac export` streams it, one tensor at a time)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    path, weights_id = resolve_weights(arch, weights, cache_dir)
    if text_tower:
        model = build_model(arch, random_init_seed)  # (its text tower has a non-persistent buffer)
    elif path is not None and weights_loader is None:
        model = uninitialised(lambda: build_visual(arch, random_init_seed))
    else:  # random weights; or fsac export's streaming loader, which spills tensors as they are built
        model = build_visual(arch, random_init_seed)
    sha = None
    if path is not None:
        (weights_loader or load_weights_file)(model, path, arch)
        sha = sha256_file(path)
    elif not quiet:
        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr)

    def text_loader() -> torch.nn.Module:
        full = build_model(arch, random_init_seed)
        if path is not None:
            if sha256_file(path) != sha:
                raise FsacError(f"{path} changed since the image tower was loaded from it")
            load_weights_file(full, path)
        return full

    embed_dim = int(model.visual.output_dim)
    tag_for_spec = weights if weights_id == weights else RANDOM_WEIGHTS
    spec = preprocess_spec_for(model, arch, tag_for_spec, resize_mode)
    info = BackboneInfo(arch=arch, weights_id=weights_id, weights_sha256=sha, embed_dim=embed_dim,
                        image_size=spec.image_size, random_init_seed=random_init_seed)
    return Backbone(model, info, spec, device, text_loader)
