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
    from fsac.io import sha256_file
    from fsac.train.checkpoint import random_trained_model, save_checkpoint

    trained = random_trained_model(arch, seed, tau=tau, object_name="bottle")
    extra = {"train_images": [{"name": p.name, "sha256": sha256_file(p)} for p in shots]}
    if record_folder:
        extra["train_dir"] = str(shots[0].parent)
    save_checkpoint(out_dir, trained, extra=extra)
    return out_dir
