"""Fixtures for the export tests: a tiny trained checkpoint built directly (random weights,
no trainer run), real bottle images for parity, and its exported model file."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_ARCH = "ViT-B-16-plus-240-tiny"


def make_checkpoint(out_dir: Path, arch: str, shots: list[Path], seed: int = 0) -> Path:
    """A checkpoint with a random-weight backbone and a random head (scores meaningless)."""
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
        head = FSACHead(HeadConfig(embed_dim=c), t_pos, t_neg)
    extra = {
        "train_images": [{"name": p.name, "sha256": sha256_file(p)} for p in shots],
        "train_dir": str(shots[0].parent),
    }
    save_checkpoint(out_dir, TrainedModel(bb, head, True, "bottle"), extra=extra)
    return out_dir


@pytest.fixture(scope="session")
def bottle_shots(bottle) -> list[Path]:
    return sorted((bottle / "train" / "good").glob("*.png"))[:2]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, bottle_shots) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", TINY_ARCH, bottle_shots)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_checkpoint) -> tuple[Path, dict]:
    """(model file, export result) of the tiny checkpoint, exported once per session."""
    from fsac.export.cli import export_command

    out = tmp_path_factory.mktemp("export") / "tiny.onnx"
    result = export_command(tiny_checkpoint, out=out, quiet=True)
    return out, result
