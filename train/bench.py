"""`fsac bench train`: how long `fsac train` takes, stage by stage, and its peak memory.

Target: the whole k = 4 `fsac train` of the full ViT-B-16-plus-240, as a command (interpreter
start and imports included), synthetic anomalies included, at most 10 s wall on the 2-core CPU
(the earlier target was 60 s). Timings do not depend on the backbone's weights,
so random weights are the default here (nothing about accuracy is measured).
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from fsac.io import atomic_write_json
from fsac.train.backbone import load_backbone
from fsac.train.data import embedded_dataset, sample_shots, training_images
from fsac.train.run import save_trained
from fsac.train.trainer import TrainConfig, train
from fsac.train.synth import SynthConfig

TARGET_S = 10.0


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def time_cli_train(arch: str, weights: str, shots: list[Path], synth_per_image: int,
                   encoder_precision: str = "fp32") -> float:
    """Wall time of a real `fsac train` process (interpreter start and imports included)."""
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "fsac.cli", "train", *map(str, shots), "--arch", arch, "--weights", weights,
               "--synth-per-image", str(synth_per_image), "--out", str(Path(tmp) / "run"), "--quiet",
               "--encoder-precision", encoder_precision]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"fsac train failed: {proc.stderr.strip().splitlines()[-1:]}")
    return wall


def bench_train(arch: str, shots: int, weights: str, images, synth_per_image: int, out: Path | None,
                threads: int | None, cli: bool = True, encoder_precision: str = "fp32") -> dict:
    if threads:
        torch.set_num_threads(threads)
    pool = training_images(list(images)) if images else embedded_dataset().train_pool
    chosen = sample_shots(pool, shots, 0)
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    backbone = load_backbone(arch, weights, quiet=True)
    t_load = time.perf_counter() - t0
    from fsac.peaks import cpu_flags, matrix_flags
    from fsac.train.text_cache import cache_root, load_cached, text_cache_key
    from fsac.train.prompts import build_prompts

    normal, anomalous = build_prompts("object")
    root = cache_root()
    text_hit = root is not None and load_cached(
        root, text_cache_key(backbone.info, "object", {"normal": normal, "anomalous": anomalous}),
        backbone.info.embed_dim) is not None
    cfg = TrainConfig(synth=SynthConfig(per_image=synth_per_image), encoder_precision=encoder_precision)
    result = train(backbone, chosen, "object", cfg, quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        save_trained(Path(tmp) / "ckpt", result, cfg)
        t_save = time.perf_counter() - t1
    wall = time.perf_counter() - t0
    t = result.timings
    k, m = shots, synth_per_image
    figures = {
        "arch": arch, "weights": backbone.info.weights_id, "shots": k, "synth_per_image": m,
        "torch_threads": torch.get_num_threads(), "device": backbone.device,
        "backbone_build_s": t_load, "load_images_s": t["load_s"], "synth_s": t["synth_s"], "text_s": t["text_s"],
        "features_s": t["features_s"], "images_encoded": k + k * m,
        "per_image_s": t["features_s"] / (k + k * m), "stage1_s": t.get("stage1_s", 0.0),
        "stage2_s": t.get("stage2_s", 0.0), "train_total_s": t["total_s"], "save_s": t_save,
        "whole_train_s": wall, "target_s": TARGET_S, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss0,
        "text_cache": "off" if root is None else ("hit" if text_hit else "miss (now stored)"),
        "encoder": result.model.meta.get("encoder"), "cpu_flags": matrix_flags(cpu_flags()),
    }
    if cli:
        figures["cli_train_s"] = time_cli_train(arch, weights, chosen, synth_per_image, encoder_precision)
    rows = [
        ("backbone build + weights", figures["backbone_build_s"]),
        ("load + preprocess shots", figures["load_images_s"]),
        ("synthetic anomalies", figures["synth_s"]),
        ("text features (242 prompts)", figures["text_s"]),
        (f"image features ({k + k * m} images)", figures["features_s"]),
        ("stage 1 (100 epochs)", figures["stage1_s"]),
        ("stage 2 (100 epochs)", figures["stage2_s"]),
        ("save checkpoint", figures["save_s"]),
        ("whole training (in process)", figures["whole_train_s"]),
    ]
    if cli:
        rows.append(("`fsac train` command (own process)", figures["cli_train_s"]))
    print(f"fsac bench train: {arch}, k={k}, {m} synthetic per image, {figures['torch_threads']} torch threads, "
          f"{backbone.device}")
    for name, secs in rows:
        print(f"  {name:<36} {secs:8.2f} s")
    print(f"  {'per encoded image':<36} {figures['per_image_s']:8.3f} s")
    enc = figures["encoder"] or {}
    print(f"  encoder precision {enc.get('precision', 'fp32')}; text-feature cache (in process): "
          f"{figures['text_cache']}; the `fsac train` command runs after it, so it finds the cache")
    if enc.get("vs_fp32"):
        print(f"  bf16 encoder features vs fp32 on {enc['vs_fp32']['images']} shot(s): cosine min "
              f"{enc['vs_fp32']['cosine_min']:.5f}, mean {enc['vs_fp32']['cosine_mean']:.5f}")
    print(f"  CPU flags: {' '.join(figures['cpu_flags'])}")
    print(f"  {'peak RSS':<36} {figures['peak_rss_mb']:8.0f} MB")
    whole = figures.get("cli_train_s", wall)
    verdict = "met" if whole <= TARGET_S else "NOT met"
    print(f"  target: whole 4-shot `fsac train` <= {TARGET_S:.0f} s: {verdict} ({whole:.1f} s)")
    if out:
        atomic_write_json(out, figures)
        print(f"  figures written to {out}")
    return figures
