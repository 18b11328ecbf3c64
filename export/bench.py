"""`fsac bench export`: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime INT8 (vs TensorRT).

One run, one process, the same real images for every backend:

  1. model: a checkpoint, or the architecture with RANDOM weights (speed does not depend
     on the weights; agreement figures do, see the note in the report)
  2. export the fp32 graph (parity-checked, optimised as `fsac export` does) and quantize
     it to INT8 QDQ on normal images (as `fsac quantize` does)
  3. latency at batch 1: rounds over the backends (torch, fp32, int8, torch, ...) so that
     load from other processes on a shared CPU hits all of them alike; p50 / p95 / p99
  4. throughput at batch 8 by default (images/s, median over rounds, interleaved the same way)
  5. peak memory: each backend in a fresh subprocess (VmHWM: load + one batch-8 run)
  6. FLOPs of one image (torch's FlopCounterMode) -> achieved GFLOP/s, set against the
     machine's measured SGEMM rate (numpy float32 matmul on the same threads)
  7. INT8 vs fp32 on held-out images (logits): Spearman, max |Δ logit|, verdict agreement

Writes bench.json and bench.md into --out-dir and prints the Markdown table (the figures
and the table: bench_report.py; the memory probes: bench_memory.py).

Layout: the `fsac bench export` modules (this file, bench_extra.py and bench_memory.py) are
the one place where wings are composed. The benchmark compares every backend the project ships on the same images,
so it must run the calibration wing's INT8 quantizer and the runtime wing's own backends
(OpenVINO, TensorRT) and agreement bounds: timing a re-implementation would measure something
fsac-run does not run. Everything else they share (logit agreement, peak memory, peaks, the
ONNX Runtime runner) comes from the core; tests/core/test_layout.py holds the allowlist.
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import numpy as np
import typer

from fsac.cpu_quiet import interleaved
from fsac.errors import FsacError

from .bench_memory import export_subprocess, peak_memory
from .bench_report import cpu_name, markdown_table, summarize, versions


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def torch_matmul(n: int, threads: int, repeats: int) -> float:
    """torch bf16 matmul rate (GFLOP/s): the bf16 peak measurer this wing adds to the core's."""
    import torch

    from fsac.peaks import best_rate

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(n, n).to(torch.bfloat16)
        b = torch.randn(n, n).to(torch.bfloat16)
        return best_rate(lambda: a @ b, 2 * n**3, repeats)
    finally:
        torch.set_num_threads(before)


TORCH_PEAKS = (("bf16", "torch bf16", torch_matmul),)


def model_flops(deploy_model, image_size: int, last_block: str = "class-token") -> int:
    """FLOPs (multiply-add = 2) of one image through the deploy model, counted by torch, with
    the last block as the export traces it (`fsac.train.last_block`)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fsac.train.last_block import last_block as last_block_traced
    from fsac.export.onnx_export import _mha_fastpath_disabled

    x = torch.zeros(1, image_size, image_size, 3, dtype=torch.uint8)
    with _mha_fastpath_disabled(), last_block_traced(deploy_model, last_block), torch.no_grad(), \
            FlopCounterMode(display=False) as fc:
        deploy_model(x)
    return int(fc.get_total_flops())


# --------------------------------------------------------------------------- command


VARIANTS = {
    # name: QuantizeSettings overrides, for --int8-variants
    "all-ops": {"op_types": None},
    "whole-graph": {"op_types": None, "scope": "all"},
    "full-range": {"reduce_range": False},  # 8-bit weights (the default before they saturated AVX2 boxes)
    "per-tensor": {"per_channel": False},
    "tensorrt-symmetric": {"target": "tensorrt"},
    "entropy": {"method": "entropy"},
    "percentile": {"method": "percentile"},
    "with-attention-products": {"const_weights_only": False},  # the pre-issue-11 default
    "quantized-outputs": {"float_outputs": False},  # QuantizeLinear after every product (before this stop)
    "nncf": {"engine": "nncf"},  # Intel's NNCF places the quantizers (fsac quantize --engine nncf)
}


def bench_export_command(
    images: Annotated[list[Path], typer.Option("--images", "-i", help="normal images (files/folders): calibration + timing")],
    anomalous_images: Annotated[Optional[list[Path]], typer.Option(
        "--anomalous", "-a", help="defective images added to the held-out set for the verdict agreement")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="checkpoint to benchmark [default: --arch with random weights]")] = None,
    arch: Annotated[str, typer.Option(help="architecture when no checkpoint is given")] = "ViT-B-16-plus-240",
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="where bench.json / bench.md (and, with --keep-models, the models) go")] = Path("benchmarks/export"),
    runs: Annotated[int, typer.Option(help="batch-1 latency samples per backend")] = 30,
    batch: Annotated[int, typer.Option(help="batch size for the throughput figure")] = 8,
    batch_runs: Annotated[int, typer.Option(help="batch-8 samples per backend")] = 3,
    num_calib: Annotated[int, typer.Option(help="normal images for INT8 calibration")] = 16,
    num_eval: Annotated[int, typer.Option(help="held-out normal images for timing and agreement")] = 16,
    calibration_method: Annotated[str, typer.Option(help="minmax, entropy or percentile")] = "minmax",
    optimize: Annotated[str, typer.Option(help="fp32 graph optimisation before timing and quantizing")] = "slim",
    int8_variants: Annotated[Optional[list[str]], typer.Option(
        "--int8-variant", help=f"extra INT8 settings to time against the default: {', '.join(VARIANTS)}")] = None,
    threads: Annotated[int, typer.Option(help="intra-op threads for every backend")] = 2,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="measure peak memory in subprocesses")] = True,
    keep_models: Annotated[bool, typer.Option("--keep-models", help="keep the fp32/INT8 model files in --out-dir")] = False,
    seed: Annotated[int, typer.Option(help="random-weights seed when no checkpoint is given")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> dict:
    """Time PyTorch eager, ONNX Runtime fp32 and INT8 (and TensorRT if present) on real images."""
    import torch

    from dataclasses import asdict

    from fsac.calibration.int8_agreement import agreement
    from fsac.calibration.quantize import QuantizeSettings, int8_metadata, quantize_bytes
    from fsac.metadata import write_with_metadata
    from fsac.modelfile import inspect_model_file
    from fsac.export.bench_extra import (feature_cosines, markdown_extra, openvino_backends, peak_columns,
                                         run_batched, targets_extra)
    from fsac.agreement import logit_agreement
    from fsac.export.bench_profile import profile_session
    from fsac.train.last_block import last_block
    from fsac.peaks import best_of, measure_peaks, numpy_sgemm
    from fsac.runner import expand_images, load_pixels, make_session, run_session
    from fsac.threshold import conformal_threshold, next_float32_up
    from fsac.export.cli import export_trained
    from fsac.io import atomic_write_json, atomic_write_text, sha256_file
    from fsac.train.checkpoint import (checkpoint_sha256, load_checkpoint, random_trained_model,
                                       save_checkpoint)

    variants = list(int8_variants or [])
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise FsacError(f"unknown --int8-variant {bad}; choose from {', '.join(VARIANTS)}")
    if batch < 1 or runs < 3 or batch_runs < 1:
        raise FsacError("--batch >= 1, --runs >= 3 and --batch-runs >= 1 are required")
    normals = expand_images(images)
    need = num_calib + max(num_eval, batch)
    if len(normals) < need:
        raise FsacError(f"--images holds {len(normals)} images; need {need} (--num-calib {num_calib} + held-out)")
    anomalies = expand_images(anomalous_images) if anomalous_images else []
    torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    with tempfile.TemporaryDirectory(prefix="fsac-bench-") as tmp_s:
        tmp = Path(tmp_s)
        work = out_dir if keep_models else tmp
        t0 = time.perf_counter()
        if checkpoint is not None:
            trained = load_checkpoint(checkpoint, device="cpu", quiet=True)
            ck_path, ck_sha = Path(checkpoint), checkpoint_sha256(checkpoint)
        else:
            trained = random_trained_model(arch, seed)
            ck_path = tmp / "checkpoint"
            save_checkpoint(ck_path, trained, extra={"train_images": [], "note": "fsac bench: random weights"})
            ck_sha = checkpoint_sha256(ck_path)
        if trained.backbone.info.is_random:
            notes.append("RANDOM backbone weights: timings are representative, but INT8/fp32 agreement measured "
                         "with random weights says little about agreement with real CLIP weights")
        spec = trained.backbone.spec
        deploy = trained.deploy_model()
        _say(quiet, f"model {trained.backbone.info.arch} ready in {time.perf_counter() - t0:.0f} s")

        calib_paths = normals[:num_calib]
        eval_paths = normals[num_calib : num_calib + max(num_eval, batch)]
        calib_px = load_pixels(calib_paths, spec)
        eval_px = load_pixels(eval_paths, spec)
        agree_px = np.concatenate([eval_px, load_pixels(anomalies[:num_eval], spec)]) if anomalies else eval_px

        # fp32 export exactly as `fsac export` does it (parity on 4 held-out real images).
        fp32_path = work / "bench.fp32.onnx"
        if memory:
            # `fsac export` itself, in its own process, so its peak memory is measured as a
            # workstation would see it (the benchmark's own process holds more).
            _say(quiet, "exporting in a subprocess (`fsac export`, peak memory measured) ...")
            exp = export_subprocess(ck_path, fp32_path, eval_paths[:4], optimize, tmp)
        else:
            exp = export_trained(trained, ck_sha, fp32_path, eval_paths[:4], force=True, optimize=optimize,
                                 quiet=quiet)
        fp32 = fp32_path.read_bytes()
        exp.pop("parity", None)

        settings = QuantizeSettings(method=calibration_method)
        _say(quiet, f"quantizing to INT8 on {len(calib_paths)} normal images ({calibration_method}) ...")
        int8, qinfo = quantize_bytes(fp32, calib_px, settings, work_dir=tmp)
        # Sealed with the metadata `fsac quantize` writes, so the kept file is a model file
        # that fsac-run and `fsac bench isa` accept (the raw quantizer output carried the
        # fp32 file's seal, which its content no longer matched).
        int8_path = work / "bench.int8.onnx"
        write_with_metadata(int8_path, int8,
                            int8_metadata(inspect_model_file(fp32_path), settings, qinfo,
                                          [str(p) for p in calib_paths], [sha256_file(p) for p in calib_paths],
                                          None),
                            force=True)

        s_fp32 = make_session(fp32, threads)
        s_int8 = make_session(int8, threads)

        def run_torch(x: np.ndarray):
            # The function the exported graph computes (its last block for [CLS] only), so
            # that the PyTorch row and the ONNX rows do the same work (`model_flops` too).
            with torch.no_grad(), last_block(deploy):
                return deploy(torch.from_numpy(x))

        backends: dict[str, Callable[[np.ndarray], Any]] = {
            "pytorch eager fp32": run_torch,
            "onnxruntime fp32": lambda x: s_fp32.run(None, {"image": x}),
            "onnxruntime int8": lambda x: s_int8.run(None, {"image": x}),
        }
        variant_info: dict[str, dict[str, Any]] = {}
        for v in variants:
            st = QuantizeSettings(**{**settings.to_dict(), **VARIANTS[v]})
            vb, _ = quantize_bytes(fp32, calib_px, st, work_dir=tmp)
            sess = make_session(vb, threads)
            backends[f"onnxruntime int8 [{v}]"] = (lambda s: lambda x: s.run(None, {"image": x}))(sess)
            vpath = tmp / f"variant-{v}.onnx"  # for its encoder feature cosine, below
            vpath.write_bytes(vb)
            del vb
            variant_info[v] = {"settings": st.to_dict(), "session": sess, "path": vpath}
        trt = _tensorrt_backend(fp32_path, spec.image_size, batch, tmp, notes)
        if trt is not None:
            backends["tensorrt fp16"] = trt
        # fsac-run's OpenVINO backend on the same two sealed files (fsac.export.bench_extra).
        ov_backends = openvino_backends(fp32_path, int8_path, threads, batch, notes)
        for name, ovb in ov_backends.items():
            backends[name] = ovb.infer
        logit_agree = {}

        # INT8 agreement with fp32 on the held-out images, on the logits (the score saturates);
        # the verdict threshold is the one `fsac calibrate` would set (conformal, alpha = 0.1)
        # from the fp32 calibration logits.
        fp_cal = run_session(s_fp32, calib_px)["logit"]
        cres = conformal_threshold(fp_cal, 0.1)
        logit_thr = cres.threshold if cres.attainable else next_float32_up(float(fp_cal.max()))
        ref_out = run_session(s_fp32, agree_px)
        fp_eval = ref_out["logit"]
        rep = agreement(fp_eval, run_session(s_int8, agree_px)["logit"], logit_thr,
                        f"conformal alpha=0.1 on {len(calib_paths)} fp32 calibration logits")
        for v, vi in variant_info.items():
            vr = agreement(fp_eval, run_session(vi["session"], agree_px)["logit"], logit_thr)
            vi["agreement"] = {"spearman": vr.spearman, "max_abs_diff": vr.max_abs_diff,
                               "verdict_agreement": vr.verdict_agreement}

        # Every runtime row against ONNX Runtime fp32, through the core's one agreement function.
        sessions = {"onnxruntime int8": s_int8, **{f"onnxruntime int8 [{v}]": vi["session"]
                                                   for v, vi in variant_info.items()}}
        for name, sess in sessions.items():
            got = run_session(sess, agree_px)["logit"]
            logit_agree[name] = asdict(logit_agreement(ref_out["logit"], got, logit_thr))
        for name, ovb in ov_backends.items():
            got = run_batched(ovb.infer, agree_px, batch)["logit"]
            logit_agree[name] = asdict(logit_agreement(ref_out["logit"], got, logit_thr))
        # The variants too: full-range against the 7-bit default shows a non-VNNI CPU's saturation.
        feature_cos = feature_cosines(fp32_path, int8_path, agree_px, threads,
                                      [b.precision for b in ov_backends.values()],
                                      {v: vi.pop("path") for v, vi in variant_info.items()})
        if trained.backbone.info.is_random:
            notes.append("RANDOM weights: the logits barely vary between images, so the logit agreement bounds "
                         "are not meaningful here; the encoder feature cosine against fp32 is reported as well")
        _say(quiet, "measuring this machine's fp32 / bf16 / int8 matmul peaks (before timing) ...")
        peaks_before = measure_peaks(threads, extra=TORCH_PEAKS)
        _say(quiet, f"timing {len(backends)} backends: {runs} interleaved rounds at batch 1 ...")
        singles = [eval_px[i : i + 1] for i in range(len(eval_px))]
        lat = interleaved(backends, singles, runs, warmup=2)
        _say(quiet, f"timing at batch {batch}: {batch_runs} interleaved rounds ...")
        big = [eval_px[:batch]]
        thr_times = interleaved(backends, big, batch_runs, warmup=1)
        # Where the INT8 row's batch-1 time goes (integer products against the float ops), for
        # its ceiling on this machine (fsac.export.bench_profile).
        _say(quiet, "profiling the INT8 session at batch 1 (ONNX Runtime's kernel timer) ...")
        try:
            int8_profile = profile_session(int8, singles[0], threads).to_dict()
        except Exception as e:  # a diagnostic: its failure must not sink the timed rows
            int8_profile = None
            notes.append(f"INT8 profile not taken ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})")

        flops = model_flops(deploy, spec.image_size)
        _say(quiet, "measuring the peaks again (after timing; each measurer keeps its better run) ...")
        peaks = best_of(peaks_before, measure_peaks(threads, extra=TORCH_PEAKS))
        peak = peaks.fp32 or numpy_sgemm(2048, threads, 3)
        mem: dict[str, float | None] = {}
        if memory:
            _say(quiet, "peak memory: one subprocess per backend ...")
            mem["pytorch eager fp32"] = peak_memory("torch", str(ck_path), eval_px[:batch], threads, tmp)
            fp32_file = tmp / "probe.fp32.onnx"
            fp32_file.write_bytes(fp32)
            mem["onnxruntime fp32"] = peak_memory("onnx", str(fp32_file), eval_px[:batch], threads, tmp)
            mem["onnxruntime int8"] = peak_memory("onnx", str(int8_path), eval_px[:batch], threads, tmp)
            for name, ovb in ov_backends.items():
                src = int8_path if ovb.precision.startswith("int8") else fp32_file
                mem[name] = peak_memory(f"openvino:{ovb.precision}", str(src), eval_px[:batch], threads, tmp,
                                        str(fp32_file))
        else:
            notes.append("peak memory not measured (--no-memory)")

    res_backends, ratios, targets, variants_out = summarize(list(backends), lat, thr_times, mem, flops, batch,
                                                            peak, rep, variant_info)
    agree = {k: v for k, v in rep.to_dict().items() if k != "images"}
    peak_columns(res_backends, flops, batch, peaks)
    result = {
        "arch": trained.backbone.info.arch,
        "weights": trained.backbone.info.weights_id,
        "threads": threads,
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "versions": versions(),
        "images": {"calibration": [p.name for p in calib_paths], "held_out": [p.name for p in eval_paths],
                   "anomalous": [p.name for p in anomalies[:num_eval]]},
        "runs_batch1": runs,
        "batch": batch,
        "runs_batch": batch_runs,
        "gflop_per_image": flops / 1e9,
        "sgemm_gflops": peak,
        "backends": res_backends,
        "ratios": ratios,
        "targets": targets,
        "int8_agreement": agree,
        "int8_settings": {**settings.to_dict(), **{k: v for k, v in qinfo.items() if not k.endswith("_s")}},
        "int8_quantize_s": qinfo.get("quantize_s"),
        "variants": variants_out,
        "export": exp,
        "notes": notes + ["p99 over this many runs is close to the maximum; the CPU is shared, so absolute "
                          "times drift between runs - ratios measured in the same run are what count"],
    }
    result["cpu_flags"] = peaks.flags
    result["peaks"] = peaks.to_dict()
    result["logit_agreement"] = logit_agree
    result["feature_cosine"] = feature_cos
    result["logit_threshold"] = logit_thr
    result["int8_profile"] = int8_profile
    result["targets_hardware"] = targets_extra(result)
    md = markdown_table(result) + markdown_extra(result)
    atomic_write_json(out_dir / "bench.json", result)
    atomic_write_text(out_dir / "bench.md", md)
    print(md)
    return result


def _tensorrt_backend(fp32_path: Path, image_size: int, batch: int, tmp: Path, notes: list[str]):
    """A TensorRT FP16 runner when tensorrt and a CUDA GPU are present, else None (+ a note).
    It is the edge runtime's own TensorRT backend, so the benchmark times what fsac-run runs."""
    from fsac.export.tensorrt_build import build_engine
    from fsac.modelfile import load_engine_file
    from fsac.runtime.tensorrt_backend import TensorRTBackend

    try:
        rep = build_engine(fp32_path, tmp / "bench.fp16.engine", "fp16", max_batch=batch, force=True)
        data, info, _ = load_engine_file(rep.engine)
        backend = TensorRTBackend(data, info, batch_size=batch)
    except FsacError as e:
        notes.append(f"TensorRT not timed: {e}")
        return None
    return backend.infer
