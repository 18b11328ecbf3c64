"""INT8 static quantization of the fused graph, and its agreement with fp32.

    fp32 model file --quant_pre_process--> --quantize_static (QDQ, calibrated on normal
    images)--> INT8 model file: same uint8 "image" input, same outputs, same metadata with
    "fsac.precision" = "int8" and "fsac.quantization" (settings, calibration images), sealed.

QDQ format: every quantized tensor is QuantizeLinear -> DequantizeLinear in the graph.
ONNX Runtime's CPU provider fuses DQ -> MatMul/Conv -> Q into integer kernels, and
TensorRT reads the same Q/DQ pairs for explicit INT8 precision; one file serves both, but
the two want different numbers (`TARGETS`):

  "cpu":      uint8 asymmetric activations, int8 symmetric per-channel weights in 7 bits
              (the fast u8 x s8 kernels of x86 CPUs and MLAS on ARM; 7 bits so that CPUs
              without VNNI do not saturate, see `QuantizeSettings.reduce_range`).
  "tensorrt": int8 *symmetric* activations and weights (TensorRT accepts zero point 0 only).

Agreement with fp32 is measured on held-out real images (never used for calibration):
Spearman rank correlation of the logits, max |Δ logit|, and the fraction of images whose
good/defective verdict (logit >= logit_threshold, `fsac.score`) is the same; never on the
score, which saturates. Below the bounds the quantized model is refused unless the user
allows it explicitly (the report and the refusal: calibration/int8_agreement.py).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fsac.agreement import MAX_REL_DLOGIT, MIN_SPEARMAN
from fsac.errors import FsacError
from fsac.io import naming
from fsac.modelfile import INPUT_NAME, ModelInfo, load_model_file

from .int8_agreement import MIN_VERDICT_AGREEMENT, AgreementReport, agreement, enforce_agreement

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
TARGETS = ("cpu", "tensorrt")
SCOPES = ("encoder", "all")
MATMUL_OPS = ("MatMul", "Gemm", "Conv")
# Node-name prefix of the image encoder in the traced graph (module path "visual").
ENCODER_PREFIX = "/visual/"
RANDOM_WEIGHTS_NOTE = (
    "backbone weights are RANDOM: INT8/fp32 agreement measured with them says little about "
    "agreement with real CLIP weights (different activation ranges and score spread)"
)


@dataclass
class QuantizeSettings:
    method: str = "minmax"  # calibration of activation ranges: minmax | entropy | percentile
    target: str = "cpu"  # cpu | tensorrt (see module doc)
    per_channel: bool = True  # one scale per output channel of each weight
    # 7-bit weights. None: 7-bit for target "cpu", 8-bit for "tensorrt". x86 CPUs without VNNI
    # (AVX2, AVX-512F alone) add u8 x s8 product pairs in saturating 16-bit lanes, and ONNX
    # Runtime and OpenVINO run such a file there with clamped sums (fsac/int8_saturation.py:
    # feature cosine 0.989 against fp32 with 8-bit weights on an AVX2 EPYC, 0.9997 with 7-bit).
    # A CPU file is made on one machine and served on another, so its default runs right on
    # every CPU; 8-bit (--no-reduce-range) is for boxes known to have VNNI or AMX.
    reduce_range: bool | None = None
    percentile: float = 99.999  # for method "percentile"
    # Op types to quantize (None = every type the quantizer supports). Default: the matrix
    # products only, which carry ~all the FLOPs; residual Adds, LayerNorm, Softmax and GELU
    # stay float. On the bottle images this gave ~10x smaller |Δ score| than all op types
    # at the same speed (MEASURED in fsac bench export, variant "all-ops").
    op_types: list[str] | None = field(default_factory=lambda: list(MATMUL_OPS))
    # "encoder": quantize the CLIP image encoder only; the FSAC head (adapter, cross-
    # attention) and the score tail (cosines, softmax, AS) stay float. They cost nothing,
    # and quantizing the outputs would leave the score 256 levels: rankings and verdicts
    # near the threshold would be noise. "all": every node.
    scope: str = "encoder"
    preprocess: bool = True  # quant_pre_process (ORT-optimise + shape inference) first
    # Only MatMuls with a constant (weight) operand: the attention products Q.K^T and A.V
    # (both operands activations) stay float, so their softmax is not squeezed through
    # QLinearSoftmax (13 % of the INT8 time in ONNX Runtime's profile; fsac bench export
    # variant "weights-only").
    # Measured on the 2-core AMX Xeon, full model, batch 1: 92.8 -> 81.9 ms.
    const_weights_only: bool = True
    # The quantized matrix products give float outputs (no QuantizeLinear after them): the
    # next op (residual Add, reshape for attention, GELU) is float anyway, so a quantized
    # output only meant a Quantize + Dequantize pair per product, and one more rounding.
    # ONNX Runtime then fuses DequantizeLinear -> MatMul into MatMulIntegerToFloat.
    # CPU target only: TensorRT places its own output scales from the QDQ pairs.
    float_outputs: bool = True
    # Who places the quantizers: "onnxruntime" (its quantize_static, every setting above) or
    # "nncf" (Intel's NNCF, transformer preset; see calibration/quantize_nncf.py).
    engine: str = "onnxruntime"

    def __post_init__(self) -> None:
        if self.reduce_range is None:
            self.reduce_range = self.target == "cpu"
        if self.method not in CALIBRATION_METHODS:
            raise FsacError(f"--calibration-method must be one of {', '.join(CALIBRATION_METHODS)}, got {self.method!r}")
        if self.target not in TARGETS:
            raise FsacError(f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.scope not in SCOPES:
            raise FsacError(f"--scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if not (50.0 < self.percentile <= 100.0):
            raise FsacError(f"--percentile must be in (50, 100], got {self.percentile}")
        from fsac.calibration.quantize_nncf import ENGINES, check_nncf_settings

        if self.engine not in ENGINES:
            raise FsacError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine == "nncf":
            check_nncf_settings(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PixelReader:
    """onnxruntime CalibrationDataReader over (N, S, S, 3) uint8 pixels, one image per call."""

    def __init__(self, pixels: np.ndarray):
        self.pixels = pixels
        self.i = 0

    def get_next(self):
        if self.i >= len(self.pixels):
            return None
        x = np.ascontiguousarray(self.pixels[self.i : self.i + 1])
        self.i += 1
        return {INPUT_NAME: x}

    def rewind(self) -> None:
        self.i = 0


def quantize_bytes(fp32: bytes, calib_pixels: np.ndarray, settings: QuantizeSettings,
                   work_dir: str | os.PathLike | None = None) -> tuple[bytes, dict[str, Any]]:
    """Serialized fp32 graph -> (serialized QDQ INT8 graph, info about the run).

    Metadata of the result is whatever the quantizer kept; the caller sets it.
    """
    if settings.engine == "nncf":
        from fsac.calibration.quantize_nncf import quantize_nncf

        return quantize_nncf(fp32, calib_pixels, settings, work_dir)
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise FsacError("INT8 quantization needs onnxruntime with its quantization tools (pip install onnxruntime onnx)") from None
    if len(calib_pixels) == 0:
        raise FsacError("no calibration images for INT8 quantization")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    extra: dict[str, Any] = {"WeightSymmetric": True}
    if settings.method == "percentile":
        extra["CalibPercentile"] = settings.percentile
    if settings.target == "tensorrt":
        extra["ActivationSymmetric"] = True
        act_type = QuantType.QInt8
    else:
        act_type = QuantType.QUInt8
        if settings.float_outputs:
            extra["OpTypesToExcludeOutputQuantization"] = list(settings.op_types or MATMUL_OPS)
    info: dict[str, Any] = {"n_calibration_images": int(len(calib_pixels))}
    with tempfile.TemporaryDirectory(prefix="fsac-quant-", dir=work_dir) as tmp, naming(tmp):
        src = Path(tmp) / "fp32.onnx"
        src.write_bytes(fp32)
        pre = Path(tmp) / "pre.onnx"
        t0 = time.perf_counter()
        if settings.preprocess:
            try:
                # Symbolic shape inference fails on this graph (MEASURED.md: assert in
                # _infer_Reshape); ONNX shape inference and the ORT optimisation still run.
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
                info["preprocess"] = "quant_pre_process(skip_symbolic_shape=True)"
            except Exception as e:  # the pre-pass is an optimisation; quantize the raw graph instead
                pre = src
                info["preprocess"] = f"skipped ({type(e).__name__}: {str(e)[:120]})"
        else:
            pre = src
            info["preprocess"] = "off"
        info["preprocess_s"] = time.perf_counter() - t0
        out = Path(tmp) / "int8.onnx"
        exclude: list[str] = []
        cache = None
        t0 = time.perf_counter()
        import logging

        qlog = logging.getLogger()  # the quantizer warns per weight on the root logger
        level = qlog.level
        qlog.setLevel(logging.ERROR)
        try:
            if settings.scope == "encoder":
                exclude, boundary = encoder_partition(pre)
                cache = _calibrate_encoder(pre, boundary, calib_pixels, settings, methods, extra, Path(tmp))
            if settings.const_weights_only:
                exclude = exclude + activation_matmuls(pre)
            info["nodes_excluded"] = len(exclude)
            info["calibrated_on"] = "image encoder subgraph" if cache else "whole graph"
            info["calibrate_s"] = time.perf_counter() - t0
            kwargs = {"calibration_cache_path": str(cache)} if cache else {}
            quantize_static(
                str(pre), str(out), None if cache else PixelReader(calib_pixels),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=settings.op_types,
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                activation_type=act_type,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[settings.method],
                nodes_to_exclude=exclude,
                extra_options=extra,
                **kwargs,
            )
        except FsacError:
            raise
        except Exception as e:
            raise FsacError(f"INT8 quantization failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        finally:
            qlog.setLevel(level)
        info["quantize_s"] = time.perf_counter() - t0
        data = out.read_bytes()
    info["activation_type"] = "int8 symmetric" if settings.target == "tensorrt" else "uint8 asymmetric"
    info["weight_type"] = (("7-bit" if settings.reduce_range else "8-bit") + " int8 symmetric"
                           + (" per-channel" if settings.per_channel else " per-tensor"))
    return data, info


def activation_matmuls(model_path: str | os.PathLike) -> list[str]:
    """MatMul nodes whose operands are both activations (attention Q.K^T and A.V)."""
    import onnx

    m = onnx.load(str(model_path))
    consts = {i.name for i in m.graph.initializer}
    consts |= {o for n in m.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in m.graph.node if n.op_type == "MatMul" and not (set(n.input) & consts)]


def encoder_partition(model_path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """-> (names of the nodes outside the image encoder, the encoder's output tensors).

    The TorchScript exporter names nodes by module path ("/visual/transformer/...",
    "/image_adapter/...", "/Softmax"); onnxslim and quant_pre_process keep the names.
    Pre-encoder nodes (the uint8 -> normalised float input) count as encoder here.
    """
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    g = m.graph
    names = [n.name for n in g.node]
    if not any(n.startswith(ENCODER_PREFIX) for n in names) or len(set(names)) != len(names):
        raise FsacError(f"cannot tell the image encoder's nodes apart in this graph (no unique "
                        f"{ENCODER_PREFIX!r} node names); quantize with --scope all")
    producer = {o: n for n in g.node for o in n.output}
    # Quantized: the encoder and everything it depends on (the uint8 -> normalised float
    # input). Excluded: the rest, i.e. the head and the score tail.
    keep = {n.name for n in g.node if n.name.startswith(ENCODER_PREFIX)}
    stack = [i for n in g.node if n.name in keep for i in n.input]
    while stack:
        t = stack.pop()
        p = producer.get(t)
        if p is not None and p.name not in keep:
            keep.add(p.name)
            stack.extend(p.input)
    exclude = [n.name for n in g.node if n.name not in keep]
    excluded = set(exclude)
    consumed_outside = {i for n in g.node if n.name in excluded for i in n.input} | {o.name for o in g.output}
    boundary = [o for n in g.node if n.name in keep for o in n.output if o in consumed_outside]
    if not boundary:
        raise FsacError("cannot find the image encoder's output in this graph; quantize with --scope all")
    return exclude, boundary


def _calibrate_encoder(pre: Path, boundary: list[str], pixels: np.ndarray, settings: QuantizeSettings,
                       methods: dict, extra: dict[str, Any], tmp: Path) -> Path | None:
    """Activation ranges from the encoder subgraph only, saved as a calibration cache.

    Why not calibrate the whole graph: the score tail holds tensors with (almost) no range,
    e.g. S+ + S- == 1 for every image, and the histogram calibrators (entropy, percentile)
    cannot bin those ("Too many bins for data range"). ONNX Runtime's calibrator ignores
    `nodes_to_exclude`, so the head is cut off before calibrating instead.
    -> cache path, or None when this onnxruntime cannot take a cache (< 1.20-ish).
    """
    import inspect

    import onnx
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        return None
    enc_path = tmp / "encoder.onnx"
    onnx.utils.extract_model(str(pre), str(enc_path), [INPUT_NAME], boundary, check_model=False)
    calib_extra = {"percentile": extra["CalibPercentile"]} if "CalibPercentile" in extra else {}
    calibrator = create_calibrator(enc_path, settings.op_types or [], augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=methods[settings.method], extra_options=calib_extra)
    import contextlib
    import sys

    with contextlib.redirect_stdout(sys.stderr):  # the histogram calibrators print progress
        calibrator.collect_data(PixelReader(pixels))
        ranges = calibrator.compute_data()
    del calibrator
    cache = tmp / "calibration.json"
    save_tensors_data(ranges, cache)
    enc_path.unlink()
    return cache


# --------------------------------------------------------------------------- model files


def int8_metadata(fp32_info: ModelInfo, settings: QuantizeSettings, run_info: dict[str, Any],
                  calib_names: Sequence[str], calib_hashes: Sequence[str],
                  report: AgreementReport | None) -> dict[str, str]:
    meta = dict(fp32_info.metadata)
    meta["fsac.precision"] = "int8"
    meta["fsac.source_model_seal"] = fp32_info.seal
    meta["fsac.quantization"] = json.dumps({
        "format": "QDQ", "tool": "onnxruntime.quantization.quantize_static",
        **settings.to_dict(), **run_info,
        "calibration_images": [{"name": Path(n).name, "sha256": h} for n, h in zip(calib_names, calib_hashes)],
    })
    if report is not None:
        meta["fsac.int8_agreement"] = json.dumps({k: v for k, v in report.to_dict().items() if k != "images"})
    return meta


def quantize_model_file(fp32_path: str | os.PathLike, out_path: str | os.PathLike, calib_pixels: np.ndarray,
                        settings: QuantizeSettings, calib_names: Sequence[str] = (),
                        calib_hashes: Sequence[str] = (), eval_pixels: np.ndarray | None = None,
                        eval_names: Sequence[str] = (), threshold: float | None = None,
                        threshold_source: str = "model", allow_disagreement: bool = False,
                        min_spearman: float = MIN_SPEARMAN, min_verdict_agreement: float = MIN_VERDICT_AGREEMENT,
                        force: bool = False, max_rel_dlogit: float = MAX_REL_DLOGIT
                        ) -> tuple[Path, AgreementReport | None, list[str]]:
    """Quantize a sealed fp32 model file into a sealed INT8 model file.

    calib_pixels: (Nc, S, S, 3) uint8 normal images for the activation ranges.
    eval_pixels:  (Ne, S, S, 3) uint8 held-out images for the agreement report (optional).
    threshold: verdict threshold (logit units) for the agreement; default the model's own.
    -> (written path, agreement report or None, warnings). Refuses (FsacError) below the
    agreement bounds unless allow_disagreement; nothing is written then.
    """
    from fsac.metadata import write_with_metadata
    from fsac.runner import make_session, run_session

    out_path = Path(out_path)
    if out_path.exists() and not force:
        raise FsacError(f"{out_path} exists; pass --force to overwrite it")
    data, info = load_model_file(fp32_path)
    if info.precision != "fp32":
        raise FsacError(f"{fp32_path}: is a {info.precision} model; quantize the fp32 model from `fsac export`")
    warnings: list[str] = []
    int8, run_info = quantize_bytes(data, calib_pixels, settings, work_dir=out_path.parent if out_path.parent.exists() else None)
    report = None
    if eval_pixels is not None and len(eval_pixels):
        if threshold is None:
            threshold, threshold_source = info.logit_threshold, "model"
        fp = run_session(make_session(data), eval_pixels)["logit"]
        q = run_session(make_session(int8), eval_pixels)["logit"]
        report = agreement(fp, q, threshold, threshold_source, eval_names, min_spearman, min_verdict_agreement,
                           max_rel_dlogit)
        if info.metadata.get("fsac.weights_random") == "true":
            report.notes.append(RANDOM_WEIGHTS_NOTE)
        if report.threshold is None:
            report.notes.append("no threshold: verdict agreement not measured (calibrate the fp32 model first)")
        w = enforce_agreement(report, allow_disagreement)
        if w:
            warnings.append(w)
    else:
        warnings.append("no held-out images: INT8/fp32 agreement was not measured")
    meta = int8_metadata(info, settings, run_info, calib_names, calib_hashes, report)
    write_with_metadata(out_path, int8, meta, force=force)
    load_model_file(out_path)  # read back: seal and metadata must verify
    return out_path, report, warnings
