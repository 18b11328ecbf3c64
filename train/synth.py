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

`write_synth_images` writes the generated images, their masks and a contact sheet as PNG
files, so a user can see what the model trains against.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from fsac.errors import FsacError
from fsac.io import atomic_write_bytes

KINDS = ("gaussian", "nsa", "mixed")
NSA_CLONES = ("normal", "mixed", "random")
MIN_IMAGE_SIDE = 32
# Smallest patch sides in pixels. A Gaussian patch of 1 px is noise nobody can see; a
# Poisson-blended patch needs an interior (seamlessClone keeps the 1-px rim of the mask as
# the boundary condition), and NSA itself refuses masks under ~50 px.
_MIN_GAUSS_SIDE = 3
_MIN_NSA_SIDE = 8
# How many random placements to try before taking the one that covers the most object.
_PLACEMENT_TRIES = 50


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SynthConfig:
    """How synthetic anomalies are made. Every field is a documented choice; the paper only
    names the two generators.

    General
      kind: "gaussian" | "nsa" | "mixed" (alternate the two, balanced per image).
      per_image: m, the number of synthetic images made from each normal image.
      seed: base seed (integer >= 0); sample (i, j) uses default_rng([seed, i, j]).
      restrict_to_foreground: place anomalies on the object when a foreground mask can be
        estimated cheaply (see `estimate_foreground`); the whole image otherwise.
      min_change: smallest accepted mean absolute change inside the mask, in grey levels
        (0..255, averaged over the three channels). A patch below it is redrawn, up to
        `max_attempts` times: Poisson blending of a patch onto a similar-looking region
        can give an almost invisible change, which would teach the model that a normal
        image is anomalous.
      max_attempts: redraws per patch before giving up (see `generate` for what then).

    Gaussian perturbation (sides relative to the shorter image side)
      gauss_patches: (min, max) number of square patches, inclusive, uniform.
      gauss_size: (min, max) side of a square as a fraction of the shorter image side,
        uniform. Patches may overlap and are clipped to the image.
      gauss_mean: (lo, hi) per patch and per channel, the Gaussian's mean is uniform in
        [lo, hi] (grey levels), so patches get a random colour.
      gauss_std: (lo, hi) per patch, the Gaussian's standard deviation is uniform in
        [lo, hi]; each pixel and channel is drawn independently, then rounded and clipped
        to [0, 255].

    NSA (Schlueter et al. 2022; their MVTec object setting is a half-width of
    0.03 + Gamma(shape 2, scale 0.05) of the image side, clipped to [0.03, 0.4]; written
    here for the full side, with the upper clip lowered from 0.8 to 0.4: patches over
    40 % of the side are trivially visible and rarely look like a defect)
      nsa_patches: (min, max) number of blended patches, inclusive, uniform.
      nsa_gamma_shape, nsa_gamma_scale, nsa_size_offset: the patch width (height) as a
        fraction of the image width (height) is nsa_size_offset + Gamma(shape, scale),
        drawn independently for both sides (mean offset + shape * scale = 0.26),
      nsa_size: ... then clipped to [min, max].
      nsa_resize: (lo, hi) the cut patch is rescaled by a factor uniform in [lo, hi],
        keeping its aspect ratio ((1, 1) = no rescaling).
      nsa_shift: place the patch at a random location of the target (True), or at the
        location it was cut from (False; only sensible for a different, unaligned image;
        with the same image the patch is always moved).
      nsa_clone: Poisson blending mode: "normal" (cv2.NORMAL_CLONE: the patch's gradients,
        the target's colours at the border), "mixed" (cv2.MIXED_CLONE: the stronger of the
        two gradients per pixel; falls back to normal cloning for an attempt whose change
        is too small), or "random" (a coin per patch, as NSA's "mix").

    Foreground estimate (only with restrict_to_foreground)
      fg_border: width of the image border, as a fraction of the shorter side, whose
        median colour is taken as the background colour.
      fg_threshold: a pixel is foreground when its mean absolute difference from the
        background colour exceeds this (grey levels).
      fg_fraction: (min, max) accepted coverage of the estimate; outside it (nothing found,
        or everything is "object", as on a texture) the whole image is used.
      fg_min_overlap: the fraction of a patch rectangle that must lie on the object, in
        the target and, for NSA, in the source (NSA's min_object_pct, 0.25 there; 0.5
        here keeps patches visibly on the part instead of half on the background).
    """

    kind: str = "gaussian"
    per_image: int = 4
    seed: int = 0
    restrict_to_foreground: bool = True
    min_change: float = 8.0
    max_attempts: int = 10

    gauss_patches: tuple[int, int] = (1, 3)
    gauss_size: tuple[float, float] = (0.05, 0.25)
    gauss_mean: tuple[float, float] = (0.0, 255.0)
    gauss_std: tuple[float, float] = (10.0, 60.0)

    nsa_patches: tuple[int, int] = (1, 1)
    nsa_gamma_shape: float = 2.0
    nsa_gamma_scale: float = 0.1
    nsa_size_offset: float = 0.06
    nsa_size: tuple[float, float] = (0.06, 0.4)
    nsa_resize: tuple[float, float] = (0.7, 1.3)
    nsa_shift: bool = True
    nsa_clone: str = "normal"

    fg_border: float = 0.05
    fg_threshold: float = 25.0
    fg_fraction: tuple[float, float] = (0.02, 0.95)
    fg_min_overlap: float = 0.5

    def __post_init__(self) -> None:
        # Configs read from JSON/YAML carry lists: store tuples so the config stays hashable.
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):
                object.__setattr__(self, f.name, tuple(v))
        self.validate()

    def validate(self) -> None:
        """Raise FsacError naming the first bad setting."""
        if self.kind not in KINDS:
            raise FsacError(f"synth.kind must be one of {KINDS}, got {self.kind!r}")
        _int(self.per_image, "synth.per_image", lo=1)
        _int(self.seed, "synth.seed", lo=0)
        _bool(self.restrict_to_foreground, "synth.restrict_to_foreground")
        _num(self.min_change, "synth.min_change", lo=0.0, hi=255.0)
        _int(self.max_attempts, "synth.max_attempts", lo=1)

        _int_range(self.gauss_patches, "synth.gauss_patches", lo=1)
        _range(self.gauss_size, "synth.gauss_size", lo=0.0, hi=1.0, lo_open=True)
        _range(self.gauss_mean, "synth.gauss_mean", lo=0.0, hi=255.0)
        _range(self.gauss_std, "synth.gauss_std", lo=0.0, hi=255.0)

        _int_range(self.nsa_patches, "synth.nsa_patches", lo=1)
        _num(self.nsa_gamma_shape, "synth.nsa_gamma_shape", lo=0.0, lo_open=True)
        _num(self.nsa_gamma_scale, "synth.nsa_gamma_scale", lo=0.0, lo_open=True)
        _num(self.nsa_size_offset, "synth.nsa_size_offset", lo=0.0, hi=1.0)
        _range(self.nsa_size, "synth.nsa_size", lo=0.0, hi=1.0, lo_open=True)
        _range(self.nsa_resize, "synth.nsa_resize", lo=0.0, hi=10.0, lo_open=True)
        _bool(self.nsa_shift, "synth.nsa_shift")
        if self.nsa_clone not in NSA_CLONES:
            raise FsacError(f"synth.nsa_clone must be one of {NSA_CLONES}, got {self.nsa_clone!r}")

        _num(self.fg_border, "synth.fg_border", lo=0.0, hi=0.5, lo_open=True)
        _num(self.fg_threshold, "synth.fg_threshold", lo=0.0, hi=255.0)
        _range(self.fg_fraction, "synth.fg_fraction", lo=0.0, hi=1.0)
        _num(self.fg_min_overlap, "synth.fg_min_overlap", lo=0.0, hi=1.0)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SynthConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise FsacError(f"unknown synth settings: {sorted(unknown)}")
        return cls(**d)


def _int(v, name: str, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise FsacError(f"{name} must be an integer >= {lo}, got {v!r}")


def _bool(v, name: str) -> None:
    if not isinstance(v, (bool, np.bool_)):
        raise FsacError(f"{name} must be true or false, got {v!r}")


def _num(v, name: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> None:
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v <= hi
    if not ok:
        lo_s = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
        hi_s = "" if hi is None else f"<= {hi}"
        raise FsacError(f"{name} must be a number {' and '.join(s for s in (lo_s, hi_s) if s)}, got {v!r}")


def _pair(v, name: str) -> None:
    if not (isinstance(v, tuple) and len(v) == 2):
        raise FsacError(f"{name} must be a (min, max) pair, got {v!r}")


def _range(v, name: str, lo: float, hi: float, lo_open: bool = False) -> None:
    _pair(v, name)
    for x in v:
        _num(x, name, lo=lo, hi=hi, lo_open=lo_open)
    if v[0] > v[1]:
        raise FsacError(f"{name} must be (min, max) with min <= max, got {v!r}")


def _int_range(v, name: str, lo: int) -> None:
    _pair(v, name)
    for x in v:
        _int(x, name, lo=lo)
    if v[0] > v[1]:
        raise FsacError(f"{name} must be (min, max) with min <= max, got {v!r}")


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


# --------------------------------------------------------------------------- inspection

_SHEET_GAP = 4
_SHEET_LABEL = 14
_SHEET_BG = (48, 48, 48)
_OUTLINE_RGB = (255, 0, 0)


def outline(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = _OUTLINE_RGB) -> np.ndarray:
    """Copy of image (RGB) with the mask's outline drawn 1 px *outside* the mask, so the
    anomaly's own pixels stay visible."""
    out = image.copy()
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
    contours, _ = cv2.findContours(grown, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, color, 1)
    return out


def contact_sheet(images: Sequence[np.ndarray], samples: Sequence[Sequence[SynthSample]],
                  names: Sequence[str] | None = None) -> np.ndarray:
    """One row per normal image: the normal image, then its synthetic images with the mask
    outlined in red; a label strip above each tile. Returns (H', W', 3) uint8 RGB."""
    _check_rows(images, samples, names)
    cell_h = max(max(im.shape[0] for im in images), max((s.image.shape[0] for r in samples for s in r), default=0))
    cell_w = max(max(im.shape[1] for im in images), max((s.image.shape[1] for r in samples for s in r), default=0))
    cols = 1 + max(len(r) for r in samples)
    rows = len(images)
    g, lab = _SHEET_GAP, _SHEET_LABEL
    sheet = np.empty((g + rows * (lab + cell_h + g), g + cols * (cell_w + g), 3), dtype=np.uint8)
    sheet[:] = _SHEET_BG
    for i, (image, row) in enumerate(zip(images, samples)):
        tiles = [(image, (names[i] if names else f"{i}") + " normal")]
        tiles += [(outline(s.image, s.mask), f"{j} {s.kind}" + (f"<{s.source_index}" if s.source_index is not None else ""))
                  for j, s in enumerate(row)]
        y0 = g + i * (lab + cell_h + g)
        for c, (tile, text) in enumerate(tiles):
            x0 = g + c * (cell_w + g)
            sheet[y0 + lab : y0 + lab + tile.shape[0], x0 : x0 + tile.shape[1]] = tile
            cv2.putText(sheet, text[:40], (x0 + 1, y0 + lab - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (235, 235, 235), 1,
                        cv2.LINE_AA)
    return sheet


def _check_rows(images, samples, names) -> None:
    if len(images) != len(samples) or not images:
        raise FsacError(f"synth: {len(images)} normal images but {len(samples)} rows of samples")
    if names is not None and len(names) != len(images):
        raise FsacError(f"synth: {len(names)} names for {len(images)} normal images")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")[:80] or "image"


def _write_png(path: Path, rgb_or_gray: np.ndarray) -> Path:
    img = rgb_or_gray
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)  # cv2 encodes BGR
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise FsacError(f"cannot encode PNG for {path}")
    return atomic_write_bytes(path, buf.tobytes())


def write_synth_images(images: Sequence[np.ndarray], samples: Sequence[Sequence[SynthSample]],
                       out_dir: str | Path, names: Sequence[str] | None = None) -> list[Path]:
    """Write every synthetic image and its mask as PNG, plus a contact sheet.

    images: the normal images given to `generate`; samples: its result; names: optional
    per normal image (e.g. file stems), made file-name safe and prefixed with the index.
    Files in out_dir (created): <i>[_<name>]_synth<j>_<kind>.png (RGB),
    <i>[_<name>]_synth<j>_mask.png (0/255 grey), contact_sheet.png. Written atomically.
    Returns the paths, contact sheet last.
    """
    _check_rows(images, samples, names)
    out_dir = Path(out_dir)
    paths: list[Path] = []
    for i, row in enumerate(samples):
        stem = f"{i:03d}" if names is None else f"{i:03d}_{_safe_name(names[i])}"
        for j, s in enumerate(row):
            paths.append(_write_png(out_dir / f"{stem}_synth{j:02d}_{s.kind}.png", s.image))
            paths.append(_write_png(out_dir / f"{stem}_synth{j:02d}_mask.png", s.mask.astype(np.uint8) * 255))
    sheet_names = [_safe_name(n) for n in names] if names is not None else None
    paths.append(_write_png(out_dir / "contact_sheet.png", contact_sheet(images, samples, sheet_names)))
    return paths
