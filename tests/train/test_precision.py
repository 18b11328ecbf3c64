"""--encoder-precision: fp32 always; bf16 only where the hardware has it; auto picks."""

from __future__ import annotations

import pytest

from fsac.errors import FsacError
from fsac.train.precision import ENCODER_PRECISIONS, bf16_supported, resolve_encoder_precision


def test_fp32_is_always_fp32_and_unknown_values_are_refused():
    assert ENCODER_PRECISIONS == ("fp32", "bf16", "auto")
    assert resolve_encoder_precision("fp32", "cpu") == "fp32"
    with pytest.raises(FsacError, match="--encoder-precision must be one of fp32, bf16, auto, got 'fp16'"):
        resolve_encoder_precision("fp16", "cpu")


def test_cpu_bf16_follows_the_cpu_flags(monkeypatch):
    import fsac.peaks

    monkeypatch.setattr(fsac.peaks, "cpu_flags", lambda: ["avx2", "fma"])
    assert not bf16_supported("cpu") and resolve_encoder_precision("auto", "cpu") == "fp32"
    with pytest.raises(FsacError, match="has no native bf16"):
        resolve_encoder_precision("bf16", "cpu")
    monkeypatch.setattr(fsac.peaks, "cpu_flags", lambda: ["avx2", "amx_bf16"])
    assert bf16_supported("cpu") and resolve_encoder_precision("auto", "cpu") == "bf16"
