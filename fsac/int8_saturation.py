"""INT8 files with 8-bit weights on CPUs whose int8 dot product saturates.

x86 CPUs without VNNI (AVX2 only, or AVX-512F without VNNI) multiply uint8 activations by
int8 weights with `vpmaddubsw`, which adds each pair of products into a signed 16-bit lane
and clamps it: 255 * 127 * 2 = 64770 does not fit under 2^15. ONNX Runtime's MLAS and
OpenVINO's CPU plugin both use that instruction there, so a file with full-range (8-bit)
weights computes clamped sums on such a CPU, and only there: VNNI (`vpdpbusd`), AMX, ARM's
dot-product instructions and GPUs accumulate in 32 bits. With 7-bit weights every pair sum
stays under 2^15 (255 * 63 * 2 = 32130); `fsac quantize` makes CPU files so by default.
OpenVINO's documentation calls this the saturation (overflow) issue and gives the same fix.

Measured on an AVX2-only AMD EPYC, full model, random weights, 16 bottle images: the encoder
feature's cosine against fp32 was 0.98892 (ONNX Runtime) and 0.97211 (OpenVINO) with 8-bit
weights, 0.99969 and 0.99968 with 7-bit weights, from the same fp32 file and calibration.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

# Any of these gives a non-saturating u8 x s8 dot product (32-bit accumulation).
NON_SATURATING_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8"})


def int8_dot_saturates(flags: list[str] | None = None) -> bool:
    """True on an x86 CPU whose int8 matrix kernels clamp pair sums to 16 bits (no VNNI/AMX).
    False elsewhere, and where the flags cannot be read (no /proc/cpuinfo, not x86)."""
    from fsac.peaks import cpu_flags

    have = set(cpu_flags() if flags is None else flags)
    if "sse2" not in have:  # not x86, or nothing readable: nothing to say
        return False
    return not (have & NON_SATURATING_FLAGS)


def weight_bits(metadata: Mapping[str, str]) -> int | None:
    """7 or 8 for an INT8 fsac file (from its `fsac.quantization` record), None for float files
    or a record that does not say."""
    try:
        q: Any = json.loads(metadata.get("fsac.quantization") or "{}")
    except ValueError:
        return None
    if not isinstance(q, dict) or "reduce_range" not in q:
        return None
    return 7 if q["reduce_range"] else 8


def saturation_warning(metadata: Mapping[str, str], source: str, on_cpu: bool,
                       flags: list[str] | None = None) -> str | None:
    """The warning to give when this file runs on this CPU with clamped int8 sums, else None.
    on_cpu: whether the backend computes on the CPU (not a GPU or TensorRT)."""
    from fsac.peaks import cpu_class, cpu_flags

    if not on_cpu or weight_bits(metadata) != 8:
        return None
    flags = cpu_flags() if flags is None else flags  # read /proc/cpuinfo once
    if not int8_dot_saturates(flags):
        return None
    return (f"{source}: INT8 file with 8-bit weights on a CPU without VNNI (class {cpu_class(flags)}): its int8 "
            "dot products saturate here, so scores drift from fp32 (feature cosine 0.97-0.99 measured on "
            "AVX2, against 0.9997 with 7-bit weights); make the file again with `fsac quantize` (7-bit "
            "weights by default) or serve the fp32 file")
