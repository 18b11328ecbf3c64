"""Parity of the exported graph with PyTorch, checked on real images at export time.

    torch  : DeployModel(pixels)            -> score, logit, sim_normal, sim_anomalous (N,) each
    onnx   : onnxruntime(model)("image")    -> the same four outputs
    max |Δ sim_normal|, max |Δ sim_anomalous|  <= tolerance        (cosine units, 1e-4 for fp32)
    max |Δ logit|                              <= tolerance / tau  (the same error in logit units:
                                                                    logit = Δsim / tau)
    max |Δ score|                              <= tolerance

The logit is what ranks and decides (`fsac.score`), so it is checked in its own units; the
score alone says little because it saturates at 0 and 1.

Both sides get the same uint8 pixels from `fsac.preprocess.preprocess_file`, so the check
covers everything from the resized pixels to the score. The images are real ones: the
training shots recorded in the checkpoint plus a few held-out images from the same folder,
or whatever `--check-images` names. Random tensors would miss input-dependent problems
(e.g. a softmax that saturates only on real data).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fsac.errors import FsacError
from fsac.io import sha256_file
from fsac.modelfile import OUTPUT_NAMES
from fsac.runner import expand_images  # noqa: F401  (re-exported)
from fsac.preprocess import PreprocessSpec, list_images

FP32_TOLERANCE = 1e-4

# Checkpoint keys that may name the folder the shots came from (the trainer records names).
_FOLDER_KEYS = ("train_dir", "train_folder", "images_dir", "data_dir", "normal_dir")


@dataclass
class ParityReport:
    """ORT vs PyTorch on `n_images` real images. Differences are absolute, each in its own
    units; `tolerance` is in cosine (similarity) units, `logit_tolerance` = tolerance / tau."""

    n_images: int
    tolerance: float
    tau: float
    max_abs_diff_sim: float  # sim_normal and sim_anomalous
    max_abs_diff_logit: float
    max_abs_diff_score: float
    worst_image: str  # largest |Δ logit|
    images: list[str] = field(default_factory=list)

    @property
    def logit_tolerance(self) -> float:
        return self.tolerance / self.tau

    @property
    def passed(self) -> bool:
        return (self.max_abs_diff_sim <= self.tolerance and self.max_abs_diff_logit <= self.logit_tolerance
                and self.max_abs_diff_score <= self.tolerance)

    def summary(self) -> str:
        return (f"max |Δ logit| = {self.max_abs_diff_logit:.3g} (<= {self.logit_tolerance:.3g}), "
                f"max |Δ similarity| = {self.max_abs_diff_sim:.3g} (<= {self.tolerance:g}), "
                f"max |Δ score| = {self.max_abs_diff_score:.3g} over {self.n_images} images")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "logit_tolerance": self.logit_tolerance, "passed": self.passed}


def _resolve_shots(folder: Path, meta: dict[str, Any]) -> list[Path]:
    """Training shots of a checkpoint that still exist on disk (and still have the recorded
    sha256). The checkpoint stores names (+ sha256), optionally a path or a folder."""
    entries = meta.get("train_images") or []
    dirs = [Path(meta[k]) for k in _FOLDER_KEYS if isinstance(meta.get(k), str)]
    shots: list[Path] = []
    for e in entries:
        if isinstance(e, str):
            e = {"path": e}
        if not isinstance(e, dict):
            continue
        candidates = []
        if e.get("path"):
            p = Path(e["path"])
            candidates.append(p if p.is_absolute() else folder / p)
        if e.get("name"):
            candidates += [d / e["name"] for d in dirs]
        for c in candidates:
            if c.is_file() and (not e.get("sha256") or sha256_file(c) == e["sha256"]):
                shots.append(c)
                break
    return shots


def select_parity_images(checkpoint_folder: str | os.PathLike, meta: dict[str, Any],
                         check_images: Sequence[str | os.PathLike] | None = None,
                         n_heldout: int = 4, max_images: int = 16) -> list[Path]:
    """Real images for the parity check: `check_images` if given, else the training shots
    plus up to `n_heldout` other images from their folder(s). At most `max_images`."""
    if check_images:
        images = expand_images(check_images)
    else:
        shots = _resolve_shots(Path(checkpoint_folder), meta)
        if not shots:
            raise FsacError(
                f"{checkpoint_folder}: cannot find the training images on disk for the parity check "
                "(the checkpoint records their names only); pass --check-images FOLDER with a few real images"
            )
        seen = {p.resolve() for p in shots}
        heldout: list[Path] = []
        for d in dict.fromkeys(p.parent for p in shots):
            for p in list_images(d):
                if len(heldout) >= n_heldout:
                    break
                if p.resolve() not in seen:
                    heldout.append(p)
        images = shots + heldout
    if not images:
        raise FsacError("no images for the parity check; pass --check-images FOLDER")
    return images[:max_images]


def load_pixels(paths: Sequence[Path], spec: PreprocessSpec) -> np.ndarray:
    """Image files -> (N, S, S, 3) uint8 through the one preprocessing implementation."""
    from fsac.runner import load_pixels as _load

    return _load(paths, spec)


def run_torch(deploy_model, pixels: np.ndarray, batch_size: int = 8) -> dict[str, np.ndarray]:
    """DeployModel on (N, S, S, 3) uint8 -> {"score", "logit", "sim_normal", "sim_anomalous"}: (N,) float32."""
    import torch

    device = next(deploy_model.parameters()).device
    outs: list[tuple] = []
    with torch.no_grad():
        for i in range(0, len(pixels), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(pixels[i : i + batch_size])).to(device)
            outs.append(tuple(t.float().cpu().numpy() for t in deploy_model(x)))
    return {name: np.concatenate([o[j] for o in outs]) for j, name in enumerate(OUTPUT_NAMES)}


def run_onnx(session, pixels: np.ndarray, batch_size: int = 8) -> dict[str, np.ndarray]:
    """onnxruntime session on (N, S, S, 3) uint8 -> the four outputs, (N,) each."""
    from fsac.runner import run_session

    return run_session(session, pixels, batch_size)


def compare(reference: dict[str, np.ndarray], other: dict[str, np.ndarray], names: Sequence[str],
            tau: float, tolerance: float = FP32_TOLERANCE) -> ParityReport:
    def diff(k: str) -> np.ndarray:
        return np.abs(reference[k].astype(np.float64) - other[k].astype(np.float64))

    dz = diff("logit")
    dsim = max(float(diff(k).max()) for k in ("sim_normal", "sim_anomalous"))
    return ParityReport(n_images=len(dz), tolerance=tolerance, tau=float(tau), max_abs_diff_sim=dsim,
                        max_abs_diff_logit=float(dz.max()), max_abs_diff_score=float(diff("score").max()),
                        worst_image=str(names[int(np.argmax(dz))]), images=[str(n) for n in names])


def check_parity(torch_outputs: dict[str, np.ndarray], model: bytes | str | os.PathLike, pixels: np.ndarray,
                 names: Sequence[str], tau: float, tolerance: float = FP32_TOLERANCE,
                 label: str = "fp32 ONNX graph", batch_size: int = 4) -> ParityReport:
    """Run the graph (serialized bytes, or a file) on `pixels` with ONNX Runtime (CPU) and compare with the
    PyTorch outputs. Raises FsacError, with the numbers, if the logit or a similarity (or
    the score) differs by more than its tolerance.

    batch_size > 1 on purpose: it exercises the dynamic batch axis the runtime relies on.
    """
    from fsac.runner import make_session

    # No pre-packed second copy of the weights: fsac-run runs without it too, and the export's
    # peak memory is what decides whether it fits on an 8 GB workstation.
    session = make_session(model, cpu_prepack=False)
    report = compare(torch_outputs, run_onnx(session, pixels, batch_size), names, tau, tolerance)
    if not report.passed:
        raise FsacError(f"parity check failed for the {label}: {report.summary()} (worst: {report.worst_image}); "
                        "the exported graph does not reproduce PyTorch")
    return report
