"""Training-side commands: `fsac train`, `fsac eval`, `fsac synth`, `fsac explain`, `fsac demo`,
`fsac models`, `fsac bench train`. Torch is imported inside the commands, so `fsac --help` and
the edge runtime never pay for it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from fsac.errors import FsacError

# ----------------------------------------------------------------------------- shared options

ARCH = typer.Option("ViT-B-16-plus-240", "--arch", help="open_clip architecture (ViT-B-16-plus-240-tiny for quick tests).")
WEIGHTS = typer.Option("laion400m_e31", "--weights",
                       help="Backbone weights: an open_clip pretrained tag (downloaded), a local checkpoint file, "
                            "or 'random' (offline pipeline test: scores are meaningless).")
DEVICE = typer.Option(None, "--device", help="torch device (default: cuda if available, else cpu).")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars or per-run lines (for scripts).")


def build_train_config(mode: str, epochs1: int, epochs2: int, lr1: float, lr2: float, seed: int,
                       alpha1: float, alpha2: float, beta1: float | None, beta2: float | None, tau: float,
                       loss_temperature: float, no_cross_attention: bool, normalize_image_feature: bool,
                       synth: str | None, synth_per_image: int, preset: str | None = None,
                       encoder_precision: str = "auto"):
    from fsac.train.model import HeadConfig
    from fsac.train.presets import DEFAULT_PRESET, resolve
    from fsac.train.synth import SynthConfig
    from fsac.train.trainer import TrainConfig

    chosen = resolve(preset, beta1=beta1, beta2=beta2, synth=synth)
    beta1, beta2, synth = float(chosen["beta1"]), float(chosen["beta2"]), str(chosen["synth"])
    # HeadConfig refuses NaN, infinite and non-positive weights and temperatures.
    head = HeadConfig(alpha1=alpha1, alpha2=alpha2, beta1=beta1, beta2=beta2, tau=tau,
                      loss_temperature=loss_temperature, use_cross_attention=not no_cross_attention,
                      normalize_image_feature=normalize_image_feature)
    return TrainConfig(mode=mode, stage1_epochs=epochs1, stage2_epochs=epochs2, stage1_lr=lr1, stage2_lr=lr2,
                       seed=seed, head=head, synth=SynthConfig(kind=synth, per_image=synth_per_image, seed=seed),
                       preset=preset or DEFAULT_PRESET, encoder_precision=encoder_precision)


class TrainOptions:
    """The training hyper-parameters shared by `fsac train`, `fsac eval` and `fsac demo`."""

    mode = typer.Option("two-stage", "--mode", help="two-stage | joint | one-stage (ablations).")
    epochs1 = typer.Option(100, "--epochs1", help="Stage-1 epochs (image adapter + cross-attention).")
    epochs2 = typer.Option(100, "--epochs2", help="Stage-2 epochs (text adapter).")
    lr1 = typer.Option(5e-4, "--lr1", help="Stage-1 Adam learning rate.")
    lr2 = typer.Option(1e-4, "--lr2", help="Stage-2 Adam learning rate.")
    alpha1 = typer.Option(1.0, "--alpha1", help="eq. 3: weight of A_f(F).")
    alpha2 = typer.Option(1.0, "--alpha2", help="eq. 3: weight of F.")
    preset = typer.Option(None, "--preset", help="The paper's settings for a benchmark: mvtec (beta 0.1/0.9, "
                          "gaussian synthetic anomalies; the default) | visa (beta 1/1, NSA). Options given "
                          "explicitly win and are recorded as overrides.")
    beta1 = typer.Option(None, "--beta1", help="eq. 4: weight of A_g(T) [default: from --preset; 0.1 MVTec AD, 1 VisA].")
    beta2 = typer.Option(None, "--beta2", help="eq. 4: weight of T [default: from --preset; 0.9 MVTec AD, 1 VisA].")
    tau = typer.Option(0.01, "--tau", help="eq. 11 scoring temperature.")
    loss_temperature = typer.Option(1.0, "--loss-temperature", help="Temperature in eq. 7-9 (ours; 1 = as written).")
    no_cross_attention = typer.Option(False, "--no-cross-attention", help="Ablation: CF = AF.")
    normalize_image_feature = typer.Option(False, "--normalize-image-feature",
                                           help="L2-normalise F before the adapter (open choice; default raw F).")
    synth = typer.Option(None, "--synth", help="Synthetic anomalies: gaussian (MVTec AD) | nsa (VisA) | mixed "
                         "[default: from --preset, gaussian].")
    synth_per_image = typer.Option(4, "--synth-per-image", help="Synthetic anomalies per normal image.")
    encoder_precision = typer.Option("auto", "--encoder-precision",
                                     help="Frozen image encoder: fp32, bf16 (a bf16 copy of its weights; AMX / AVX-512 BF16 CPUs, bf16 "
                                          "GPUs; the first shot's feature cosine vs fp32 is printed and recorded) or auto (bf16 "
                                          "where the hardware has it, back to fp32 if that cosine is below 0.999).")


def _shots_list(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.replace(" ", "").split(",") if x != "")
    except ValueError:
        raise FsacError(f"--shots must be a comma-separated list of integers, got {text!r}") from None
    return vals


# ----------------------------------------------------------------------------- commands


def models_command() -> None:
    """List the model architectures and pretrained weight tags fsac can use."""
    import open_clip

    from fsac.train.backbone import available_archs

    for arch in available_archs():
        if "ViT-B-16-plus-240" in arch or arch.startswith("ViT-B-16") or arch.startswith("ViT-L-14"):
            tags = open_clip.list_pretrained_tags_by_model(arch)
            typer.echo(f"{arch:32s} {', '.join(tags) if tags else '(no pretrained tags: random or a local file)'}")


def train_command(
    images: Optional[List[Path]] = typer.Argument(None, help="Good-part images or folders (an MVTec category uses "
                                                                "train/good). None: the embedded textile demo images."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Checkpoint folder (default runs/<object>)."),
    object_name: Optional[str] = typer.Option(None, "--object", help="Object name in the prompts (default: from the "
                                                                      "folder name, else 'object')."),
    shots: Optional[int] = typer.Option(None, "--shots", "-k", help="Draw k shots from the images (default: all, at "
                                                                    "most 4)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing checkpoint."),
    write_synth: bool = typer.Option(False, "--write-synth", help="Also write the synthetic anomalies as PNGs."),
    arch: str = ARCH, weights: str = WEIGHTS, device: Optional[str] = DEVICE,
    seed: int = typer.Option(0, "--seed", help="Seed for shot sampling, synthetic anomalies and initialisation."),
    mode: str = TrainOptions.mode, epochs1: int = TrainOptions.epochs1, epochs2: int = TrainOptions.epochs2,
    lr1: float = TrainOptions.lr1, lr2: float = TrainOptions.lr2, alpha1: float = TrainOptions.alpha1,
    alpha2: float = TrainOptions.alpha2, beta1: Optional[float] = TrainOptions.beta1,
    beta2: Optional[float] = TrainOptions.beta2, preset: Optional[str] = TrainOptions.preset,
    tau: float = TrainOptions.tau, loss_temperature: float = TrainOptions.loss_temperature,
    no_cross_attention: bool = TrainOptions.no_cross_attention,
    normalize_image_feature: bool = TrainOptions.normalize_image_feature,
    synth: Optional[str] = TrainOptions.synth, synth_per_image: int = TrainOptions.synth_per_image,
    resize_mode: str = typer.Option("squash", "--resize-mode", help="squash (whole image, default) | shortest (open_clip crop: cuts borders) | longest (pad)."),
    encoder_precision: str = TrainOptions.encoder_precision,
    quiet: bool = QUIET,
) -> None:
    """Train CLIP-FSAC on 1-4 images of good parts; write a checkpoint (safetensors + JSON)."""
    from fsac.train.data import (EMBEDDED_OBJECT, distinct_by_content, embedded_dataset, guess_object_name,
                                 sample_shots, training_images)
    from fsac.train.run import run_training

    cfg = build_train_config(mode, epochs1, epochs2, lr1, lr2, seed, alpha1, alpha2, beta1, beta2, tau,
                             loss_temperature, no_cross_attention, normalize_image_feature, synth, synth_per_image,
                             preset, encoder_precision)
    if shots is not None and shots < 1:  # 0 used to read "no training images given", as if none were found
        raise FsacError(f"--shots must be >= 1 to train, got {shots}")
    if images:
        pool = training_images(list(images))
        default_object, where = guess_object_name(images[0]), ", ".join(map(str, images))
    else:
        pool = embedded_dataset().train_pool
        default_object, where = EMBEDDED_OBJECT, "the embedded textile images"
    k = shots if shots is not None else min(4, len(pool))
    distinct, copies = distinct_by_content(pool)
    if copies:  # the same photo twice would make a k-shot model that saw fewer than k parts
        (copy, first), also = copies[0], f" ({len(copies)} such copies)" if len(copies) > 1 else ""
        if (shots is None and len(pool) <= 4) or k > len(distinct):
            raise FsacError(f"training images {copy} and {first} have the same bytes{also}; each shot must be a "
                            f"different image ({len(distinct)} distinct images given)")
        if not quiet:
            print(f"note: left out {len(copies)} byte-identical cop{'y' if len(copies) == 1 else 'ies'} of other "
                  f"images (e.g. {copy} = {first}); shots are drawn from the {len(distinct)} distinct ones",
                  file=sys.stderr)
        pool = distinct
    chosen = pool if (shots is None and len(pool) <= 4) else sample_shots(pool, k, seed, where)
    obj = object_name or default_object
    out = out or Path("runs") / obj.replace(" ", "_")
    run_training(chosen, obj, out, cfg, arch=arch, weights=weights, device=device, force=force,
                 write_synth=write_synth, resize_mode=resize_mode, quiet=quiet)


def eval_command(
    data: Optional[Path] = typer.Argument(None, help="Dataset root (MVTec/VisA style or normal/ + anomalous/). "
                                                     "None: the embedded textile images."),
    category: Optional[List[str]] = typer.Option(None, "--category", "-c", help="Only these categories (repeatable)."),
    shots: str = typer.Option("0,1,2,4", "--shots", help="Comma-separated shot counts; 0 = zero-shot baseline."),
    seeds: int = typer.Option(3, "--seeds", help="Number of seeds (0..n-1) per shot count; mean +- std reported."),
    out: Path = typer.Option(Path("runs/eval"), "--out", "-o", help="Report folder."),
    object_name: Optional[str] = typer.Option(None, "--object", help="Object name in prompts (default: category)."),
    max_test: Optional[int] = typer.Option(None, "--max-test", help="Cap normal and anomalous test images per category "
                                                                     "(seeded sample; quick looks only)."),
    arch: str = ARCH, weights: str = WEIGHTS, device: Optional[str] = DEVICE,
    mode: str = TrainOptions.mode, epochs1: int = TrainOptions.epochs1, epochs2: int = TrainOptions.epochs2,
    lr1: float = TrainOptions.lr1, lr2: float = TrainOptions.lr2, alpha1: float = TrainOptions.alpha1,
    alpha2: float = TrainOptions.alpha2, beta1: Optional[float] = TrainOptions.beta1,
    beta2: Optional[float] = TrainOptions.beta2, preset: Optional[str] = TrainOptions.preset,
    tau: float = TrainOptions.tau, loss_temperature: float = TrainOptions.loss_temperature,
    no_cross_attention: bool = TrainOptions.no_cross_attention,
    normalize_image_feature: bool = TrainOptions.normalize_image_feature,
    synth: Optional[str] = TrainOptions.synth, synth_per_image: int = TrainOptions.synth_per_image,
    resize_mode: str = typer.Option("squash", "--resize-mode", help="squash (default) | shortest (crop) | longest (pad)."),
    quiet: bool = QUIET,
) -> None:
    """Evaluate the few-shot protocol: I-AUROC, I-AUPR, F1-max per category, mean +- std over seeds."""
    from fsac.train.data import embedded_dataset, find_categories, subsample
    from fsac.train.run import run_evaluation

    if seeds < 1:
        raise FsacError("--seeds must be >= 1")
    cfg = build_train_config(mode, epochs1, epochs2, lr1, lr2, 0, alpha1, alpha2, beta1, beta2, tau,
                             loss_temperature, no_cross_attention, normalize_image_feature, synth, synth_per_image,
                             preset)
    cats = find_categories(data, category) if data is not None else [embedded_dataset()]
    if max_test is not None:
        if max_test < 1:  # 0 used to end in a misleading "no anomalous images", < 0 in a traceback
            raise FsacError(f"--max-test must be >= 1, got {max_test}")
        cats = [subsample(c, max_test, max_test) for c in cats]
    run_evaluation(cats, _shots_list(shots), tuple(range(seeds)), cfg, out, arch=arch, weights=weights,
                   device=device, object_name=object_name, resize_mode=resize_mode, quiet=quiet)


def synth_command(
    images: List[Path] = typer.Argument(..., help="Good-part images or folders."),
    out: Path = typer.Option(Path("runs/synth"), "--out", "-o", help="Folder for the PNGs."),
    kind: str = typer.Option("gaussian", "--kind", help="gaussian | nsa | mixed."),
    per_image: int = typer.Option(4, "--per-image", help="Synthetic anomalies per image."),
    seed: int = typer.Option(0, "--seed"),
    image_size: int = typer.Option(240, "--image-size", help="Model input size the anomalies are made at."),
    max_images: int = typer.Option(4, "--max-images", help="Use at most this many images (seeded sample)."),
) -> None:
    """Write the synthetic anomalies the model would train against, to look at them."""
    from fsac.preprocess import PreprocessSpec, preprocess_file
    from fsac.train.data import sample_shots, training_images
    from fsac.train.synth import SynthConfig, generate
    from fsac.train.run import check_out_dir
    from fsac.train.synth_sheet import write_synth_images

    check_out_dir(out)
    if max_images < 1:
        raise FsacError(f"--max-images must be >= 1, got {max_images}")
    pool = training_images(list(images))
    chosen = pool if len(pool) <= max_images else sample_shots(pool, max_images, seed)
    spec = PreprocessSpec(image_size=image_size)
    pixels = [preprocess_file(p, spec) for p in chosen]
    samples = generate(pixels, SynthConfig(kind=kind, per_image=per_image, seed=seed))
    paths = write_synth_images(pixels, samples, out, names=[p.stem for p in chosen])
    typer.echo(f"wrote {len(paths)} files to {out}")


def explain_command(
    images: List[Path] = typer.Argument(..., help="Image file(s) to explain."),
    model: Path = typer.Option(..., "--model", "-m", help="Checkpoint folder from `fsac train`."),
    out: Path = typer.Option(Path("runs/explain"), "--out", "-o", help="Folder for the PNGs."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Backbone weights if the checkpoint used a local file."),
    smooth_sigma: float = typer.Option(0.0, "--smooth", help="Gaussian smoothing of the map in pixels (0 = raw)."),
    device: Optional[str] = DEVICE,
) -> None:
    """Gradient map |dz/dx| of the anomaly logit over the image (paper Fig. 5), saved as PNG."""
    from fsac.train.checkpoint import load_checkpoint
    from fsac.score import score_from_logit
    import math

    from fsac.train.explain import explain_image, explain_names
    from fsac.train.run import check_out_dir

    check_out_dir(out)
    if not (math.isfinite(smooth_sigma) and smooth_sigma >= 0):
        raise FsacError(f"--smooth must be a finite number >= 0 (pixels; 0 = raw), got {smooth_sigma}")
    trained = load_checkpoint(model, weights=weights, device=device)
    note = "  |  RANDOM WEIGHTS: map meaningless" if trained.backbone.info.is_random else ""
    for img, name in zip(images, explain_names(images)):
        logit, path = explain_image(trained, img, Path(out) / name, smooth_sigma, note)
        typer.echo(f"{img}: logit z = {logit:.4f}, AS = {score_from_logit(logit):.6g} -> {path}")


def demo_command(
    out: Path = typer.Option(Path("fsac-demo"), "--out", "-o", help="Output folder."),
    weights: str = typer.Option("auto", "--weights", help="auto: laion400m_e31 if it can be downloaded or is cached, "
                                                          "else random weights with a loud warning; or a tag/file/random."),
    arch: str = ARCH, device: Optional[str] = DEVICE,
    max_test: int = typer.Option(30, "--max-test", help="Normal and anomalous test images each (seeded sample)."),
    preset: Optional[str] = TrainOptions.preset,
    quiet: bool = QUIET,
) -> None:
    """Train on 4 embedded good textile images, evaluate (zero-shot vs 4-shot), explain two images."""
    from dataclasses import replace

    from fsac.train.presets import DEFAULT_PRESET, resolve
    from fsac.train.run import run_demo
    from fsac.train.trainer import TrainConfig

    # The demo's own schedule; only the preset's settings (beta1, beta2, synthetic kind) change.
    chosen = resolve(preset, beta1=None, beta2=None, synth=None)
    d = TrainConfig()
    cfg = replace(d, head=replace(d.head, beta1=float(chosen["beta1"]), beta2=float(chosen["beta2"])),
                  synth=replace(d.synth, kind=str(chosen["synth"])), preset=preset or DEFAULT_PRESET)
    run_demo(out, weights=weights, arch=arch, device=device, max_test=max_test, quiet=quiet, cfg=cfg)


def bench_train_command(
    arch: str = ARCH,
    shots: int = typer.Option(4, "--shots", "-k"),
    weights: str = typer.Option("random", "--weights", help="Timing does not depend on the weights."),
    images: Optional[List[Path]] = typer.Argument(None, help="Good-part images (default: embedded textile images)."),
    synth_per_image: int = TrainOptions.synth_per_image,
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the figures as JSON here."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: torch's choice)."),
    cli: bool = typer.Option(True, "--cli/--no-cli", help="Also time a real `fsac train` process."),
    encoder_precision: str = TrainOptions.encoder_precision,
) -> None:
    """Time `fsac train` end to end: backbone load, prompts, synthetic anomalies, features, stages."""
    from fsac.train.bench import bench_train

    bench_train(arch, shots, weights, images, synth_per_image, out, threads, cli, encoder_precision)


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")
