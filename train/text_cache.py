"""On-disk cache of the class text features T+ / T- (safetensors, no pickle).

T+ and T- depend only on the frozen text encoder (architecture + weights), the object name
and the prompts built from it, yet encoding the 242 prompts costs seconds on a CPU at every
`fsac train`. The cache key is the sha256 of everything they depend on:

  architecture, weights id, weights sha256 (a file or pretrained tag) or, for random
  weights, the init seed plus the torch and open_clip versions that drew them, the object
  name, the exact prompt lists, and the encoder's output width

The key is stored inside the file (safetensors metadata) and compared on every read, so a
file renamed or left by another version is never trusted: a mismatch, a damaged file or a
wrong shape is recomputed and rewritten. `FSAC_CACHE_DIR` moves the cache (default
~/.cache/fsac); `FSAC_CACHE_DIR=off` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

CACHE_ENV = "FSAC_CACHE_DIR"
FORMAT = "fsac-text-features-1"


def cache_root() -> Path | None:
    value = os.environ.get(CACHE_ENV, "")
    if value.lower() in ("off", "none", "0", "false"):
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "fsac"


def text_cache_key(info, object_name: str, prompts: dict[str, list[str]]) -> dict[str, str]:
    """What T+ / T- depend on, as strings (safetensors metadata is str -> str)."""
    import open_clip

    key = {
        "format": FORMAT,
        "arch": info.arch,
        "weights_id": info.weights_id,
        "weights_sha256": info.weights_sha256 or "",
        "embed_dim": str(info.embed_dim),
        "object": object_name,
        "prompts_sha256": hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest(),
    }
    if info.is_random:
        # Random weights are a function of the seed and of the code that draws them.
        key.update(random_init_seed=str(info.random_init_seed), torch=torch.__version__,
                   open_clip=getattr(open_clip, "__version__", "?"))
    return key


def _path(root: Path, key: dict[str, str]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return root / "text" / f"{digest[:40]}.safetensors"


def load_cached(root: Path, key: dict[str, str], dim: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """T+, T- from the cache if a file with exactly this key is there, else None."""
    from safetensors import safe_open

    path = _path(root, key)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}) != key:
                return None
            t_pos, t_neg = f.get_tensor("t_pos"), f.get_tensor("t_neg")
    except Exception:  # damaged or foreign file: recompute (and overwrite) it
        return None
    if t_pos.shape != (dim,) or t_neg.shape != (dim,) or not (torch.isfinite(t_pos).all() and torch.isfinite(t_neg).all()):
        return None
    return t_pos.float(), t_neg.float()


def store(root: Path, key: dict[str, str], t_pos: torch.Tensor, t_neg: torch.Tensor) -> Path | None:
    """Write the entry atomically; a read-only or full disk only costs the cache, never the run."""
    from safetensors.torch import save

    from fsac.io import atomic_write_bytes

    path = _path(root, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = save({"t_pos": t_pos.detach().float().contiguous().cpu(),
                     "t_neg": t_neg.detach().float().contiguous().cpu()}, metadata=key)
        atomic_write_bytes(path, data)
    except OSError:
        return None
    return path


def cached_text_features(backbone, object_name: str, compute) -> tuple[torch.Tensor, torch.Tensor, dict, str]:
    """(T+, T-, prompts, "hit" | "miss" | "off"); `compute(backbone, object_name)` on a miss."""
    from fsac.train.prompts import build_prompts

    root = cache_root()
    if root is None:
        t_pos, t_neg, prompts = compute(backbone, object_name)
        return t_pos, t_neg, prompts, "off"
    normal, anomalous = build_prompts(object_name)
    prompts = {"normal": normal, "anomalous": anomalous}
    key = text_cache_key(backbone.info, object_name, prompts)
    hit = load_cached(root, key, backbone.info.embed_dim)
    if hit is not None:
        return hit[0].to(backbone.device), hit[1].to(backbone.device), prompts, "hit"
    t_pos, t_neg, prompts = compute(backbone, object_name)
    store(root, key, t_pos, t_neg)
    return t_pos, t_neg, prompts, "miss"
