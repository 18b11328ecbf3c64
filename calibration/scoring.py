"""Score images with an fsac model file through ONNX Runtime (no torch, no onnx).

Calibration must see the scores the line will see, so it runs the very file the runtime
loads (seal verified by `fsac.modelfile.load_model_file`) on pixels from the one
preprocessing implementation (`fsac.preprocess`). Torch-free, so `fsac calibrate` also
runs on the edge box.

    scores = score_model_file("model.onnx", ["good/000.png", ...])
    scores.score      (N,) float32 anomaly scores AS
    scores.sim_pos    (N,) float32, scores.sim_neg (N,) float32
    scores.names      image paths as given, scores.sha256 their content hashes
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fsac.errors import FsacError
from fsac.io import sha256_file
from fsac.modelfile import INPUT_NAME, OUTPUT_NAMES, ModelInfo, load_model_file
from fsac.preprocess import IMAGE_SUFFIXES, PreprocessSpec, list_images, preprocess_file


def make_session(model: bytes | str | os.PathLike, threads: int | None = None, providers: Sequence[str] | None = None):
    """onnxruntime.InferenceSession on CPU by default, all graph optimisations on.

    threads: intra-op threads (None = onnxruntime's default, one per physical core).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise FsacError("onnxruntime is not installed (pip install onnxruntime)") from None
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: ORT warns about unused initializers, etc.
    if threads:
        so.intra_op_num_threads = int(threads)
    data = model if isinstance(model, (bytes, bytearray)) else str(model)
    try:
        return ort.InferenceSession(data, so, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as e:  # onnxruntime raises its own exception types per failure
        src = "<model bytes>" if isinstance(model, (bytes, bytearray)) else str(model)
        raise FsacError(f"{src}: onnxruntime cannot load the model ({str(e).splitlines()[0][:200]})") from None


def run_session(session, pixels: np.ndarray, batch_size: int = 8) -> dict[str, np.ndarray]:
    """(N, S, S, 3) uint8 -> {"score", "sim_pos", "sim_neg"}: (N,) float32 each."""
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
    """Scores of a list of images by one model. Arrays are (N,) float32."""

    names: list[str]
    score: np.ndarray
    sim_pos: np.ndarray
    sim_neg: np.ndarray
    sha256: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)


def load_pixels(paths: Sequence[str | os.PathLike], spec: PreprocessSpec) -> np.ndarray:
    """Image files -> (N, S, S, 3) uint8 via `fsac.preprocess` (errors name the file)."""
    if not paths:
        raise FsacError("no images given")
    return np.stack([preprocess_file(p, spec) for p in paths])


def score_pixels(session, pixels: np.ndarray, names: Sequence[str], batch_size: int = 8,
                 hashes: Sequence[str] | None = None) -> ScoreSet:
    out = run_session(session, pixels, batch_size)
    return ScoreSet(list(map(str, names)), out["score"], out["sim_pos"], out["sim_neg"], list(hashes or []))


def score_model_file(model_path: str | os.PathLike, images: Sequence[str | os.PathLike], batch_size: int = 8,
                     threads: int | None = None, progress: Callable[[int], None] | None = None
                     ) -> tuple[ScoreSet, ModelInfo]:
    """Verify and load a model file, score the image files -> (ScoreSet, ModelInfo).

    Images are decoded chunk by chunk, so memory stays bounded for large folders.
    """
    data, info = load_model_file(model_path)
    session = make_session(data, threads)
    paths = [Path(p) for p in images]
    if not paths:
        raise FsacError("no images to score")
    parts = []
    for i in range(0, len(paths), batch_size):
        chunk = paths[i : i + batch_size]
        parts.append(run_session(session, load_pixels(chunk, info.preprocess), batch_size))
        if progress:
            progress(len(chunk))
    out = {k: np.concatenate([p[k] for p in parts]) for k in OUTPUT_NAMES}
    hashes = [sha256_file(p) for p in paths]
    return ScoreSet([str(p) for p in paths], out["score"], out["sim_pos"], out["sim_neg"], hashes), info
