"""Synthetic anomalies: the negatives CLIP-FSAC trains against (METHOD.md, "Synthetic anomalies").

From each normal image x_i^+ we make `per_image` anomalous images x_{i,j}^-, with one of
two generators (numpy + OpenCV only; this module imports no torch):

- "gaussian" (random perturbation, the paper's MVTec AD setting): a few random square
  regions are replaced by pixels drawn from a Gaussian. Every pixel outside the returned
  mask is bit-identical to the input.
- "nsa" (Natural Synthetic Anomalies, Schlueter et al., ECCV 2022, the paper's VisA
  setting): a rectangle whose width and height are drawn from a Gamma-type distribution is
  cut out of *another* normal image (the same image at another location when k = 1),
  optionally rescaled, moved, and blended into the target with Poisson image editing
  (`cv2.seamlessClone`), so that the anomaly looks natural. The pixels outside the returned
  mask are bit-identical to the input here too (we copy them back after the clone, see
  `_clone`).
- "mixed": both, alternating per sample (balanced; which kind comes first is drawn per
  image).

Shapes. Input images are preprocessed model inputs, (H, W, 3) uint8 RGB (normally
H = W = S = 240, see `fsac.preprocess`); any H, W >= 32 works and the images of one call may
differ in size. Every generator returns `(image, mask)`: image (H, W, 3) uint8 RGB, a new
array (inputs are never modified), and mask (H, W) bool, True where pixels were replaced.

Determinism. Sample j of image i draws all its randomness from
`np.random.default_rng([cfg.seed, i, j])`, so the same images and config give bit-identical
outputs, a sample does not depend on how many samples or images come before it (except
that NSA picks its source among the images given), and another seed gives other samples.

`fsac.train.synth_sheet.write_synth_images` writes the generated images, their masks and a contact sheet as PNG
files, so a user can see what the model trains against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from fsac.errors import FsacError
from fsac.train.synth_config import SynthConfig

MIN_IMAGE_SIDE = 32
# Smallest patch sides in pixels. A Gaussian patch of 1 px is noise nobody can see; a
# Poisson-blended patch needs an interior (seamlessClone keeps the 1-px rim of the mask as
# the boundary condition), and NSA itself refuses masks under ~50 px.
_MIN_GAUSS_SIDE = 3
_MIN_NSA_SIDE = 8
# How many random placements to try before taking the one that covers the most object.
_PLACEMENT_TRIES = 50


def _check_image(image: Any, what: str) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__)
        raise FsacError(f"synth: {what} must be an (H, W, 3) uint8 RGB array, got {shape} {dtype}")
    if min(image.shape[:2]) < MIN_IMAGE_SIDE:
        raise FsacError(f"synth: {what} is {image.shape[1]}x{image.shape[0]}; both sides must be >= {MIN_IMAGE_SIDE} px")
    return image


# --------------------------------------------------------------------------- foreground


def estimate_foreground(image: np.ndarray, cfg: SynthConfig | None = None) -> np.ndarray | None:
    """Cheap object mask: (H, W) bool, or None when no clear object/background split exists.

    The background colour is the median of a border ring (`cfg.fg_border` of the shorter
    side); foreground = mean absolute difference from it > `cfg.fg_threshold`, cleaned by a
    morphological opening (specks) and closing (holes). Returns None (= use the whole
    image) when the border itself is not one uniform colour (< 75 % of it is within the
    threshold: a texture, or an object touching the border) or when the estimate covers
    less or more than `cfg.fg_fraction` of the image.
    """
    cfg = cfg or SynthConfig()
    h, w = image.shape[:2]
    b = max(1, int(round(cfg.fg_border * min(h, w))))
    ring = np.concatenate(
        [image[:b].reshape(-1, 3), image[-b:].reshape(-1, 3), image[b:-b, :b].reshape(-1, 3), image[b:-b, -b:].reshape(-1, 3)]
    )
    bg = np.median(ring, axis=0).astype(np.float32)
    ring_dist = np.abs(ring.astype(np.float32) - bg).mean(axis=1)
    if np.mean(ring_dist <= cfg.fg_threshold) < 0.75:
        return None
    dist = np.abs(image.astype(np.float32) - bg).mean(axis=2)
    fg = (dist > cfg.fg_threshold).astype(np.uint8)
    k = max(3, int(round(0.02 * min(h, w))) | 1)  # odd, ~5 px at 240 px
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, kernel)
    frac = float(fg.mean())
    if not (cfg.fg_fraction[0] <= frac <= cfg.fg_fraction[1]) or frac == 0.0:
        return None
    return fg.astype(bool)


def _place(rng: np.random.Generator, shape: tuple[int, int], ph: int, pw: int, fg: np.ndarray | None,
           min_overlap: float, margin: int = 0, avoid: tuple[int, int, int, int] | None = None) -> tuple[int, int]:
    """Top-left (y, x) of a ph x pw rectangle inside `shape`, `margin` px from the edges.

    With a foreground mask the rectangle is centred on a random object pixel and accepted
    when >= min_overlap of it is object; after _PLACEMENT_TRIES the best try is used.
    `avoid` = (y, x, h, w) of a rectangle the result must not nearly coincide with (NSA
    with the source = the target): centres at least half a side apart in y or x.
    """
    h, w = shape
    ymax, xmax = h - margin - ph, w - margin - pw
    fg_yx = np.argwhere(fg) if fg is not None else None
    best, best_score = None, -1.0
    for _ in range(_PLACEMENT_TRIES):
        if fg_yx is not None and len(fg_yx):
            cy, cx = fg_yx[rng.integers(len(fg_yx))]
            y = int(np.clip(cy - ph // 2, margin, ymax))
            x = int(np.clip(cx - pw // 2, margin, xmax))
        else:
            y = int(rng.integers(margin, ymax + 1))
            x = int(rng.integers(margin, xmax + 1))
        score = 1.0 if fg is None else float(fg[y : y + ph, x : x + pw].mean())
        if avoid is not None:
            ay, ax, ah, aw = avoid
            far = abs((y + ph / 2) - (ay + ah / 2)) >= max(ph, ah) / 2 or abs((x + pw / 2) - (ax + aw / 2)) >= max(pw, aw) / 2
            if not far:
                score -= 2.0  # any far placement beats every near one
        if score >= min_overlap and score >= 0:
            return y, x
        if score > best_score:
            best, best_score = (y, x), score
    return best


def _mean_change(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    if not mask.any():
        return 0.0
    return float(np.abs(a[mask].astype(np.int16) - b[mask].astype(np.int16)).mean())


# --------------------------------------------------------------------------- Gaussian


def gaussian_patches(image: np.ndarray, rng: np.random.Generator, cfg: SynthConfig | None = None,
                     foreground: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Random perturbation: replace a few random squares by Gaussian noise.

    image: (H, W, 3) uint8 RGB (not modified). Returns (out (H, W, 3) uint8, mask (H, W)
    bool); out equals image exactly wherever mask is False. See SynthConfig for the
    parameters. `foreground` (H, W) bool overrides the estimate used when
    cfg.restrict_to_foreground (pass None to estimate it here).
    """
    cfg = cfg or SynthConfig()
    image = _check_image(image, "image")
    if not cfg.restrict_to_foreground:
        foreground = None
    elif foreground is None:
        foreground = estimate_foreground(image, cfg)
    return _gaussian(image, rng, cfg, foreground)


def _gaussian(image: np.ndarray, rng: np.random.Generator, cfg: SynthConfig,
              foreground: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    out = image.copy()
    mask = np.zeros((h, w), dtype=bool)
    short = min(h, w)
    n = int(rng.integers(cfg.gauss_patches[0], cfg.gauss_patches[1] + 1))
    for _ in range(n):
        side = int(round(rng.uniform(*cfg.gauss_size) * short))
        side = int(np.clip(side, _MIN_GAUSS_SIDE, short))
        y, x = _place(rng, (h, w), side, side, foreground, cfg.fg_min_overlap)
        region = image[y : y + side, x : x + side].astype(np.float64)
        for _attempt in range(cfg.max_attempts):
            mean = rng.uniform(cfg.gauss_mean[0], cfg.gauss_mean[1], size=3)
            std = rng.uniform(*cfg.gauss_std)
            noise = mean + std * rng.standard_normal((side, side, 3))
            patch = np.clip(np.rint(noise), 0, 255).astype(np.uint8)
            # A random colour near the region's own colour would be a near-invisible anomaly.
            if np.abs(patch.astype(np.float64) - region).mean() >= cfg.min_change:
                break
        out[y : y + side, x : x + side] = patch
        mask[y : y + side, x : x + side] = True
    return out, mask


# --------------------------------------------------------------------------- NSA


def _nsa_side(rng: np.random.Generator, cfg: SynthConfig, dim: int) -> int:
    frac = cfg.nsa_size_offset + rng.gamma(cfg.nsa_gamma_shape, cfg.nsa_gamma_scale)
    frac = float(np.clip(frac, cfg.nsa_size[0], cfg.nsa_size[1]))
    return int(round(frac * dim))


def _clone(source_patch: np.ndarray, target: np.ndarray, y: int, x: int, flag: int) -> np.ndarray:
    """Poisson-blend source_patch (ph, pw, 3) into target at top-left (y, x); rectangle mask.

    The source and the mask are given at full target size with the patch already in
    place, and the centre is chosen so that OpenCV's destination ROI
    (p - bounding_box_size // 2) equals the patch's own bounding box: no off-by-one
    placement. OpenCV writes into the mask argument (seen with 5.0), so it gets a fresh
    array. The solver keeps the 1-px rim of the mask as boundary and only writes inside the
    ROI; pixels outside the rectangle are copied back anyway, so "outside the mask is
    untouched" holds whatever the OpenCV version does near the rim.
    """
    ph, pw = source_patch.shape[:2]
    h, w = target.shape[:2]
    src = target.copy()
    src[y : y + ph, x : x + pw] = source_patch
    m = np.zeros((h, w), dtype=np.uint8)
    m[y : y + ph, x : x + pw] = 255
    center = (x + pw // 2, y + ph // 2)
    # cv2 works on BGR, but Poisson blending treats the channels independently and
    # identically, so RGB in gives RGB out.
    out = cv2.seamlessClone(np.ascontiguousarray(src), np.ascontiguousarray(target), m, center, flag)
    rect = np.zeros((h, w), dtype=bool)
    rect[y : y + ph, x : x + pw] = True
    out[~rect] = target[~rect]
    return out


def _nsa_once(target: np.ndarray, source: np.ndarray, same: bool, rng: np.random.Generator, cfg: SynthConfig,
              fg_t: np.ndarray | None, fg_s: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, float, tuple]:
    """One NSA patch attempt -> (out, mask, mean change, (y, x, ph, pw, src_y, src_x))."""
    th, tw = target.shape[:2]
    sh, sw = source.shape[:2]
    # Patch size relative to the target, then cut from the source (2-px margin for the clone).
    ph = int(np.clip(_nsa_side(rng, cfg, th), _MIN_NSA_SIDE, min(th, sh) - 2))
    pw = int(np.clip(_nsa_side(rng, cfg, tw), _MIN_NSA_SIDE, min(tw, sw) - 2))
    sy, sx = _place(rng, (sh, sw), ph, pw, fg_s, cfg.fg_min_overlap, margin=1)
    patch = source[sy : sy + ph, sx : sx + pw]
    # Rescale, keeping the aspect ratio, within the size bounds and the target.
    scale = float(rng.uniform(*cfg.nsa_resize))
    nh = int(np.clip(round(ph * scale), _MIN_NSA_SIDE, th - 2))
    nw = int(np.clip(round(pw * scale), _MIN_NSA_SIDE, tw - 2))
    if (nh, nw) != (ph, pw):
        interp = cv2.INTER_AREA if nh * nw < ph * pw else cv2.INTER_LINEAR
        patch = cv2.resize(patch, (nw, nh), interpolation=interp)
    if cfg.nsa_shift or same:
        avoid = (sy, sx, ph, pw) if same else None
        ty, tx = _place(rng, (th, tw), nh, nw, fg_t, cfg.fg_min_overlap, margin=1, avoid=avoid)
    else:
        ty, tx = int(np.clip(sy, 1, th - 1 - nh)), int(np.clip(sx, 1, tw - 1 - nw))
    if cfg.nsa_clone == "random":
        flags = [(cv2.NORMAL_CLONE, cv2.MIXED_CLONE)[int(rng.integers(2))]]
    else:
        flags = [cv2.MIXED_CLONE if cfg.nsa_clone == "mixed" else cv2.NORMAL_CLONE]
    if flags[0] == cv2.MIXED_CLONE:
        # Mixed cloning keeps the target's gradient wherever it is stronger, which can
        # leave no visible change at all; then blend this attempt normally.
        flags.append(cv2.NORMAL_CLONE)
    mask = np.zeros((th, tw), dtype=bool)
    mask[ty : ty + nh, tx : tx + nw] = True
    best = None
    for flag in flags:
        out = _clone(patch, target, ty, tx, flag)
        change = _mean_change(out, target, mask)
        if best is None or change > best[2]:
            best = (out, mask, change, (ty, tx, nh, nw, sy, sx))
        if change >= cfg.min_change:
            break
    return best


def _nsa(target: np.ndarray, source: np.ndarray, rng: np.random.Generator, cfg: SynthConfig, same: bool,
         fg_t: np.ndarray | None, fg_s: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, bool, list[tuple]]:
    """All NSA patches of one sample -> (out, mask, every patch reached min_change, placements)."""
    n = int(rng.integers(cfg.nsa_patches[0], cfg.nsa_patches[1] + 1))
    out = target
    mask = np.zeros(target.shape[:2], dtype=bool)
    ok = True
    placements = []
    for _ in range(n):
        best = None
        for _attempt in range(cfg.max_attempts):
            cand = _nsa_once(out, source, same, rng, cfg, fg_t, fg_s)
            if best is None or cand[2] > best[2]:
                best = cand
            if cand[2] >= cfg.min_change:
                break
        out = best[0]
        mask |= best[1]
        placements.append(best[3])
        ok = ok and best[2] >= cfg.min_change
    return out, mask, ok, placements


def nsa_patch(target: np.ndarray, source: np.ndarray | None, rng: np.random.Generator,
              cfg: SynthConfig | None = None, target_foreground: np.ndarray | None = None,
              source_foreground: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """NSA: blend a Gamma-sized patch of `source` into `target` with Poisson editing.

    target: (H, W, 3) uint8 RGB (not modified). source: (H', W', 3) uint8 RGB, another
    normal image; None or the target itself = the same image, the patch then always lands
    away from where it was cut. Returns (out (H, W, 3) uint8, mask (H, W) bool): mask is
    the union of the blended rectangles, out equals target exactly outside it.

    Each patch is redrawn up to cfg.max_attempts times until its mean absolute change
    inside the rectangle reaches cfg.min_change; if none does, the attempt with the
    largest change is kept (`generate` then falls back to a Gaussian perturbation). The
    foreground masks override the estimates used when cfg.restrict_to_foreground.
    """
    cfg = cfg or SynthConfig()
    target = _check_image(target, "target")
    same = source is None or source is target
    source = target if same else _check_image(source, "source")
    fg_t, fg_s = _foregrounds(target, source, same, cfg, target_foreground, source_foreground)
    out, mask, _ok, _ = _nsa(target, source, rng, cfg, same, fg_t, fg_s)
    return (out if out is not target else target.copy()), mask


def _foregrounds(target, source, same, cfg, fg_t, fg_s):
    if not cfg.restrict_to_foreground:
        return None, None
    if fg_t is None:
        fg_t = estimate_foreground(target, cfg)
    if fg_s is None:
        fg_s = fg_t if same else estimate_foreground(source, cfg)
    return fg_t, fg_s


# --------------------------------------------------------------------------- generate


@dataclass(frozen=True, eq=False)
class SynthSample:
    """One synthetic anomalous image.

    image: (H, W, 3) uint8 RGB. mask: (H, W) bool, True where pixels were replaced.
    kind: "gaussian" or "nsa" (what was actually done). source_index: for NSA, the index
    of the normal image the patch came from (the image's own index when k = 1); None for
    the Gaussian perturbation.
    """

    image: np.ndarray
    mask: np.ndarray
    kind: str
    source_index: int | None = None


def sample_rng(cfg: SynthConfig, i: int, j: int) -> np.random.Generator:
    """The generator of sample j of normal image i."""
    return np.random.default_rng([cfg.seed, i, j])


def _kind_of(cfg: SynthConfig, i: int, j: int) -> str:
    if cfg.kind != "mixed":
        return cfg.kind
    # Balanced: alternate, starting with a kind drawn per image (own stream, so that it
    # does not shift the draws of the samples).
    start = int(np.random.default_rng([cfg.seed, i]).integers(2))
    return ("gaussian", "nsa")[(start + j) % 2]


def generate(images: Sequence[np.ndarray], cfg: SynthConfig | None = None) -> list[list[SynthSample]]:
    """Make cfg.per_image synthetic anomalies from each normal image.

    images: k normal images, (H, W, 3) uint8 RGB each (sizes may differ). Returns
    samples[i][j], i < k, j < cfg.per_image. NSA takes its patch from another image drawn
    uniformly (the same image when k = 1). An NSA sample none of whose attempts reached
    cfg.min_change (e.g. a blank image) becomes a Gaussian perturbation, and says so in
    its kind. Deterministic: see the module docstring.
    """
    cfg = cfg or SynthConfig()
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    images = list(images)
    if not images:
        raise FsacError("synth: no normal images to make anomalies from")
    for i, im in enumerate(images):
        _check_image(im, f"normal image {i}")
    fg_cache: dict[int, np.ndarray | None] = {}

    def fg(idx: int) -> np.ndarray | None:
        if not cfg.restrict_to_foreground:
            return None
        if idx not in fg_cache:
            fg_cache[idx] = estimate_foreground(images[idx], cfg)
        return fg_cache[idx]

    k = len(images)
    result: list[list[SynthSample]] = []
    for i, image in enumerate(images):
        row = []
        for j in range(cfg.per_image):
            rng = sample_rng(cfg, i, j)
            kind = _kind_of(cfg, i, j)
            if kind == "nsa":
                if k == 1:
                    src = i
                else:
                    r = int(rng.integers(k - 1))
                    src = r if r < i else r + 1
                out, mask, ok, _ = _nsa(image, images[src], rng, cfg, src == i, fg(i), fg(src))
                if ok:
                    row.append(SynthSample(out, mask, "nsa", src))
                    continue
            out, mask = _gaussian(image, rng, cfg, fg(i))
            row.append(SynthSample(out, mask, "gaussian", None))
        result.append(row)
    return result
