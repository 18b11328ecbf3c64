"""`fsac eval`: few-shot protocol over categories x shots x seeds, in one invocation.

For each category the test images are encoded once (the encoder is frozen) and reused by
every (shots, seed) run. k = 0 is the zero-shot baseline (CLIP + prompt ensemble, WinCLIP
image-level: METHOD.md eq. 10-12 on the raw image feature and T+-), which has no randomness
and runs once. Unreadable images are skipped and listed in the report, never silently lost.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fsac.errors import FsacError, ImageDecodeError
from fsac.metrics import image_metrics
from fsac.image_geometry import geometry_warnings, image_sizes
from fsac.preprocess import preprocess_file, stack
from fsac.score import score_from_logit
from fsac.train.backbone import Backbone
from fsac.train.checkpoint import versions
from fsac.train.data import Category, TestItem, distinct_by_content
from fsac.train.model import zero_shot_score
from fsac.train.prompts import object_name_from_category
from fsac.train.report import EvalReport, RunResult
from fsac.train.trainer import FeatureCache, TrainConfig, TrainResult, cached_text, tqdm_progress, train

DEFAULT_SHOTS = (0, 1, 2, 4)
DEFAULT_SEEDS = (0, 1, 2)


@dataclass
class EvalConfig:
    shots: tuple[int, ...] = DEFAULT_SHOTS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    train: TrainConfig = field(default_factory=TrainConfig)
    object_name: str | None = None  # None: from the category name
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not self.shots:
            raise FsacError("--shots needs at least one value")
        if any(k < 0 for k in self.shots):
            raise FsacError(f"--shots values must be >= 0, got {list(self.shots)}")
        # A repeated value used to fail as "duplicate run in report" after every model trained.
        repeated = sorted({k for k in self.shots if self.shots.count(k) > 1})
        if repeated:
            raise FsacError(f"--shots lists {', '.join(map(str, repeated))} more than once: {list(self.shots)}")
        if not self.seeds:
            raise FsacError("--seeds must be >= 1")


def _encode_valid(paths: list[Path], backbone: Backbone, cache: FeatureCache, skipped: list[dict],
                  batch_size: int, desc: str, quiet: bool) -> list[Path]:
    """Encode every decodable image once; list the rest in `skipped`. -> decodable paths."""
    todo = [p for p in paths if p not in cache]
    update = tqdm_progress(quiet)(desc, len(todo))
    bad = {d["file"] for d in skipped}
    for i in range(0, len(todo), batch_size):
        good, pixels = [], []
        for p in todo[i : i + batch_size]:
            try:
                pixels.append(preprocess_file(p, backbone.spec))
                good.append(p)
            except ImageDecodeError as e:
                if str(p) not in bad:
                    skipped.append({"file": str(p), "reason": e.reason})
                    bad.add(str(p))
                update(1)
        if good:
            cache.add(good, stack(pixels), update)
    return [p for p in paths if str(p) not in bad]


def evaluate(backbone: Backbone, categories: list[Category], cfg: EvalConfig, quiet: bool = False,
             log=print, on_model: Callable[[RunResult, TrainResult], None] | None = None) -> EvalReport:
    """Run the protocol and return the report (written to disk by `report.write_report`).

    `on_model(run, train_result)` is called after each few-shot run, e.g. to keep a model."""
    results: list[RunResult] = []
    skipped: list[dict] = []
    timings: dict[str, float] = {}
    # k larger than a category's pool of good images is a usage error. Check every category
    # for every k before anything is encoded: otherwise the earlier categories are encoded and
    # trained (minutes on a CPU) before a later one is refused.
    for cat in categories:
        too_many = [k for k in cfg.shots if k > len(cat.train_pool)]
        if too_many:
            raise FsacError(f"asked for {max(too_many)} shots but {cat.root} has only {len(cat.train_pool)} normal images")
        # A two-folder layout tests on the normals not drawn: k = all of them leaves none, which
        # used to be found only after the smaller k had been trained.
        if cat.layout == "two-folder" and max(cfg.shots) >= len(cat.train_pool):
            raise FsacError(f"asked for {max(cfg.shots)} shots but {cat.root} has only {len(cat.train_pool)} normal "
                            "images, and at least one must be left for the test set")
        if cat.layout == "mvtec" and not any(t.label == 0 for t in cat.test):
            raise FsacError(f"{cat.root}: no normal test images (expected test/good); I-AUROC needs both kinds")
    cache = FeatureCache(backbone)
    for cat in categories:
        t_cat = time.perf_counter()
        for w in geometry_warnings(image_sizes([*cat.train_pool, *cat.all_test_paths()]), backbone.spec):
            print(f"warning: {cat.name}: {w}", file=sys.stderr)
        obj = cfg.object_name or object_name_from_category(cat.name)
        text = cached_text(backbone, obj)
        t_pos, t_neg, _ = text
        # Encode everything that can end up in a test set once; drop unreadable files everywhere.
        valid = set(map(str, _encode_valid(cat.all_test_paths(), backbone, cache, skipped, cfg.batch_size,
                                           f"{cat.name}: encoding test images", quiet)))
        # Two-folder: the pool is also test material, already checked. MVTec train/good images
        # are decoded only when drawn; a bad shot stops training with an error naming it.
        pool = [p for p in cat.train_pool if cat.layout == "mvtec" or str(p) in valid]
        clean = Category(cat.name, cat.root, cat.layout, pool, [t for t in cat.test if str(t.path) in valid])
        _, pool_copies = distinct_by_content(pool)
        if pool_copies and not quiet:
            print(f"note: {cat.name}: {len(pool_copies)} normal image(s) are byte-identical copies of others (e.g. "
                  f"{_rel_path(pool_copies[0][0], cat.root)} = {_rel_path(pool_copies[0][1], cat.root)}); shots "
                  f"are drawn from the {len(pool) - len(pool_copies)} distinct ones", file=sys.stderr)
        if not [t for t in clean.test if t.label == 1]:
            raise FsacError(f"{cat.root}: no readable anomalous test images")
        for k in cfg.shots:
            if k > len(pool):  # unreadable pool images (two-folder layout) can still make it too small
                raise FsacError(f"asked for {k} shots but {cat.root} has only {len(pool)} normal images")
            for seed in (cfg.seeds[:1] if k == 0 else cfg.seeds):
                shots, test = clean.split(k, seed)
                copies = clean.shot_copies(shots)
                if copies and not quiet:
                    print(f"note: {cat.name} k={k} seed={seed}: left out of the test set {len(copies)} image(s) with "
                          f"the bytes of a shot: {', '.join(_rel_path(p, cat.root) for p in copies)}", file=sys.stderr)
                if not any(t.label == 0 for t in test):
                    raise FsacError(f"{cat.root}: no normal test images left after drawing {k} shots")
                feats = cache.get([t.path for t in test])
                if k == 0:
                    with torch.no_grad():
                        out = zero_shot_score(feats, t_pos, t_neg, cfg.train.head.tau)
                    logits = out.logit.double().numpy()
                    train_names: list[str] = []
                    diagnostics: dict = {}
                else:
                    tcfg = replace(cfg.train, seed=seed, synth=replace(cfg.train.synth, seed=seed))
                    result = train(backbone, shots, obj, tcfg, quiet=quiet, cache=cache, text=text)
                    logits = result.model.score_features(feats)["logit"].astype(np.float64)
                    train_names = [str(p) for p in shots]
                    diagnostics = result.diagnostics
                labels = np.array([t.label for t in test])
                # Metrics rank the logit; the score shown beside it is sigmoid(z) in float64.
                run = RunResult(category=cat.name, shots=k, seed=seed, metrics=image_metrics(labels, logits),
                                logits=logits, scores=score_from_logit(logits), labels=[int(x) for x in labels],
                                image_names=[_rel(t, cat.root) for t in test], train_images=train_names,
                                diagnostics=diagnostics, shot_copies=[_rel_path(p, cat.root) for p in copies])
                results.append(run)
                if k > 0 and on_model is not None:
                    on_model(run, result)
                if not quiet:
                    m = run.metrics
                    log(f"{cat.name:>16} k={k} seed={seed}: I-AUROC {100 * m.auroc:5.1f}  "
                        f"I-AUPR {100 * m.aupr:5.1f}  F1-max {100 * m.f1_max:5.1f}")
        timings[f"{cat.name}_s"] = round(time.perf_counter() - t_cat, 2)
    meta = {
        "backbone": backbone.info.to_dict(),
        "preprocess": backbone.spec.to_dict(),
        "shots": list(cfg.shots),
        "seeds": list(cfg.seeds),
        "train": cfg.train.to_dict(),
        "object_name": cfg.object_name,
        "categories": [{"name": c.name, "root": str(c.root), "layout": c.layout} for c in categories],
        "timings": timings,
        "versions": versions(),
    }
    return EvalReport(results=results, skipped=skipped, meta=meta, random_weights=backbone.info.is_random)


def _rel(item: TestItem, root: Path) -> str:
    return _rel_path(item.path, root)


def _rel_path(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
