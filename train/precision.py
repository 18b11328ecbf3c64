"""Precision of the frozen image encoder during training (`--encoder-precision`).

bf16 only where the hardware multiplies bf16 natively (AMX / AVX-512 BF16 on a CPU, a bf16
GPU): emulated bf16 is slower than fp32. How the bf16 encoder runs is in
`Backbone.encode_images`; the feature cosine against fp32 is recorded with each training.
"""

from __future__ import annotations

import torch

from fsac.errors import FsacError

ENCODER_PRECISIONS = ("fp32", "bf16", "auto")

# auto keeps bf16 features only if the first shot's bf16 features have at least this cosine
# with its fp32 features; below it, training encodes again in fp32 (and says so). Measured with
# random weights of ViT-B-16-plus-240 on an AMX CPU: 0.99997.
BF16_MIN_COSINE = 0.999


def bf16_supported(device: str) -> bool:
    """Whether bf16 matrix multiplies run natively here (not emulated, which is slower)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type == "cpu":
        from fsac.peaks import cpu_flags

        return bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags()))
    return False


def resolve_encoder_precision(requested: str, device: str) -> str:
    """--encoder-precision: fp32, bf16 (refused where unsupported) or auto (bf16 where supported)."""
    if requested not in ENCODER_PRECISIONS:
        raise FsacError(f"--encoder-precision must be one of {', '.join(ENCODER_PRECISIONS)}, got {requested!r}")
    if requested == "fp32":
        return "fp32"
    ok = bf16_supported(device)
    if requested == "bf16" and not ok:
        raise FsacError(f"--encoder-precision bf16: device {device} has no native bf16 (CPU flags avx512_bf16 / "
                        "amx_bf16, or a bf16 GPU); use fp32 or auto")
    return "bf16" if ok else "fp32"
