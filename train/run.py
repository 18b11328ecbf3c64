"""What the training-side commands do, apart from parsing options: load the backbone, run,
write checkpoints and reports, and print a summary a person can read."""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from fsac.errors import FsacError
from fsac.image_geometry import geometry_warnings, image_sizes
from fsac.train.backbone import DEFAULT_WEIGHTS, RANDOM_WEIGHTS, Backbone, load_backbone
from fsac.train.checkpoint import META_FILE, TENSORS_FILE, save_checkpoint
from fsac.train.data import Category
from fsac.train.trainer import TrainConfig, TrainResult, train

RANDOM_NOTE = "RANDOM BACKBONE WEIGHTS: the figures check the pipeline; they say nothing about detection quality"


def _say(quiet: bool, *lines: str) -> None:
    if not quiet:
        for line in lines:
            print(line)


def check_out_dir(out: Path, option: str = "--out") -> Path:
    """Refuse an output folder that cannot be one before any work is done: a path that is
    an existing file (or has a file among its parents) used to surface as a traceback from
    mkdir only after the whole training or evaluation had run."""
    out = Path(out)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                where = "" if p == out else f" ({p} is a file)"
                raise FsacError(f"{option} {out}: not a folder{where}; choose another {option}")
            break
    return out


def checkpoint_extra(result: TrainResult, cfg: TrainConfig) -> dict:
    """Provenance recorded in model.json beside the tensors."""
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "shots": len(result.train_images),
        "train_images": result.train_images,
        "seed": cfg.seed,
        "train": cfg.to_dict(),
        "prompts": result.model.meta.get("prompts"),
        "encoder": result.model.meta.get("encoder"),
        "history": result.history,
        "diagnostics": result.diagnostics,
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
    }


def save_trained(out: Path, result: TrainResult, cfg: TrainConfig, write_synth: bool = False) -> Path:
    from fsac.train.synth_sheet import remove_synth_images, write_synth_images

    path = save_checkpoint(out, result.model, checkpoint_extra(result, cfg))
    if write_synth:
        names = [Path(t["name"]).stem for t in result.train_images]
        write_synth_images(list(result.shot_pixels), result.synth, out / "synth", names=names)
    else:  # an overwritten (--force) checkpoint's synth/ showed the old model's anomalies as this one's
        remove_synth_images(out / "synth")
    return path


def describe_training(result: TrainResult, cfg: TrainConfig, backbone: Backbone) -> list[str]:
    t, h = result.timings, result.history
    k, m = len(result.train_images), cfg.synth.per_image

    def loss(stage: str) -> str:
        v = h.get(stage) or []
        return f"loss {v[0]:.4f} -> {v[-1]:.4f}" if v else "(skipped)"

    lines = [
        f"fsac train: {k} shot{'s' if k != 1 else ''} of '{result.model.object_name}' "
        f"({backbone.info.arch} / {backbone.info.weights_id}), mode {cfg.mode}",
        f"  synthetic anomalies  {k * m:4d} ({cfg.synth.kind:8s})       {t.get('synth_s', 0):6.2f} s",
        f"  text features        {154 + 88:4d} prompts              {t.get('text_s', 0):6.2f} s",
        f"  image features       {k + k * m:4d} images               {t.get('features_s', 0):6.2f} s",
    ]
    for stage, epochs in (("stage1", cfg.stage1_epochs), ("stage2", cfg.stage2_epochs), ("joint", cfg.stage1_epochs)):
        if stage in h:
            lines.append(f"  {stage:<20} {epochs:4d} epochs               {t.get(stage + '_s', 0):6.2f} s   {loss(stage)}")
    enc = result.model.meta.get("encoder") or {}
    if enc.get("vs_fp32"):
        a = enc["vs_fp32"]
        lines.append(f"  encoder {enc['precision']}: feature cosine vs fp32 on {a['images']} shot(s) "
                     f"min {a['cosine_min']:.5f}, mean {a['cosine_mean']:.5f} ({t.get('encoder_check_s', 0):.2f} s)")
    if enc.get("bf16_rejected"):
        a = enc["bf16_rejected"]
        lines.append(f"  encoder bf16 refused: feature cosine vs fp32 {a['cosine_min']:.5f} on the first shot; "
                     "encoded in fp32")
    lines.append(f"  total                                          {t.get('total_s', 0):6.2f} s")
    d = result.diagnostics
    if d:
        ratio = d.get("adapter_ratio")
        lines.append(f"  text prototypes      cos(T+, T-) {d['cos_t']:.3f} -> cos(AT+, AT-) {d['cos_at']:.3f}"
                     + (f"; ||b1 A_g(T)|| / ||b2 T|| = {ratio['normal']:.3f} (normal), {ratio['anomalous']:.3f} "
                        "(anomalous)" if ratio else " (no text adapter)"))
        lines.append(f"  training pairs       logit gap {d['pair_gap']:.3f} (synthetic - normal, mean), "
                     f"margin {d['pair_margin']:.3f}")
    if cfg.preset:
        over = cfg.to_dict()["preset_overrides"]
        lines.append(f"  preset               {cfg.preset} (beta {cfg.head.beta1:g}/{cfg.head.beta2:g}, "
                     f"{cfg.synth.kind} synthetic anomalies)"
                     + (f"; overridden: {', '.join(f'{k}={v}' for k, v in over.items())}" if over else ""))
    return lines


def run_training(shots: list[Path], object_name: str, out: Path, cfg: TrainConfig, arch: str, weights: str,
                 device: str | None, force: bool = False, write_synth: bool = False, resize_mode: str = "squash",
                 quiet: bool = False) -> TrainResult:
    out = check_out_dir(out)
    if (out / META_FILE).exists() and not force:
        raise FsacError(f"{out} already holds a checkpoint; pass --force to overwrite it or choose --out")
    backbone = load_backbone(arch, weights, device=device, resize_mode=resize_mode)
    for w in geometry_warnings(image_sizes(shots), backbone.spec):
        print(f"warning: {w}", file=sys.stderr)
    result = train(backbone, shots, object_name, cfg, quiet=quiet)
    for w in result.diagnostics.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    save_trained(out, result, cfg, write_synth)
    _say(quiet, *describe_training(result, cfg, backbone),
         f"checkpoint: {out / META_FILE} + {out / TENSORS_FILE}" + (f" (synthetic anomalies in {out / 'synth'})"
                                                                     if write_synth else ""))
    if backbone.info.is_random:
        print(f"NOTE: {RANDOM_NOTE}.", file=sys.stderr)
    return result


def training_warning_lines(report) -> list[str]:
    """The training warnings of an evaluation's models, compactly: an evaluation trains up to
    categories x shots x seeds models, and one full warning each would bury the table. One line
    per kind of warning: where it happened and the first one in full."""
    groups: dict[str, list] = {}
    for r in report.results:
        for w in (r.diagnostics or {}).get("warnings", []):
            groups.setdefault(w.split(":", 1)[0], []).append((r, w))
    trained = sum(1 for r in report.results if r.shots > 0)
    lines = []
    for hits in groups.values():
        (r0, w0), n = hits[0], len(hits)
        first = f"{r0.category} k={r0.shots} seed={r0.seed}"
        if n == 1:
            lines.append(f"warning: {first}: {w0}")
            continue
        where = ", ".join(f"{r.category} k={r.shots} seed={r.seed}" for r, _ in hits[1:4]) + (", ..." if n > 4 else "")
        lines.append(f"warning: {n} of {trained} trained models: {first}: {w0} (also {where})")
    if lines:
        lines.append("warning: every trained model's diagnostics are in report.json (\"diagnostics\")")
    return lines


def run_evaluation(categories: list[Category], shots: tuple[int, ...], seeds: tuple[int, ...], cfg: TrainConfig,
                   out: Path, arch: str, weights: str, device: str | None, object_name: str | None = None,
                   resize_mode: str = "squash", quiet: bool = False, backbone: Backbone | None = None,
                   on_model=None, warn: bool = True):
    from fsac.train.evaluate import EvalConfig, evaluate
    from fsac.train.report import format_table, write_report

    ecfg = EvalConfig(shots=shots, seeds=seeds, train=cfg, object_name=object_name)
    check_out_dir(out)
    if backbone is None:
        backbone = load_backbone(arch, weights, device=device, resize_mode=resize_mode)
    t0 = time.perf_counter()
    report = evaluate(backbone, categories, ecfg, quiet=quiet, on_model=on_model)
    report.meta["wall_s"] = round(time.perf_counter() - t0, 2)
    paths = write_report(report, out)
    print(format_table(report))
    if report.skipped:
        print(f"skipped {len(report.skipped)} unreadable image(s), listed in {paths.get('markdown', out)}:")
        for s in report.skipped[:10]:
            print(f"  {s['file']}: {s['reason']}")
    if warn:  # `fsac demo` prints its one model's warnings in full itself
        for line in training_warning_lines(report):
            print(line, file=sys.stderr)
    _say(quiet, "report: " + ", ".join(str(p) for p in paths.values()))
    return report, paths


def resolve_auto_weights(arch: str, weights: str) -> str:
    """`--weights auto`: the real pretrained weights if an earlier download left them in the
    local cache, else random weights with a loud warning. Never touches the network, so the
    demo runs the same on an offline box; `--weights laion400m_e31` downloads."""
    if weights != "auto":
        return weights
    from fsac.train.pretrained import cached_pretrained

    if cached_pretrained(arch, DEFAULT_WEIGHTS) is not None:
        return DEFAULT_WEIGHTS
    print(f"fsac demo: the {arch} '{DEFAULT_WEIGHTS}' weights are not downloaded yet; running with RANDOM weights.\n"
          f"fsac demo: for real scores run `fsac demo --weights {DEFAULT_WEIGHTS}` once with internet "
          "(open_clip downloads and caches them).", file=sys.stderr)
    return RANDOM_WEIGHTS


def run_demo(out: Path, weights: str, arch: str, device: str | None, max_test: int, quiet: bool,
             cfg: TrainConfig | None = None) -> None:
    """Embedded textile images: 4-shot training, zero-shot vs 4-shot evaluation, explanation maps."""
    from fsac.train.data import embedded_dataset, subsample
    from fsac.train.explain import explain_image

    out = check_out_dir(out)
    if max_test < 1:
        raise FsacError(f"--max-test must be >= 1, got {max_test}")
    weights = resolve_auto_weights(arch, weights)
    backbone = load_backbone(arch, weights, device=device)
    category = subsample(embedded_dataset(), max_normal=max_test + 4, max_anomalous=max_test)
    cfg = cfg or TrainConfig()
    kept: dict = {}

    def keep(run, result):
        kept["result"] = result

    _say(quiet, f"fsac demo: {category.name}, {len(category.train_pool)} good + {len(category.test)} defective images "
                f"(conformal-clip-data, simulated), 4 shots, {arch} / {backbone.info.weights_id}")
    report, paths = run_evaluation([category], (0, 4), (0,), cfg, out / "report", arch, weights, device,
                                   quiet=quiet, backbone=backbone, on_model=keep, warn=False)
    result: TrainResult = kept["result"]
    for w in result.diagnostics.get("warnings", []):  # as `fsac train` does, on stderr even with -q
        print(f"warning: {w}", file=sys.stderr)
    save_trained(out / "model", result, cfg, write_synth=True)
    note = "  |  RANDOM WEIGHTS: map meaningless" if backbone.info.is_random else ""
    run4 = [r for r in report.results if r.shots == 4][0]
    first = {label: next(n for n, lab in zip(run4.image_names, run4.labels) if lab == label) for label in (0, 1)}
    for label, name in first.items():
        path = Path(name) if Path(name).is_absolute() else category.root / name
        kind = "defective" if label else "good"
        explain_image(result.model, path, out / f"explain_{kind}.png", note=note)
    _say(quiet, *describe_training(result, cfg, backbone),
         f"model: {out / 'model'}   synthetic anomalies: {out / 'model' / 'synth'}",
         f"explanation maps: {out / 'explain_good.png'}, {out / 'explain_defective.png'}")
    if backbone.info.is_random:
        print(f"NOTE: {RANDOM_NOTE}.", file=sys.stderr)
