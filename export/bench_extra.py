"""OpenVINO rows, measured peaks and logit agreement for `fsac bench export`.

Kept apart from `bench.py` so that the benchmark's main loop stays one readable function:
this module adds backends to its timing dict and, afterwards, the columns that need the
machine's peaks (`fsac.peaks`) and the logits of every backend on the same images.
Like bench.py it may import the runtime wing (its backends and the auto policy's bounds): the
bench modules are the one composition point of the wings (see bench.py's docstring).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from fsac.errors import FsacError

from .bench_report import pct

# Which peak each row is measured against: its arithmetic, not its runtime.
ROW_PRECISION = {
    "pytorch eager fp32": "fp32",
    "onnxruntime fp32": "fp32",
    "onnxruntime int8": "int8",
    "openvino f32": "fp32",
    "openvino bf16": "bf16",
    "openvino int8": "int8",
    "openvino int8_bf16": "int8",
    "tensorrt fp16": "fp16",
}


def row_precision(name: str) -> str:
    if name in ROW_PRECISION:
        return ROW_PRECISION[name]
    return "int8" if "int8" in name else "fp32"


def openvino_backends(fp32_path: Path, int8_path: Path | None, threads: int, batch: int,
                      notes: list[str]) -> dict[str, Any]:
    """{'openvino f32': backend, 'openvino bf16': ..., 'openvino int8': ...}: fsac-run's own
    OpenVINO backend on the same sealed files, so the benchmark times what fsac-run runs."""
    from fsac.modelfile import inspect_model_file
    from fsac.runtime.openvino_backend import OpenVinoBackend, device_capabilities, import_openvino

    try:
        ov = import_openvino()
    except FsacError as e:
        notes.append(f"OpenVINO not timed: {e}")
        return {}
    caps = device_capabilities(ov.Core(), "CPU")
    wanted = [("openvino f32", fp32_path, "f32")]
    if "BF16" in caps:
        wanted.append(("openvino bf16", fp32_path, "bf16"))
    else:
        notes.append(f"OpenVINO bf16 not timed: the CPU device has no BF16 capability ({', '.join(caps)})")
    if int8_path is not None:
        wanted.append(("openvino int8", int8_path, "int8"))
        if "BF16" in caps:
            wanted.append(("openvino int8_bf16", int8_path, "int8_bf16"))
    infos = {p: inspect_model_file(p) for p in {fp32_path, int8_path} if p is not None}  # verifies the seals
    out: dict[str, Any] = {}
    for name, path, precision in wanted:
        try:
            out[name] = OpenVinoBackend(str(path), infos[path], precision=precision, threads=threads, batch_size=batch)
        except FsacError as e:
            notes.append(f"{name} not timed: {e}")
    return out


def outputs_dict(out: Any) -> dict[str, np.ndarray]:
    """A backend's or session's outputs as {name: float64 array}, whatever the contract."""
    from fsac.modelfile import OUTPUT_NAMES

    if isinstance(out, dict):
        return {k: np.asarray(v, np.float64).reshape(-1) for k, v in out.items()}
    return {k: np.asarray(v, np.float64).reshape(-1) for k, v in zip(OUTPUT_NAMES, out)}


def logits_of(out: dict[str, np.ndarray], tau: float) -> np.ndarray:
    """The anomaly logit z = (s(CF, AT-) - s(CF, AT+)) / tau: the graph's own output where it
    has one (format version 2), else computed from the two similarities (version 1)."""
    if "logit" in out:
        return out["logit"]
    neg = out.get("sim_anomalous", out.get("sim_neg"))
    pos = out.get("sim_normal", out.get("sim_pos"))
    return (neg - pos) / tau


def model_tau(info) -> float:
    """tau of a model file, from its head metadata (default 0.01, CLIP's logit scale 100)."""
    import json

    try:
        return float(json.loads(info.metadata.get("fsac.head", "{}")).get("tau", 0.01))
    except (TypeError, ValueError):
        return 0.01


def run_batched(fn: Callable[[np.ndarray], Any], pixels: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    parts = [outputs_dict(fn(pixels[i:i + batch])) for i in range(0, len(pixels), batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def peak_columns(res_backends: dict[str, dict[str, Any]], flops: float, batch: int, peaks) -> None:
    """Add, per row, the matching peak and the fraction of it reached (batch 1 and batch N)."""
    for name, b in res_backends.items():
        prec = row_precision(name)
        b["precision"] = prec
        peak = peaks.peak(prec)
        b["peak_gops"] = peak
        gops_b1 = flops / (b["batch1"]["p50_ms"] / 1e3) / 1e9
        gops_bn = flops * batch / b["batch_s"] / 1e9
        b["pct_of_peak_b1"] = None if not peak else 100 * gops_b1 / peak
        b["pct_of_peak_bn"] = None if not peak else 100 * gops_bn / peak


def markdown_extra(res: dict[str, Any]) -> str:
    """The peaks table, the per-row fraction of the matching peak, and the logit agreement."""
    pk = res["peaks"]
    nb = res["batch"]

    def f(x, spec=".0f"):
        return "n/a" if x is None else format(x, spec)

    lines = ["", f"CPU flags (matrix units): {' '.join(pk['flags']) or 'none'} -> class {pk['cpu_class']}",
             f"Measured peaks, {pk['threads']} threads, {pk['n']}^3: fp32 {f(pk['fp32'])} GFLOP/s, "
             f"bf16 {f(pk['bf16'])} GFLOP/s, int8 {f(pk['int8'])} GOP/s ("
             + ", ".join(f"{k} {v:.0f}" for k, v in pk["measured"].items()) + ")",
             "", f"| backend | precision | G(FL)OP/s b=1 | % of {''}matching peak (b=1) | % of peak (b={nb}) "
             f"| vs onnxruntime fp32 (b=1) | Spearman (logit) | verdicts | max abs dlogit / spread |",
             "|---|---|---|---|---|---|---|---|---|"]
    ref = res["backends"]["onnxruntime fp32"]["batch1"]["p50_ms"]
    for name, b in res["backends"].items():
        a = res.get("logit_agreement", {}).get(name, {})
        lines.append(
            f"| {name} | {b['precision']} | {b['gflops_b1']:.0f} | {f(b['pct_of_peak_b1'], '.1f')} % "
            f"| {f(b['pct_of_peak_bn'], '.1f')} % | {ref / b['batch1']['p50_ms']:.2f}x "
            f"| {f(a.get('spearman'), '.4f')} | {pct(a.get('verdict_agreement'))} "
            f"| {f(a.get('rel_max_abs_diff'), '.3f')} |")
    t = res.get("targets_hardware")
    if t:
        goal = f">= {t['min_speedup']}x onnxruntime fp32 at b=1" + (
            f" and >= {t['min_fraction_of_peak']:.0%} of the matching peak" if t["min_fraction_of_peak"] else "")
        lines.append("")
        for label, key in (("within the agreement bounds", "within_bounds"), ("any row", "any")):
            r = t[key]
            if r is None:
                lines.append(f"- target ({t['cpu_class']}: {t['rows']} rows {goal}), {label}: no row")
                continue
            lines.append(f"- target ({t['cpu_class']}: {t['rows']} rows {goal}), {label}: {r['backend']} "
                         f"{r['speedup_b1']:.2f}x, {f(r['pct_of_peak_b1'], '.1f')} % of peak: "
                         f"{'met' if r['met'] else 'NOT met'}")
        ratio = t.get("int8_over_fp32_peak")
        if ratio is not None:
            # Only the figure, no verdict: on a shared CPU the int8 peak of one run can be far under
            # the machine's (an AVX2 EPYC gave 268, 273 and 356 GOP/s in three runs, fp32 172-186).
            lines.append(f"- this run's measured int8 / fp32 matrix-multiply peak: {ratio:.2f}x (the int8 rows' "
                         f"ceiling against the {t['min_speedup']}x target, as far as the peaks measured are the "
                         "machine's)")
    lines += profile_lines(res)
    if res.get("feature_cosine"):
        lines.append("")
        lines.append("Encoder feature (projected [CLS]) cosine against onnxruntime fp32, min over images: "
                     + ", ".join(f"{k} {v:.5f}" for k, v in res["feature_cosine"].items()))
    return "\n".join(lines) + "\n"


# Issue targets by CPU class: (rows considered, speed-up over ONNX Runtime fp32 at batch 1,
# fraction of the matching peak or None).
HW_TARGETS = {
    "amx": ("best", 4.0, 0.50),
    "avx512-vnni": ("int8", 2.5, None),
    "avx512": ("int8", 2.5, None),
    "avx2": ("int8", 1.8, None),
}


def within_bounds(agreement: dict[str, Any] | None) -> bool:
    """An `asdict(LogitAgreement)` row inside the core's agreement bounds (the ones `fsac
    quantize` and `model.backend: auto` apply)."""
    from fsac.agreement import LogitAgreement, agreement_failures

    return bool(agreement) and not agreement_failures(LogitAgreement(**agreement))


def int8_ceiling(res: dict[str, Any]) -> float | None:
    """ONNX Runtime INT8's best speed-up over its fp32 at batch 1 on this machine: its profiled
    integer products at this run's int8 peak, its other ops as profiled (`bench_profile`)."""
    from fsac.export.bench_profile import OpProfile

    prof = res.get("int8_profile")
    if not prof:
        return None
    fp32_ms = res["backends"]["onnxruntime fp32"]["batch1"]["p50_ms"]
    return OpProfile.from_dict(prof).ceiling(fp32_ms, res["peaks"].get("int8"))


def profile_lines(res: dict[str, Any]) -> list[str]:
    """The INT8 profile and its ceiling, for bench.md."""
    prof = res.get("int8_profile")
    if not prof:
        return []
    from fsac.export.bench_profile import INT8_PRODUCT_OPS

    peak = res["peaks"].get("int8")
    rate = prof.get("int8_product_gops")
    rate_s = "no call's size recorded" if rate is None else (
        f"{rate:.0f} GOP/s" + (f", {100 * rate / peak:.0f} % of the int8 peak" if peak else ""))
    if prof.get("unsized_products"):
        rate_s += f"; {prof['unsized_products']} more calls of unrecorded size counted with the other ops"

    top = sorted(((k, v) for k, v in prof["by_op"].items() if k not in INT8_PRODUCT_OPS), key=lambda kv: -kv[1])[:6]
    line = (f"- ONNX Runtime INT8 profile, batch 1 ({prof['runs']} runs): {prof['kernel_ms']:.1f} ms of kernels; "
            f"integer products {prof['int8_product_ms']:.1f} ms ({rate_s}); other ops {prof['other_ms']:.1f} ms ("
            + ", ".join(f"{k} {v:.1f}" for k, v in top) + ")")
    ceiling = res.get("targets_hardware", {}).get("onnxruntime_int8_ceiling_b1")
    if ceiling is not None:
        line += (f"; with every product at the int8 peak and the rest as profiled: at most {ceiling:.2f}x "
                 "ONNX Runtime fp32")
    return [line]


def targets_extra(res: dict[str, Any]) -> dict[str, Any]:
    """The hardware target of this CPU class, checked on the rows within the agreement bounds
    and, separately, on all rows (with random weights the bounds may not be meaningful)."""
    cls = res["peaks"]["cpu_class"]
    kind, speedup, frac = HW_TARGETS.get(cls, ("int8", 1.8, None))
    ref = res["backends"]["onnxruntime fp32"]["batch1"]["p50_ms"]
    rows = {k: b for k, b in res["backends"].items()
            if not k.startswith("pytorch") and k != "onnxruntime fp32" and (kind == "best" or "int8" in k)}

    def best(names):
        if not names:
            return None
        k = min(names, key=lambda n: rows[n]["batch1"]["p50_ms"])
        b = rows[k]
        sp = ref / b["batch1"]["p50_ms"]
        pct = b.get("pct_of_peak_b1")
        met = sp >= speedup and (frac is None or (pct is not None and pct >= 100 * frac))
        return {"backend": k, "speedup_b1": sp, "pct_of_peak_b1": pct, "met": bool(met)}

    agree = res.get("logit_agreement", {})
    pk = res["peaks"]
    # The int8 rows' ceiling on this CPU as far as this run's peaks are the machine's: int8
    # kernels at their own measured peak, against fp32 at its peak.
    ratio = pk["int8"] / pk["fp32"] if kind == "int8" and pk.get("int8") and pk.get("fp32") else None
    return {"cpu_class": cls, "rows": kind, "min_speedup": speedup, "min_fraction_of_peak": frac,
            "int8_over_fp32_peak": ratio, "onnxruntime_int8_ceiling_b1": int8_ceiling(res),
            "within_bounds": best([k for k in rows if within_bounds(agree.get(k))]), "any": best(list(rows))}


# --------------------------------------------------------------------------- encoder feature


def encoder_feature_name(model) -> str | None:
    """The tensor holding the projected [CLS] feature F (N, C): the output of the image
    encoder's projection, the last MatMul under "/visual/" outside its transformer blocks
    with a 2-D weight (`pooled @ proj`; a (width, C) weight, which may be square)."""
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    produced_by = {o: n for n in model.graph.node for o in n.output}
    found = None
    for n in model.graph.node:
        if n.op_type != "MatMul" or not n.name.startswith("/visual/") or n.name.startswith("/visual/transformer/"):
            continue
        w = inits.get(n.input[1])
        if w is None and n.input[1] in produced_by:  # QDQ: the weight comes through DequantizeLinear
            dq = produced_by[n.input[1]]
            w = inits.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if w is not None and len(w) == 2:
            found = n.output[0]
    return found


def _with_output(path: Path, name: str) -> bytes | None:
    import onnx

    m = onnx.load(str(path))
    if name not in {o for n in m.graph.node for o in n.output}:
        return None
    m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    data = m.SerializeToString()
    del m
    return data


def feature_cosines(fp32_path: Path, int8_path: Path | None, pixels: np.ndarray, threads: int,
                    ov_precisions: list[str], variants: dict[str, Path] | None = None) -> dict[str, float]:
    """Min over images of cos(F_row, F_onnxruntime_fp32) for the encoder feature F, per row.
    variants: name -> INT8 file of an --int8-variant, a row "onnxruntime int8 [name]" each.

    With random weights the logits barely vary between images and the agreement bounds say
    little; F is what any real head would be computed from, so its cosine is the figure to
    read then. Each graph gets F as an extra output; OpenVINO reads the same bytes."""
    import onnx

    from fsac.runner import make_session

    name = encoder_feature_name(onnx.load(str(fp32_path), load_external_data=False))
    if name is None:
        return {}

    def cos(a, b):
        a = np.asarray(a, np.float64).reshape(len(a), -1)
        b = np.asarray(b, np.float64).reshape(len(b), -1)
        return float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))

    def ort_feature(data: bytes) -> np.ndarray:
        s = make_session(data, threads)
        return np.concatenate([s.run([name], {"image": pixels[i:i + 4]})[0] for i in range(0, len(pixels), 4)])

    def ov_feature(data: bytes, precision: str) -> np.ndarray:
        import openvino as ov

        from fsac.runtime.openvino_backend import FLOAT_HINT

        core = ov.Core()
        fe = ov.frontend.FrontEndManager().load_by_framework("onnx")
        import io

        model = fe.convert(fe.load(io.BytesIO(data)))
        hint = FLOAT_HINT[precision]
        cm = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads})
        req = cm.create_infer_request()
        outs = []
        for i in range(0, len(pixels), 4):
            req.infer({"image": pixels[i:i + 4]})
            outs.append(np.array(req.get_tensor(name).data))
        return np.concatenate(outs)

    out: dict[str, float] = {}
    data = _with_output(fp32_path, name)
    ref = ort_feature(data)
    for p in ov_precisions:
        if not p.startswith("int8"):
            out[f"openvino {p}"] = cos(ov_feature(data, p), ref)
    del data
    if int8_path is not None:
        qdata = _with_output(int8_path, name)
        if qdata is not None:
            out["onnxruntime int8"] = cos(ort_feature(qdata), ref)
            for p in ov_precisions:
                if p.startswith("int8"):
                    out[f"openvino {p}"] = cos(ov_feature(qdata, p), ref)
    for v, path in (variants or {}).items():  # against the same fp32 features, computed once
        vdata = _with_output(path, name)
        if vdata is not None:
            out[f"onnxruntime int8 [{v}]"] = cos(ort_feature(vdata), ref)
    return out
