"""Test helper (loaded by file path from the export and calibration conftests): a trained
checkpoint built directly, with random weights and no trainer run."""

from __future__ import annotations

from pathlib import Path

TINY_ARCH = "ViT-B-16-plus-240-tiny"
FULL_ARCH = "ViT-B-16-plus-240"


def make_checkpoint(out_dir: Path, arch: str, shots: list[Path], seed: int = 0, tau: float = 0.05,
                    record_folder: bool = True) -> Path:
    """A checkpoint with a random-weight backbone and a random head (scores meaningless).

    tau 0.05 instead of the default 0.01: with random weights s(CF, AT-) - s(CF, AT+) is
    ~0.12 +- 0.003 on the bottle images, and tau 0.01 would saturate every score at ~1.0
    in float32, leaving nothing to rank.
    """
    import torch

    from fsac.io import sha256_file
    from fsac.train.backbone import load_backbone
    from fsac.train.checkpoint import TrainedModel, save_checkpoint
    from fsac.train.model import FSACHead, HeadConfig

    bb = load_backbone(arch, "random", device="cpu", random_init_seed=seed, quiet=True)
    c = bb.info.embed_dim
    g = torch.Generator().manual_seed(seed)
    t_pos = torch.nn.functional.normalize(torch.randn(c, generator=g), dim=0)
    t_neg = torch.nn.functional.normalize(torch.randn(c, generator=g), dim=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = FSACHead(HeadConfig(embed_dim=c, tau=tau), t_pos, t_neg)
    extra = {"train_images": [{"name": p.name, "sha256": sha256_file(p)} for p in shots]}
    if record_folder:
        extra["train_dir"] = str(shots[0].parent)
    save_checkpoint(out_dir, TrainedModel(bb, head, True, "bottle"), extra=extra)
    return out_dir
