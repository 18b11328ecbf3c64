"""The settings of the synthetic anomaly generators (fsac.train.synth): `SynthConfig`, a
frozen dataclass checked on construction, so a bad value fails with its name before any
image is touched."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from fsac.errors import FsacError

KINDS = ("gaussian", "nsa", "mixed")
NSA_CLONES = ("normal", "mixed", "random")



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
