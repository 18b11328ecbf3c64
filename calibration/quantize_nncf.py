"""INT8 QDQ quantization with NNCF (`fsac quantize --engine nncf`), the quantizer Intel ships
for OpenVINO, run on the ONNX graph so that the result is a sealed fsac ONNX file like the
ONNX Runtime quantizer's.

NNCF places its QuantizeLinear/DequantizeLinear pairs by its transformer preset
(`ModelType.TRANSFORMER`: the matrix products, attention included, with the patterns
OpenVINO's low-precision transformations fuse) and corrects the biases after quantizing.
Measured on the full ViT-B-16-plus-240 (random weights), batch 1, 2-core AMX Xeon, one run:
OpenVINO int8 38.3 -> 32.1 ms against the ONNX Runtime quantizer's file, Spearman of the logit
against fp32 0.9930 -> 0.9991 on 24 bottle test images, but max |Δ logit| 0.05 -> 0.14 of the
logit spread; ONNX Runtime runs the NNCF file slower (39.4 -> 48.1 ms), and with the CPU
capped at AVX-512 VNNI or AVX2 + VNNI so does OpenVINO. So it is an option, for OpenVINO on
AMX, not the default: `fsac quantize` measures the agreement and `model.backend: auto` the
speed, on the machine that serves it.

Only the scope (encoder / all) and the calibration images are NNCF's inputs here; the ONNX
Runtime quantizer's own settings (method, per-channel, op types, ...) do not apply and are
refused when changed, so no file claims a setting it was not made with.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fsac.errors import FsacError
from fsac.modelfile import INPUT_NAME

ENGINES = ("onnxruntime", "nncf")
# QuantizeSettings fields that only the ONNX Runtime quantizer reads, and their defaults.
# (reduce_range does apply: it becomes NNCF's overflow fix, see quantize_nncf.)
ORT_ONLY = {"method": "minmax", "per_channel": True, "percentile": 99.999,
            "const_weights_only": True, "float_outputs": True}


def check_nncf_settings(settings) -> None:
    """Refuse settings that --engine nncf would silently ignore (one line, naming them)."""
    from fsac.calibration.quantize import MATMUL_OPS

    if settings.target != "cpu":
        raise FsacError("--engine nncf makes CPU (OpenVINO / ONNX Runtime) files; for TensorRT use "
                        "--engine onnxruntime --target tensorrt")
    changed = [k for k, v in ORT_ONLY.items() if getattr(settings, k) != v]
    if list(settings.op_types or []) != list(MATMUL_OPS):
        changed.append("op_types")
    if changed:
        raise FsacError(f"--engine nncf places its own quantizers; these ONNX Runtime quantizer settings do not "
                        f"apply: {', '.join(changed)} (leave them at their defaults)")


def quantize_nncf(fp32: bytes, calib_pixels: np.ndarray, settings,
                  work_dir: str | os.PathLike | None = None) -> tuple[bytes, dict[str, Any]]:
    """Serialized fp32 graph -> (serialized QDQ INT8 graph by NNCF, info about the run)."""
    try:
        import nncf
    except ImportError:
        raise FsacError("--engine nncf needs NNCF (pip install 'fsac[nncf]')") from None
    import onnx

    from fsac.calibration.quantize import encoder_partition

    check_nncf_settings(settings)
    if len(calib_pixels) == 0:
        raise FsacError("no calibration images for INT8 quantization")
    info: dict[str, Any] = {"engine": "nncf", "nncf": nncf.__version__, "model_type": "transformer",
                            "n_calibration_images": int(len(calib_pixels))}
    model = onnx.load_from_string(fp32)
    del model.metadata_props[:]  # the caller writes the fsac metadata of the result
    exclude: list[str] = []
    if settings.scope == "encoder":
        with tempfile.TemporaryDirectory(prefix="fsac-nncf-", dir=work_dir) as tmp:
            path = Path(tmp) / "fp32.onnx"
            path.write_bytes(fp32)
            exclude, _ = encoder_partition(path)
    info["nodes_excluded"] = len(exclude)
    dataset = nncf.Dataset([calib_pixels[i:i + 1] for i in range(len(calib_pixels))],
                           lambda x: {INPUT_NAME: np.ascontiguousarray(x)})
    nncf.set_log_level(logging.ERROR)  # it logs every node it leaves alone at INFO
    t0 = time.perf_counter()
    try:
        # 7-bit weights on every matrix product (ENABLE), not NNCF's default FIRST_LAYER: in a
        # ViT every MatMul sees full-range activations, so every one saturates without VNNI.
        fix = nncf.OverflowFix.ENABLE if settings.reduce_range else nncf.OverflowFix.DISABLE
        info["overflow_fix"] = fix.value
        q = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib_pixels),
                          ignored_scope=nncf.IgnoredScope(names=exclude, validate=False),
                          advanced_parameters=nncf.AdvancedQuantizationParameters(overflow_fix=fix))
    except Exception as e:
        raise FsacError(f"NNCF quantization failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    info["quantize_s"] = time.perf_counter() - t0
    info["activation_type"] = "int8 (NNCF transformer preset)"
    info["weight_type"] = ("7-bit" if settings.reduce_range else "8-bit") + " int8 symmetric per-channel (NNCF)"
    return q.SerializeToString(), info  # the fp32 graph it came from was under protobuf's 2 GB
