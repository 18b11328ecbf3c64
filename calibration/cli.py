"""`fsac calibrate` and `fsac quantize` (plain functions with typer annotations).

    fsac calibrate model.onnx --normal held_out_good/ [--alpha 0.01]
    fsac calibrate model.onnx --normal good/ --anomalous defects/ --method f1|recall [--target-recall 0.99]
    fsac quantize model.onnx --calib-images good/ [--eval-images held_out/] [--target cpu|tensorrt]

Both run the model file itself through ONNX Runtime, without torch: they work on the
workstation and on the edge box alike. Heavy imports happen inside the functions.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fsac.errors import FsacError


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def _images(paths: list[Path] | None) -> list[Path]:
    from fsac.runner import expand_images

    if not paths:
        return []
    out = expand_images(paths)
    return list(dict.fromkeys(out))  # a file named twice counts once


def _with_suffix(model: Path, suffix: str) -> Path:
    name = model.name[: -len(".onnx")] if model.name.endswith(".onnx") else model.name
    return model.with_name(name + suffix)


def _image_stats(names: list[str], spec, false_alarm_rate) -> dict:
    """Brightness, contrast and sharpness of the normal images, on the model's own input,
    for fsac-run's input-health alarms (the core's fsac/imagestats.py, compared by runtime/health.py)."""
    from fsac.preprocess import decode_image_bytes, resize_crop
    from fsac.imagestats import reference_stats

    inputs = [resize_crop(decode_image_bytes(Path(n).read_bytes(), str(n), spec), spec) for n in names]
    return reference_stats(inputs, false_alarm_rate)


def calibrate_command(
    model: Annotated[Path, typer.Argument(help="fsac model file (from `fsac export` or `fsac quantize`)")],
    normal_images: Annotated[list[Path], typer.Option(
        "--normal", "-n", help="held-out GOOD images (files or folders), not the training shots")],
    anomalous_images: Annotated[Optional[list[Path]], typer.Option(
        "--anomalous", "-a", help="labelled DEFECTIVE images (files or folders), for --method f1/recall")] = None,
    alpha: Annotated[float, typer.Option(help="target false-alarm rate for --method conformal")] = 0.05,
    method: Annotated[str, typer.Option(help="conformal (normal images only), f1 or recall")] = "conformal",
    target_recall: Annotated[Optional[float], typer.Option(help="fraction of defects to catch, for --method recall")] = None,
    feedback: Annotated[Optional[Path], typer.Option(
        "--feedback", help="fsac-run feedback folder (live.feedback_dir): its frames marked False alarm are added "
                           "to the normal images")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="write the calibrated model here instead of in place")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="score distribution PNG [default: MODEL.scores.png]")] = None,
    report: Annotated[Optional[Path], typer.Option(help="also write the calibration report as JSON here")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing threshold / overwrite --out")] = False,
    batch_size: Annotated[int, typer.Option(help="images per inference call")] = 8,
    threads: Annotated[Optional[int], typer.Option(help="ONNX Runtime intra-op threads")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> dict:
    """Set the model's decision threshold from held-out images; written into its metadata."""
    from fsac.metadata import update_model_metadata
    from fsac.calibration.plot import write_scores_png
    from fsac.runner import score_model_file
    from fsac.threshold import METHODS, check_alpha, check_not_degenerate, compute_threshold, training_shots
    from fsac.score import VERDICT_RULE
    from fsac.io import sha256_bytes
    from fsac.modelfile import load_model_file

    model = Path(model)
    if method not in METHODS:
        raise FsacError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "conformal":
        check_alpha(alpha)
    _, info = load_model_file(model)  # verify before the slow part
    target = Path(out) if out is not None else model
    if out is not None and target.exists() and not force:
        raise FsacError(f"{target} exists; pass --force to overwrite it")
    if info.logit_threshold is not None and not force:
        raise FsacError(f"{model} already has a threshold (logit {info.logit_threshold:.6g}); "
                        "pass --force to replace it")

    normals = _images(normal_images)
    anomalies = _images(anomalous_images)
    notes: list[str] = []
    said: set[str] = set()  # notes printed as they arose
    if feedback is not None:  # good parts the operator saw flagged: the threshold must let them pass
        from fsac.feedback import good_images

        marked = [p for p in good_images(feedback) if p not in set(normals)]
        normals += marked
        notes.append(f"added {len(marked)} frame(s) marked False alarm from {feedback}")
    # Training shots score lower than other good parts (the model was fit on them), so
    # they would pull a conformal threshold down and break exchangeability: drop them.
    shots = set(training_shots(normals, info.metadata))
    if shots:
        kept = [p for p in normals if p not in shots]
        if len(kept) < len(normals):
            note = (f"left out {len(normals) - len(kept)} training shot(s) from the normal images: "
                    + ", ".join(p.name for p in normals if p not in set(kept)))
            notes.append(note)
            _say(quiet, f"note: {note}")  # now: an error below would otherwise hide why n is smaller
            said.add(note)
            normals = kept
    if not normals:
        raise FsacError("no held-out normal images to calibrate on (--normal)"
                        + (f"; {notes[-1]}" if notes and notes[-1].startswith("left out") else ""))
    if method in ("f1", "recall") and not anomalies:
        raise FsacError(f"--method {method} needs labelled defective images (--anomalous)")

    _say(quiet, f"scoring {len(normals)} normal" + (f" and {len(anomalies)} anomalous" if anomalies else "")
         + f" images with {model.name} ({info.precision})")
    from fsac.image_geometry import geometry_warnings, image_sizes

    for w in geometry_warnings(image_sizes([*normals, *anomalies]), info.preprocess):
        _warn(w)
    skipped: list[dict] = []  # unreadable images: left out and listed, as `fsac eval` does
    neg, _ = score_model_file(model, normals, batch_size, threads, skipped=skipped)
    pos = score_model_file(model, anomalies, batch_size, threads, skipped=skipped)[0] if anomalies else None
    for e in skipped:
        _warn(f"skipped unreadable image {e['file']}: {e['reason']}")
    if skipped:
        notes.append(f"skipped {len(skipped)} unreadable image(s): " + ", ".join(Path(e["file"]).name for e in skipped))
    # Thresholds are taken on the logit, never on the saturating score (fsac.score).
    res = compute_threshold(method, neg.logit, pos.logit if pos is not None else None, alpha, target_recall)
    for w in res.warnings:
        _warn(w)
    check_not_degenerate(res, neg.logit, pos.logit if pos is not None else None)

    threshold_info = {
        **res.to_dict(),
        "rule": VERDICT_RULE,
        "model_precision": info.precision,
        "normal_images": [{"name": Path(n).name, "sha256": h} for n, h in zip(neg.names, neg.sha256)],
        "anomalous_images": ([{"name": Path(n).name, "sha256": h} for n, h in zip(pos.names, pos.sha256)]
                             if pos is not None else []),
        "images_sha256": sha256_bytes("".join(sorted(neg.sha256 + (pos.sha256 if pos else []))).encode()),
        "notes": notes,
        "skipped": skipped,
    }
    if info.metadata.get("fsac.weights_random") == "true":
        threshold_info["notes"].append("RANDOM backbone weights: this threshold is meaningless outside pipeline tests")
    written, new_info = update_model_metadata(
        model, {"fsac.logit_threshold": repr(float(res.threshold)), "fsac.threshold": repr(res.score_threshold),
                "fsac.threshold_info": json.dumps(threshold_info),
                "fsac.image_stats": json.dumps(_image_stats(neg.names, info.preprocess, res.fpr))},
        out=target, force=force)

    plot = Path(plot) if plot is not None else _with_suffix(target, ".scores.png")
    if method == "conformal":
        desc = f"conformal, alpha={alpha:g}, n={res.n_normal}, k={res.k}"
    elif method == "f1":
        desc = f"F1-max = {res.f1:.3f}"
    else:
        desc = f"target recall {target_recall:g}"
    sub = f"on these images: false alarms {res.fpr:.1%}" + (f", recall {res.recall:.1%}" if res.recall is not None else "")
    try:
        write_scores_png(plot, neg.logit, pos.logit if pos is not None else None, res.threshold,
                         f"{written.name}: logit threshold {res.threshold:.6g} ({desc})", sub)
    except ImportError:  # an edge box has no matplotlib (fsac[runtime]); the threshold does not need it
        _warn(f"matplotlib is not installed: no score plot {plot}")
        plot = None
    result = {"model": str(written), "logit_threshold": res.threshold, "threshold": res.score_threshold,
              "plot": str(plot) if plot else None, "result": res.to_dict(), "seal": new_info.seal, "notes": notes, "skipped": skipped}
    if report is not None:
        from fsac.io import atomic_write_json
        from fsac.score import score_from_logit

        # Scores from the logits in float64, not the graph's float32 `score` output: that one
        # rounds to exactly 1.0 (or 0.0) for confident images, and a report of ties says nothing.
        atomic_write_json(report, {**result, "threshold_info": threshold_info,
                                   "normal_logits": neg.logit.tolist(),
                                   "anomalous_logits": pos.logit.tolist() if pos is not None else [],
                                   "normal_scores": score_from_logit(neg.logit).tolist(),
                                   "anomalous_scores": score_from_logit(pos.logit).tolist() if pos is not None else []})
    for n in notes + threshold_info["notes"][len(notes):]:
        if n not in said:
            _say(quiet, f"note: {n}")
    line = f"logit threshold {res.threshold:.6g} (score {res.score_threshold:.9g}; {desc}); {sub}"
    if method == "conformal":
        line += f"; expected false-alarm rate on new good parts {res.expected_fpr:.3f} (<= {alpha:g})"
    _say(quiet, line)
    _say(quiet, f"wrote {written} (seal {new_info.seal[:12]}...)" + (f", plot {plot}" if plot else ""))
    return result


def quantize_command(
    model: Annotated[Path, typer.Argument(help="fp32 fsac model file from `fsac export`")],
    calib_images: Annotated[list[Path], typer.Option(
        "--calib-images", "-c", help="normal images (files or folders) for the activation ranges")],
    eval_images: Annotated[Optional[list[Path]], typer.Option(
        "--eval-images", "-e", help="held-out images for the INT8/fp32 agreement report [default: the last "
                                    "quarter of --calib-images, not used for calibration]")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="INT8 model file [default: MODEL.int8.onnx]")] = None,
    calibration_method: Annotated[str, typer.Option(help="minmax, entropy or percentile")] = "minmax",
    target: Annotated[str, typer.Option(help="cpu (uint8 activations, fastest on ONNX Runtime CPU) or tensorrt "
                                             "(symmetric int8, for explicit-precision TensorRT engines)")] = "cpu",
    num_calib: Annotated[int, typer.Option(help="at most this many calibration images")] = 32,
    per_channel: Annotated[bool, typer.Option("--per-channel/--per-tensor", help="weight scales per output channel")] = True,
    reduce_range: Annotated[Optional[bool], typer.Option(
        "--reduce-range/--no-reduce-range",
        help="7-bit weights, which every CPU runs without saturating (x86 without VNNI clamps 8-bit "
             "products) [default: 7-bit for --target cpu, 8-bit for tensorrt]; --no-reduce-range: 8-bit, "
             "only for boxes with VNNI or AMX")] = None,
    percentile: Annotated[float, typer.Option(help="for --calibration-method percentile")] = 99.999,
    ops: Annotated[str, typer.Option(help="op types to quantize: matmul (MatMul/Gemm/Conv) or all")] = "matmul",
    scope: Annotated[str, typer.Option(help="encoder (head and score stay float) or all")] = "encoder",
    float_outputs: Annotated[bool, typer.Option("--float-outputs/--quantized-outputs",
                                                help="matrix products give float outputs (cpu target; faster on ONNX "
                                                     "Runtime, one rounding fewer) or quantized ones")] = True,
    engine: Annotated[str, typer.Option(help="who places the quantizers: onnxruntime (its quantizer, the settings "
                                             "above) or nncf (Intel's NNCF, transformer preset: faster in OpenVINO "
                                             "on AMX, slower in ONNX Runtime; pip install 'fsac[nncf]')")] = "onnxruntime",
    threshold: Annotated[Optional[float], typer.Option(help="verdict threshold in logit units for the agreement report [default: the model's]")] = None,
    alpha: Annotated[float, typer.Option(help="if the model has no threshold: conformal alpha on the fp32 calibration logits")] = 0.1,
    min_spearman: Annotated[float, typer.Option(help="refuse below this Spearman correlation with fp32")] = 0.99,
    min_verdict_agreement: Annotated[float, typer.Option(help="refuse below this fraction of equal verdicts")] = 0.99,
    max_rel_dlogit: Annotated[float, typer.Option(help="refuse above this max |Δ logit| as a fraction of the fp32 "
                                                       "logits' spread")] = 0.10,
    allow_disagreement: Annotated[bool, typer.Option("--allow-disagreement", help="keep the INT8 model below the bounds (with a loud warning)")] = False,
    report: Annotated[Optional[Path], typer.Option(help="also write the quantization report as JSON here")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite --out")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> dict:
    """Static INT8 quantization (QDQ) calibrated on normal images, with an agreement report."""
    from fsac.calibration.quantize import MATMUL_OPS, QuantizeSettings, quantize_model_file
    from fsac.runner import load_pixels, make_session, run_session
    from fsac.threshold import conformal_threshold, next_float32_up
    from fsac.io import sha256_file
    from fsac.modelfile import load_model_file

    model = Path(model)
    out = Path(out) if out is not None else _with_suffix(model, ".int8.onnx")
    if out.exists() and not force:
        raise FsacError(f"{out} exists; pass --force to overwrite it")
    if ops not in ("matmul", "all"):
        raise FsacError(f"--ops must be matmul or all, got {ops!r}")
    settings = QuantizeSettings(method=calibration_method, target=target, per_channel=per_channel,
                                reduce_range=reduce_range, percentile=percentile, scope=scope,
                                op_types=None if ops == "all" else list(MATMUL_OPS), float_outputs=float_outputs,
                                engine=engine)
    if num_calib < 1:
        raise FsacError(f"--num-calib must be >= 1, got {num_calib}")
    data, info = load_model_file(model)
    calib = _images(calib_images)
    evals = _images(eval_images)
    if not evals:
        if len(calib) < 6:
            raise FsacError(f"need at least 6 --calib-images to hold some out for the agreement report "
                            f"(got {len(calib)}), or pass --eval-images")
        n_eval = max(3, len(calib) // 4)
        calib, evals = calib[:-n_eval], calib[-n_eval:]
    else:
        held = {p.resolve() for p in evals}
        calib = [p for p in calib if p.resolve() not in held]
    calib = calib[:num_calib]
    if not calib:
        raise FsacError("no calibration images left (--calib-images)")
    if len(evals) < 3:
        raise FsacError(f"need at least 3 held-out images for the agreement report, got {len(evals)}")
    spec = info.preprocess
    _say(quiet, f"quantizing {model.name} on {len(calib)} calibration images ({calibration_method}, target {target}); "
                f"agreement on {len(evals)} held-out images")
    calib_px = load_pixels(calib, spec)
    eval_px = load_pixels(evals, spec)
    source = "option --threshold" if threshold is not None else "model"
    if threshold is None and info.logit_threshold is None:
        fp = run_session(make_session(data), calib_px)["logit"]
        res = conformal_threshold(fp, alpha)
        if res.attainable:
            threshold, source = res.threshold, f"conformal alpha={alpha:g} on the fp32 logits of the calibration images"
        else:
            threshold = next_float32_up(float(fp.max()))
            source = "max fp32 logit of the calibration images (model not calibrated)"
    path, rep, warns = quantize_model_file(
        model, out, calib_px, settings, [str(p) for p in calib], [sha256_file(p) for p in calib],
        eval_px, [str(p) for p in evals], threshold, source, allow_disagreement,
        min_spearman, min_verdict_agreement, force, max_rel_dlogit)
    for w in warns:
        _warn(w)
    _, qinfo = load_model_file(path)
    fp32_size, int8_size = model.stat().st_size, path.stat().st_size
    result = {"model": str(path), "seal": qinfo.seal, "settings": settings.to_dict(),
              "agreement": rep.to_dict() if rep else None, "warnings": warns,
              "size_fp32_bytes": fp32_size, "size_int8_bytes": int8_size}
    if rep is not None:
        _say(quiet, rep.summary())
        for n in rep.notes:
            _say(quiet, f"note: {n}")
    _say(quiet, f"wrote {path} ({int8_size / 1e6:.1f} MB, fp32 was {fp32_size / 1e6:.1f} MB)")
    if settings.reduce_range is False and settings.target == "cpu":
        # The agreement above was measured on this CPU; an x86 box without VNNI clamps these sums.
        _say(quiet, "note: 8-bit weights (--no-reduce-range): serve this file only on CPUs with VNNI or AMX; "
                    "AVX2-only and AVX-512-without-VNNI CPUs saturate its int8 sums (fsac-run warns there)")
    if report is not None:
        from fsac.io import atomic_write_json

        atomic_write_json(report, result)
    if rep is not None and not math.isfinite(rep.spearman):
        _warn("Spearman correlation undefined (constant scores)")
    return result
