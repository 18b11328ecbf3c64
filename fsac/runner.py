"""Run an fsac model file through ONNX Runtime (no torch, no onnx): the one session builder.

Calibration must see the logits the line will see, so `fsac calibrate`, `fsac quantize`, the
export parity check and fsac-run's ONNX Runtime backend all build their session here
(`make_session`), run the very file the runtime loads (seal verified by
`fsac.modelfile.load_model_file`), on pixels from the one preprocessing implementation
(`fsac.preprocess`). Torch-free, so `fsac calibrate` also runs on the edge box.

    scores = score_model_file("model.onnx", ["good/000.png", ...])
    scores.logit          (N,) float32 anomaly logits z: rank and decide with these
    scores.score          (N,) float32 anomaly scores AS = sigmoid(z), for people
    scores.sim_normal     (N,) float32, scores.sim_anomalous (N,) float32
    scores.names          image paths as given, scores.sha256 their content hashes
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fsac.errors import FsacError, ImageDecodeError
from fsac.io import sha256_file
from fsac.modelfile import INPUT_NAME, OUTPUT_NAMES, ModelInfo, load_model_file
from fsac.preprocess import IMAGE_SUFFIXES, PreprocessSpec, list_images, preprocess_file


def make_session(model: bytes | str | os.PathLike, threads: int | None = None, providers: Sequence[str] | None = None,
                 *, spin_wait: bool = True, cpu_prepack: bool = True, source: str | None = None,
                 profile_prefix: str | None = None):
    """onnxruntime.InferenceSession, all graph optimisations on, CPU provider by default.

    threads: intra-op threads (None or 0 = onnxruntime's default, one per physical core).
    spin_wait: worker threads spin between ops (onnxruntime's default; fsac-run turns it off
    so the decode threads get the cores). cpu_prepack: pre-pack MatMul weights (faster; the
    packed copy takes the plain weights' place; fsac-run's `model.cpu_prepack`, on by default).
    profile_prefix: turn on onnxruntime's kernel profiler, its JSON file named from this prefix
    (`session.end_profiling()` writes it and returns the path).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise FsacError("onnxruntime is not installed (pip install onnxruntime, or 'fsac[runtime]')") from None
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: ORT warns about unused initializers, etc.
    if threads:
        so.intra_op_num_threads = int(threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
    if not cpu_prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    data = model if isinstance(model, (bytes, bytearray)) else str(model)
    src = source or ("<model bytes>" if isinstance(model, (bytes, bytearray)) else str(model))
    try:
        return ort.InferenceSession(data, so, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as e:  # onnxruntime raises its own exception types per failure
        raise FsacError(f"{src}: onnxruntime cannot load the model ({str(e).splitlines()[0][:200]})") from None


def run_session(session, pixels: np.ndarray, batch_size: int = 8) -> dict[str, np.ndarray]:
    """(N, S, S, 3) uint8 -> {"score", "logit", "sim_normal", "sim_anomalous"}: (N,) float32 each."""
    if pixels.dtype != np.uint8 or pixels.ndim != 4:
        raise FsacError(f"model input must be (N, S, S, 3) uint8, got {pixels.shape} {pixels.dtype}")
    outs = []
    for i in range(0, len(pixels), batch_size):
        outs.append(session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(pixels[i : i + batch_size])}))
    return {name: np.concatenate([o[j] for o in outs]).astype(np.float32) for j, name in enumerate(OUTPUT_NAMES)}


def expand_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files and folders (their images, sorted) -> image files. Errors name the path."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise FsacError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {p}")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FsacError(f"image or folder not found: {p}")
    return out


@dataclass
class ScoreSet:
    """Outputs of one model for a list of images. Arrays are (N,) float32; `logit` is the
    number that ranks and decides (`fsac.score`), `score` = sigmoid(logit) is for people."""

    names: list[str]
    score: np.ndarray
    logit: np.ndarray
    sim_normal: np.ndarray
    sim_anomalous: np.ndarray
    sha256: list[str] = field(default_factory=list)

    @classmethod
    def from_outputs(cls, names: Sequence, out: dict[str, np.ndarray], hashes: Sequence[str] | None = None
                     ) -> "ScoreSet":
        return cls([str(n) for n in names], *(out[k] for k in OUTPUT_NAMES), sha256=list(hashes or []))

    def __len__(self) -> int:
        return len(self.names)


def load_pixels(paths: Sequence[str | os.PathLike], spec: PreprocessSpec) -> np.ndarray:
    """Image files -> (N, S, S, 3) uint8 via `fsac.preprocess` (errors name the file)."""
    if not paths:
        raise FsacError("no images given")
    return np.stack([preprocess_file(p, spec) for p in paths])


def score_model_file(model_path: str | os.PathLike, images: Sequence[str | os.PathLike], batch_size: int = 8,
                     threads: int | None = None, progress: Callable[[int], None] | None = None,
                     skipped: list[dict] | None = None) -> tuple[ScoreSet, ModelInfo]:
    """Verify and load a model file, score the image files -> (ScoreSet, ModelInfo).

    Images are decoded chunk by chunk, so memory stays bounded for large folders. With
    `skipped` (a list), an unreadable image is left out and recorded there as
    {"file", "reason"} (all of them, as `fsac eval` does); without it, the first one raises.
    """
    data, info = load_model_file(model_path)
    session = make_session(data, threads)
    paths = [Path(p) for p in images]
    if not paths:
        raise FsacError("no images to score")
    parts, kept = [], []
    for i in range(0, len(paths), batch_size):
        chunk = paths[i : i + batch_size]
        pixels, good = [], []
        for p in chunk:
            try:
                pixels.append(preprocess_file(p, info.preprocess))
                good.append(p)
            except ImageDecodeError as e:
                if skipped is None:
                    raise
                skipped.append({"file": str(p), "reason": e.reason})
        if pixels:
            parts.append(run_session(session, np.stack(pixels), batch_size))
            kept.extend(good)
        if progress:
            progress(len(chunk))
    if not kept:
        mine = skipped[len(skipped) - len(paths):] if skipped else []  # this call's, not a caller's earlier ones
        raise FsacError(f"none of the {len(paths)} images could be read (first: {mine[0]['file']}: "
                        f"{mine[0]['reason']})" if mine else "no images to score")
    out = {k: np.concatenate([p[k] for p in parts]) for k in OUTPUT_NAMES}
    hashes = [sha256_file(p) for p in kept]
    return ScoreSet.from_outputs(kept, out, hashes), info
