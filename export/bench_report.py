"""`fsac bench export`'s figures and report: the targets, the per-backend summary, the
Markdown table (bench.md) and the machine's description."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

# Targets of the issue, for this 2-core CPU.
TARGET_ORT_VS_TORCH = 1.3
TARGET_INT8_VS_FP32 = 1.8
TARGET_SPEARMAN = 0.99
TARGET_VERDICT = 0.99
TARGET_EXPORT_PEAK_OVER_FILE = 2.5


def percentiles(times: list[float]) -> dict[str, float]:
    a = np.asarray(times, dtype=np.float64)
    return {"p50_ms": float(np.percentile(a, 50) * 1e3), "p95_ms": float(np.percentile(a, 95) * 1e3),
            "p99_ms": float(np.percentile(a, 99) * 1e3), "mean_ms": float(a.mean() * 1e3), "runs": int(a.size)}


def summarize(names: list[str], lat: dict[str, list[float]], thr_times: dict[str, list[float]],
              mem: dict[str, float | None], flops: float, batch: int, peak: float, rep: Any,
              variant_info: dict[str, dict[str, Any]]) -> tuple[dict, dict, dict, dict]:
    """Per-backend figures (latency percentiles, throughput, GFLOP/s, share of the fp32 SGEMM,
    speed-ups), the ratios the targets are read on, the targets met, one line per INT8 variant."""
    res_backends: dict[str, dict[str, Any]] = {}
    torch_b1 = float(np.median(lat["pytorch eager fp32"]))
    torch_b8 = float(np.median(thr_times["pytorch eager fp32"]))
    for k in names:
        b1 = percentiles(lat[k])
        t8 = float(np.median(thr_times[k]))
        res_backends[k] = {
            "batch1": b1,
            "batch_s": t8,
            "throughput_img_s": batch / t8,
            "peak_rss_mib": mem.get(k),
            "gflops_b1": flops / (b1["p50_ms"] / 1e3) / 1e9,
            "gflops_b8": flops * batch / t8 / 1e9,
            "pct_of_sgemm_b8": 100 * flops * batch / t8 / 1e9 / peak,
            "speedup_vs_torch_b1": torch_b1 / (b1["p50_ms"] / 1e3),
            "speedup_vs_torch_b8": torch_b8 / t8,
        }
    b = res_backends
    ratios = {
        "ort_fp32_vs_torch_b1": b["pytorch eager fp32"]["batch1"]["p50_ms"] / b["onnxruntime fp32"]["batch1"]["p50_ms"],
        "ort_fp32_vs_torch_b8": b["onnxruntime fp32"]["throughput_img_s"] / b["pytorch eager fp32"]["throughput_img_s"],
        "int8_vs_fp32_b1": b["onnxruntime fp32"]["batch1"]["p50_ms"] / b["onnxruntime int8"]["batch1"]["p50_ms"],
        "int8_vs_fp32_b8": b["onnxruntime int8"]["throughput_img_s"] / b["onnxruntime fp32"]["throughput_img_s"],
        "int8_vs_torch_b1": b["pytorch eager fp32"]["batch1"]["p50_ms"] / b["onnxruntime int8"]["batch1"]["p50_ms"],
    }
    targets = {
        "ort_fp32_vs_torch": ratios["ort_fp32_vs_torch_b1"] >= TARGET_ORT_VS_TORCH,
        "int8_vs_fp32": ratios["int8_vs_fp32_b1"] >= TARGET_INT8_VS_FP32,
        "spearman": rep.spearman >= TARGET_SPEARMAN,
        "verdict": rep.verdict_agreement is not None and rep.verdict_agreement >= TARGET_VERDICT,
    }
    variants_out = {}
    for v, vi in variant_info.items():
        name = f"onnxruntime int8 [{v}]"
        variants_out[v] = (f"{b['onnxruntime fp32']['batch1']['p50_ms'] / b[name]['batch1']['p50_ms']:.2f}x fp32 at b=1, "
                           f"Spearman {vi['agreement']['spearman']:.4f}, max |Δ| {vi['agreement']['max_abs_diff']:.3g}, "
                           f"verdicts {pct(vi['agreement']['verdict_agreement'])}")
    return res_backends, ratios, targets, variants_out


def markdown_table(res: dict[str, Any]) -> str:
    nb = res["batch"]
    rows = [
        f"| backend | p50 ms (b=1) | p95 ms | p99 ms | img/s (b={nb}) | peak RSS MiB | GFLOP/s (b=1) | GFLOP/s (b={nb}) "
        f"| % of fp32 SGEMM (b={nb}) | speed-up vs torch (b=1) | speed-up vs torch (b={nb}) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, b in res["backends"].items():
        mem = "n/a" if b.get("peak_rss_mib") is None else f"{b['peak_rss_mib']:.0f}"
        rows.append(
            f"| {name} | {b['batch1']['p50_ms']:.1f} | {b['batch1']['p95_ms']:.1f} | {b['batch1']['p99_ms']:.1f} "
            f"| {b['throughput_img_s']:.2f} | {mem} | {b['gflops_b1']:.1f} | {b['gflops_b8']:.1f} "
            f"| {b['pct_of_sgemm_b8']:.0f} % | {b['speedup_vs_torch_b1']:.2f}x | {b['speedup_vs_torch_b8']:.2f}x |"
        )
    r, a = res["ratios"], res["int8_agreement"]
    t = res["targets"]
    lines = [
        f"### fsac bench export - {res['arch']} ({res['weights']}), {res['threads']} threads, {res['cpu']}",
        "",
        *rows,
        "",
        f"- FLOPs per image: {res['gflop_per_image']:.2f} GFLOP; measured SGEMM (numpy fp32, {res['threads']} threads): "
        f"{res['sgemm_gflops']:.0f} GFLOP/s",
        f"- ONNX Runtime fp32 vs PyTorch eager, batch 1 p50: {r['ort_fp32_vs_torch_b1']:.2f}x "
        f"(target >= {TARGET_ORT_VS_TORCH}x: {'met' if t['ort_fp32_vs_torch'] else 'NOT met'}); batch {nb}: "
        f"{r['ort_fp32_vs_torch_b8']:.2f}x",
        f"- ONNX Runtime INT8 vs fp32, batch 1 p50: {r['int8_vs_fp32_b1']:.2f}x "
        f"(target >= {TARGET_INT8_VS_FP32}x: {'met' if t['int8_vs_fp32'] else 'NOT met'}); batch {nb}: "
        f"{r['int8_vs_fp32_b8']:.2f}x",
        f"- INT8 vs fp32 on {a['n_images']} held-out real images: Spearman {a['spearman']:.4f} "
        f"(target >= {TARGET_SPEARMAN}: {'met' if t['spearman'] else 'NOT met'}), max |Δ logit| {a['max_abs_diff']:.3g}, "
        f"verdict agreement {pct(a['verdict_agreement'])} at logit threshold {a['threshold']:.6g} "
        f"(target >= {TARGET_VERDICT:.0%}: {'met' if t['verdict'] else 'NOT met'})",
        f"- INT8 settings: {res['int8_settings']}",
        f"- fp32 export: parity max |Δ logit| {res['export']['parity_max_abs_diff_logit']:.3g}; optimiser "
        f"{res['export']['optimize']['method']}: {res['export']['optimize']['reason']}",
    ]
    e = res["export"]
    if e.get("peak_rss_bytes"):
        met = e["peak_rss_over_file"] <= TARGET_EXPORT_PEAK_OVER_FILE
        parts = e.get("peak_rss") or {}
        detail = ""
        if parts.get("trace_process_bytes"):
            detail = (f"; tracing process {parts['trace_process_bytes'] / 2**20:.0f} MiB while the command held "
                      f"{parts['export_process_while_tracing_bytes'] / 2**20:.0f}, torch-free half "
                      f"{(parts.get('export_process_bytes') or 0) / 2**20:.0f}")
        lines.append(f"- `fsac export` (own processes) peak RSS {e['peak_rss_bytes'] / 2**20:.0f} MiB = "
                     f"{e['peak_rss_over_file']:.2f}x the {e['size_bytes'] / 1e6:.0f} MB model file "
                     f"(target <= {TARGET_EXPORT_PEAK_OVER_FILE}x: {'met' if met else 'NOT met'}{detail})")
    lines += [f"- variant {k}: {v}" for k, v in res.get("variants", {}).items()]
    lines += [f"- note: {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def versions() -> dict[str, str]:
    out = {}
    for mod in ("torch", "onnx", "onnxruntime", "onnxslim", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            pass
    return out
