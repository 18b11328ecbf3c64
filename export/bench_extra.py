"""OpenVINO rows, measured peaks and logit agreement for `fsac bench export`.

Kept apart from `bench.py` so that the benchmark's main loop stays one readable function:
this module adds backends to its timing dict and, afterwards, the columns that need the
machine's peaks (`fsac.peaks`) and the logits of every backend on the same images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from fsac.errors import FsacError

# Which peak each row is measured against: its arithmetic, not its runtime.
ROW_PRECISION = {
    "pytorch eager fp32": "fp32",
    "onnxruntime fp32": "fp32",
    "onnxruntime int8": "int8",
    "openvino f32": "fp32",
    "openvino bf16": "bf16",
    "openvino int8": "int8",
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
    import dataclasses

    fp32_info = inspect_model_file(fp32_path)  # verifies the seal
    out: dict[str, Any] = {}
    for name, path, precision in wanted:
        # The benchmark's INT8 graph is the quantizer's raw output (no seal of its own); it
        # is the fp32 model's graph quantized in this run, so it takes the fp32 metadata.
        info = fp32_info if path == fp32_path else dataclasses.replace(fp32_info, precision="int8", source=str(path))
        try:
            out[name] = OpenVinoBackend(str(path), info, precision=precision, threads=threads, batch_size=batch)
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
            f"| {f(a.get('spearman'), '.4f')} | {_pct(a.get('verdict_agreement'))} "
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
    from fsac.runtime.policy import MAX_REL_DLOGIT, MIN_SPEARMAN, MIN_VERDICT

    if not agreement:
        return False
    return (agreement["spearman"] >= MIN_SPEARMAN and agreement["verdict_agreement"] >= MIN_VERDICT
            and agreement["rel_max_abs_diff"] <= MAX_REL_DLOGIT)


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
    return {"cpu_class": cls, "rows": kind, "min_speedup": speedup, "min_fraction_of_peak": frac,
            "within_bounds": best([k for k in rows if within_bounds(agree.get(k))]), "any": best(list(rows))}


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.1%}"
