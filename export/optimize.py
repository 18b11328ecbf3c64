"""Offline graph simplification, measured, and kept only where it pays.

Methods:
  "slim" (default): onnxslim - constant folding, dead-node removal, shape-op elimination,
         standard-op fusions. The result uses standard ONNX ops only, so TensorRT and the
         INT8 quantizer take it as well as ONNX Runtime.
  "ort":  onnxruntime.transformers optimizer (model_type "clip": LayerNorm / Gelu /
         attention fusion). Its fused ops live in the com.microsoft domain, which only ONNX
         Runtime runs: TensorRT engines cannot be built from such a graph.
  "none": keep the exported graph.

ONNX Runtime already applies its own fusions when it loads a graph (ORT_ENABLE_ALL), so on
CPU the offline pass mostly saves load time and gives TensorRT / the quantizer a smaller
graph; speed is measured anyway. The candidate replaces the exported graph only if (a)
parity with PyTorch still holds and (b) its batch-1 latency, measured alternating with the
original in the same process, is not worse than `SLOWER_MARGIN` (noise on a shared CPU).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fsac.errors import FsacError

METHODS = ("slim", "ort", "none")
SLOWER_MARGIN = 1.03  # candidate may be at most 3 % slower (measurement noise) and still be kept


@dataclass
class OptimizeReport:
    method: str
    kept: bool
    reason: str
    nodes_before: int
    nodes_after: int
    latency_before_s: float | None  # median, batch 1, ONNX Runtime CPU
    latency_after_s: float | None
    load_before_s: float | None  # InferenceSession creation
    load_after_s: float | None
    optimize_s: float
    parity_max_abs_diff: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def optimize_graph(model, method: str, num_heads: int | None = None, hidden_size: int | None = None):
    """onnx.ModelProto -> optimized onnx.ModelProto (metadata is re-applied by the caller)."""
    if method == "slim":
        try:
            import onnxslim
        except ImportError:
            raise FsacError("--optimize slim needs onnxslim (pip install onnxslim), or pass --optimize none") from None
        from fsac.export.weightless import attach_weights, detach_weights

        inputs = tuple(i.name for i in model.graph.input)
        stash = detach_weights(model)  # onnxslim's shape inference copies the model many times over
        slimmed = onnxslim.slim(model)
        attach_weights(slimmed, stash, inputs)
        return slimmed
    if method == "ort":
        import logging
        from onnxruntime.transformers.optimizer import optimize_model

        # The optimizer logs every failed symbolic shape inference at WARNING; not ours to fix.
        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        opt = optimize_model(model, model_type="clip", num_heads=num_heads or 0, hidden_size=hidden_size or 0,
                             opt_level=0, use_gpu=False)
        return opt.model
    raise FsacError(f"--optimize must be one of {', '.join(METHODS)}, got {method!r}")


def time_alternating(paths: dict[str, Path], pixels: np.ndarray, runs: int = 5, rounds: int = 2,
                     min_seconds: float = 0.25) -> tuple[dict[str, float], dict[str, float]]:
    """Median batch-1 latency (s) and first session-creation time (s) of each graph file,
    with one session alive at a time (each holds a copy of the weights: two at once would
    double the export's peak memory). Rounds alternate A, B, A, B so that load from other
    processes on a shared CPU hits both alike."""
    from fsac.procmem import give_back_memory

    times: dict[str, list[float]] = {k: [] for k in paths}
    loads: dict[str, float] = {}
    for _ in range(rounds):
        for k, p in paths.items():
            s, load_s = _timed_session(p)
            loads.setdefault(k, load_s)
            times[k].extend(_latencies(s, pixels, runs, min_seconds))
            del s
            give_back_memory()
    return {k: float(np.median(v)) for k, v in times.items()}, loads


def _latencies(session, pixels: np.ndarray, runs: int, min_seconds: float, warmup: int = 2) -> list[float]:
    feeds = {"image": np.ascontiguousarray(pixels)}
    first = 0.0
    for _ in range(warmup):
        t = time.perf_counter()
        session.run(None, feeds)
        first = max(first, time.perf_counter() - t)
    out = []
    for _ in range(max(runs, min(100, int(min_seconds / max(first, 1e-6))))):
        t = time.perf_counter()
        session.run(None, feeds)
        out.append(time.perf_counter() - t)
    return out


def _timed_session(model):
    from fsac.runner import make_session

    t = time.perf_counter()
    s = make_session(model, cpu_prepack=False)  # one copy of the weights per session
    return s, time.perf_counter() - t


def optimize_and_measure(model, method: str, pixels: np.ndarray,
                         parity: Callable[[Any], float], runs: int = 5,
                         num_heads: int | None = None, hidden_size: int | None = None):
    """Try `method` on `model` (a path to the graph file, serialized bytes, or an
    onnx.ModelProto), already parity-checked.

    Given a path or bytes it returns bytes. Memory: the export of a 471 MB model must fit on a
    small workstation, so with a path this holds one parsed copy of the graph while the
    optimiser runs, and then neither copy at all while the two graphs are timed (the timing
    sessions read scratch files; the chosen graph is read back at the end).

    parity(path or bytes) -> max |Δ logit| vs PyTorch; raises FsacError when over the tolerance.
    pixels: (1, S, S, 3) uint8, one real image for the timing.
    -> (model to keep, OptimizeReport).
    """
    import onnx

    from fsac.export.onnx_export import serialize

    if isinstance(model, (str, os.PathLike)):
        return _optimize_file(Path(model), method, pixels, parity, runs, num_heads, hidden_size)
    as_bytes = isinstance(model, (bytes, bytearray))
    if method == "none":
        n = len(onnx.load_from_string(bytes(model)).graph.node) if as_bytes else len(model.graph.node)
        return model, OptimizeReport("none", False, "not requested", n, n, None, None, None, None, 0.0)
    with tempfile.TemporaryDirectory(prefix="fsac-optimize-") as tmp:
        path = Path(tmp) / "graph.onnx"
        path.write_bytes(bytes(model) if as_bytes else serialize(model))
        keep = model
        del model
        data, report = _optimize_file(path, method, pixels, parity, runs, num_heads, hidden_size)
        if not report.kept:
            return keep, report
        return (data if as_bytes else onnx.load_from_string(data)), report


def _optimize_file(path: Path, method: str, pixels: np.ndarray, parity: Callable[[Any], float], runs: int,
                   num_heads: int | None, hidden_size: int | None):
    """optimize_and_measure on the graph file `path` -> (bytes of the graph kept, report)."""
    import onnx

    from fsac.procmem import give_back_memory
    from fsac.export.onnx_export import serialize

    # Weights stored as external data beside `path` stay there for slim (it sees shapes only);
    # the "ort" fusions read weight values, so they get the whole model in memory.
    work = onnx.load(str(path), load_external_data=(method == "ort"))  # optimizers may change their input
    n_before = len(work.graph.node)
    if method == "none":
        del work
        return path.read_bytes(), OptimizeReport("none", False, "not requested", n_before, n_before,
                                                 None, None, None, None, 0.0)
    t0 = time.perf_counter()
    try:
        candidate = optimize_graph(work, method, num_heads, hidden_size)
    except FsacError:
        raise
    except Exception as e:  # a failing optimizer must not fail the export: keep the plain graph
        del work
        return path.read_bytes(), OptimizeReport(
            method, False, f"optimizer failed: {type(e).__name__}: {str(e)[:160]}", n_before, n_before,
            None, None, None, None, time.perf_counter() - t0)
    opt_s = time.perf_counter() - t0
    n_after = len(candidate.graph.node)
    del work
    after_path = path.with_name(path.stem + ".optimised.onnx")
    try:
        after_path.write_bytes(serialize(candidate))
        del candidate
        give_back_memory()
        report = OptimizeReport(method, False, "", n_before, n_after, None, None, None, None, opt_s)
        try:  # parity first: its session is gone before the two timing sessions exist
            report.parity_max_abs_diff = parity(after_path)
        except FsacError as e:
            report.reason = f"parity lost after optimisation: {e}"
            return path.read_bytes(), report
        lat, loads = time_alternating({"before": path, "after": after_path}, pixels[:1], runs=runs)
        report.load_before_s, report.load_after_s = loads["before"], loads["after"]
        report.latency_before_s, report.latency_after_s = lat["before"], lat["after"]
        if lat["after"] > lat["before"] * SLOWER_MARGIN:
            report.reason = f"slower ({lat['after']:.4f} s vs {lat['before']:.4f} s at batch 1)"
            return path.read_bytes(), report
        report.kept = True
        report.reason = "parity holds and not slower"
        return after_path.read_bytes(), report
    finally:
        after_path.unlink(missing_ok=True)
