"""fsac training checkpoints: adapters in safetensors + one JSON file. No pickle anywhere.

A checkpoint is a folder:

    adapters.safetensors   head tensors: image_adapter.*, text_adapter.*, cross_attention.*,
                           t_pos, t_neg (T+-), at_pos, at_neg (AT+-, the folded text vectors)
    model.json             everything needed to rebuild the model and deploy it: backbone
                           (arch, weights id, weights sha256, random-init seed), head config
                           (alpha, beta, tau, ...), object name, prompts, preprocessing spec,
                           training images' names and sha256, seed, settings, loss history,
                           versions, and the sha256 of adapters.safetensors

Both files are written atomically, the JSON last: a folder whose model.json exists holds a
complete checkpoint, and the recorded sha256 catches a later change of the tensors file.
"""

from __future__ import annotations

import contextlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
import torch

import fsac
from fsac.errors import FsacError
from fsac.io import atomic_write_bytes, atomic_write_json, sha256_bytes
from fsac.preprocess import PreprocessSpec
from fsac.train.backbone import Backbone, BackboneInfo, load_backbone
from fsac.train.model import DeployModel, FSACHead, HeadConfig

CHECKPOINT_FORMAT = "fsac-checkpoint"
CHECKPOINT_VERSION = 1
TENSORS_FILE = "adapters.safetensors"
META_FILE = "model.json"
# What `load_checkpoint` reads from model.json, and the JSON type each must have.
REQUIRED_META = {"backbone": dict, "head": dict, "preprocess": dict, "tensors_file": str, "tensors_sha256": str,
                 "use_text_adapter": bool, "object_name": str}


def versions() -> dict[str, str]:
    import open_clip

    return {
        "fsac": fsac.__version__,
        "torch": torch.__version__,
        "open_clip": getattr(open_clip, "__version__", "unknown"),
        "python": platform.python_version(),
    }


@dataclass
class TrainedModel:
    """A trained CLIP-FSAC model: frozen backbone + head, and its recorded provenance."""

    backbone: Backbone
    head: FSACHead
    use_text_adapter: bool
    object_name: str
    meta: dict[str, Any] = field(default_factory=dict)

    def deploy_model(self) -> DeployModel:
        """uint8 pixels -> (score, logit, sim_normal, sim_anomalous): the module `fsac export` traces."""
        return DeployModel(self.backbone.visual, self.backbone.normalize, self.head, self.use_text_adapter).eval()

    @torch.no_grad()
    def score_features(self, features: torch.Tensor) -> dict[str, np.ndarray]:
        """Cached image features F (N, C) -> {"score", "logit", "sim_normal", "sim_anomalous"},
        numpy arrays, each (N,). The logit ranks and decides; the score is for people."""
        self.head.eval()
        out = self.head(features.to(self.head.t_pos.device), self.use_text_adapter)
        return {k: v.cpu().numpy() for k, v in out._asdict().items()}


def random_trained_model(arch: str, seed: int = 0, tau: float = 0.01, object_name: str = "object") -> TrainedModel:
    """Random backbone weights, random T+- and a freshly initialised head, all seeded: a model
    for timing and pipeline tests only (its scores mean nothing)."""
    g = torch.Generator().manual_seed(seed)
    backbone = load_backbone(arch, "random", device="cpu", random_init_seed=seed, quiet=True)
    c = backbone.info.embed_dim
    t_pos = torch.nn.functional.normalize(torch.randn(c, generator=g), dim=0)
    t_neg = torch.nn.functional.normalize(torch.randn(c, generator=g), dim=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = FSACHead(HeadConfig(embed_dim=c, tau=tau), t_pos, t_neg)
    return TrainedModel(backbone, head.eval(), True, object_name)


def save_checkpoint(out_dir: str | Path, model: TrainedModel, extra: dict[str, Any]) -> Path:
    """Write `adapters.safetensors` and `model.json` into out_dir. Returns the JSON path."""
    from safetensors.torch import save

    out_dir = Path(out_dir)
    head = model.head
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    with torch.no_grad():
        at_pos, at_neg = head.adapted_text(model.use_text_adapter)
    tensors["at_pos"] = at_pos.detach().cpu().contiguous()
    tensors["at_neg"] = at_neg.detach().cpu().contiguous()
    blob = save(tensors, metadata={"format": CHECKPOINT_FORMAT, "version": str(CHECKPOINT_VERSION)})
    atomic_write_bytes(out_dir / TENSORS_FILE, blob)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "backbone": model.backbone.info.to_dict(),
        "head": head.cfg.to_dict(),
        "use_text_adapter": model.use_text_adapter,
        "object_name": model.object_name,
        "preprocess": model.backbone.spec.to_dict(),
        "tensors_file": TENSORS_FILE,
        "tensors_sha256": sha256_bytes(blob),
        "versions": versions(),
        **extra,
    }
    return atomic_write_json(out_dir / META_FILE, meta)


def read_checkpoint_meta(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """-> (checkpoint folder, parsed model.json). Accepts the folder or the JSON file."""
    path = Path(path)
    folder = path.parent if path.suffix == ".json" else path
    meta_path = folder / META_FILE
    if not folder.exists():
        raise FsacError(f"checkpoint not found: {folder}")
    if not meta_path.is_file():
        raise FsacError(f"{folder}: not an fsac checkpoint (no {META_FILE}; written by `fsac train`)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise FsacError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise FsacError(f"{meta_path}: not an fsac checkpoint (JSON {type(meta).__name__}, not an object)")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise FsacError(f"{meta_path}: not an fsac checkpoint (format {meta.get('format')!r})")
    if meta.get("format_version") != CHECKPOINT_VERSION:
        raise FsacError(f"{meta_path}: checkpoint format version {meta.get('format_version')} is not supported")
    # model.json is not covered by a checksum: a hand-edited or truncated one used to fail
    # later with a KeyError traceback.
    missing = [k for k in REQUIRED_META if not isinstance(meta.get(k), REQUIRED_META[k])]
    if missing:
        raise FsacError(f"{meta_path}: damaged checkpoint, missing or malformed {', '.join(missing)}")
    return folder, meta


def checkpoint_sha256(path: str | Path) -> str:
    """One id for a checkpoint: sha256 over its model.json and tensors file bytes."""
    folder, meta = read_checkpoint_meta(path)
    return sha256_bytes((folder / META_FILE).read_bytes() + (folder / meta["tensors_file"]).read_bytes())


def load_checkpoint(path: str | Path, weights: str | None = None, device: str | None = None,
                    quiet: bool = False, backbone_context: Callable[[], ContextManager] | None = None,
                    weights_loader: Callable | None = None) -> TrainedModel:
    """Rebuild backbone + head from a checkpoint folder.

    `weights` overrides where the backbone weights come from (a tag or a file); by default
    the recorded tag is used, and a recorded local file must be passed again. A file's sha256
    must match the one recorded at training time. `backbone_context`: entered around building
    the backbone alone (`fsac export` spills its weights to a file as they are built);
    `weights_loader`: see `fsac.train.backbone.load_backbone`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    folder, meta = read_checkpoint_meta(path)
    tensors_path = folder / meta["tensors_file"]
    if not tensors_path.is_file():
        raise FsacError(f"{folder}: tensors file {meta['tensors_file']} is missing")
    blob = tensors_path.read_bytes()
    if sha256_bytes(blob) != meta["tensors_sha256"]:
        raise FsacError(f"{tensors_path}: contents do not match the sha256 recorded in {META_FILE}; file damaged or modified")
    try:
        tensors = load(blob)
    except (SafetensorError, Exception) as e:  # noqa: B014 - safetensors raises several types
        raise FsacError(f"{tensors_path}: cannot read safetensors ({e})") from None

    try:
        info = BackboneInfo(**meta["backbone"])
        head_cfg = HeadConfig.from_dict(meta["head"])
        spec = PreprocessSpec.from_dict(meta["preprocess"])
    except (TypeError, ValueError, KeyError, FsacError) as e:  # name the file, not only the setting
        raise FsacError(f"{folder / META_FILE}: damaged checkpoint settings ({e})") from None
    if weights is None:
        weights = info.weights_id
        if weights.startswith("file:"):
            raise FsacError(
                f"{folder} was trained with a local backbone file ({weights[5:]}); pass it again with --weights PATH"
            )
    with (backbone_context or contextlib.nullcontext)():
        backbone = load_backbone(info.arch, weights, device=device, resize_mode=spec.resize_mode,
                                 random_init_seed=info.random_init_seed, quiet=quiet, weights_loader=weights_loader)
    if info.weights_sha256 and backbone.info.weights_sha256 != info.weights_sha256:
        raise FsacError(
            f"backbone weights {weights} (sha256 {str(backbone.info.weights_sha256)[:12]}...) differ from the ones "
            f"{folder} was trained with (sha256 {info.weights_sha256[:12]}...)"
        )
    if backbone.info.weights_id != info.weights_id and not (
            info.weights_id.startswith("file:") and backbone.info.weights_id.startswith("file:")):
        raise FsacError(f"{folder} was trained with backbone weights {info.weights_id}, not {backbone.info.weights_id}")
    # The recorded architecture must fit the head and input size: an edited model.json (or
    # one from another architecture) used to load and then fail inside the encoder.
    if head_cfg.embed_dim != backbone.info.embed_dim or spec.image_size != backbone.info.image_size:
        raise FsacError(f"{folder}: the head (width {head_cfg.embed_dim}, input {spec.image_size} px) does not fit "
                        f"backbone {info.arch} (width {backbone.info.embed_dim}, input {backbone.info.image_size} px)")
    if spec != backbone.spec:
        backbone.spec = spec  # the recorded spec is authoritative
    if "t_pos" not in tensors or "t_neg" not in tensors:
        raise FsacError(f"{tensors_path}: tensors t_pos / t_neg are missing")
    try:
        head = FSACHead(head_cfg, tensors["t_pos"], tensors["t_neg"])
    except ValueError as e:
        raise FsacError(f"{tensors_path}: tensors do not fit the head ({e})") from None
    state = {k: v for k, v in tensors.items() if k not in ("at_pos", "at_neg")}
    missing, unexpected = head.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FsacError(f"{tensors_path}: tensors do not fit the head (missing {missing}, unexpected {unexpected})")
    head = head.to(backbone.device).eval()
    model = TrainedModel(backbone, head, bool(meta["use_text_adapter"]), meta["object_name"], meta)
    # The folded text vectors must come out the same as recorded: catches a head/config mismatch.
    with torch.no_grad():
        at_pos, at_neg = head.adapted_text(model.use_text_adapter)
    if not (torch.allclose(at_pos.cpu(), tensors["at_pos"], atol=1e-6) and
            torch.allclose(at_neg.cpu(), tensors["at_neg"], atol=1e-6)):
        raise FsacError(f"{folder}: recorded AT+/AT- do not match the head rebuilt from the checkpoint")
    return model
