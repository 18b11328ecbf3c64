"""Loading the served model for fsac-run: the ONNX Runtime backend, the choice of backend
(`load_model`), warm-up, and the model handle.

The other backends live beside it, each imported only when chosen: TensorRT engines
(runtime/tensorrt_backend.py), OpenVINO (runtime/openvino_backend.py), the measured choice
of `model.backend: auto` (runtime/policy.py). What they share (the Backend protocol, the
input checks that refuse at start a model whose graph disagrees with the preprocessing in
its metadata, batching) is runtime/backend_base.py.

`ModelHandle` owns the model being served and swaps it atomically on SIGHUP: the new file is
read, verified and turned into a ready backend first; only then is the reference replaced,
between two batches. A file that fails any check leaves the old model serving.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fsac.errors import FsacError
from fsac.int8_saturation import saturation_warning
from fsac.modelfile import INPUT_NAME, OUTPUT_NAMES, ModelInfo, inspect_model_file, load_engine_file, load_model_file
from fsac.runner import make_session
from fsac.score import logit_from_score, score_from_logit

from .config import ModelConfig

log = logging.getLogger("fsac.runtime")

SATURATED_LOGIT = 13.8  # |z| beyond which sigmoid(z) is within 1e-6 of 0 or 1

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")

# Short names accepted in model.providers, and the default preference: the fastest
# provider this onnxruntime build offers, CPU always last as the fallback.
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}
DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

from .backend_base import Outputs, check_batch, check_input_dims, split_batch


# --------------------------------------------------------------------------- ONNX Runtime


def choose_providers(requested: list[str], available: list[str]) -> list[str]:
    """Resolve model.providers against what this onnxruntime build offers."""
    if not requested:
        chosen = [p for p in DEFAULT_PROVIDERS if p in available]
        return chosen or list(available)
    chosen = []
    for name in requested:
        full = PROVIDER_ALIASES.get(name.lower(), name)
        if full not in available:
            raise FsacError(
                f"model.providers: {name} ({full}) is not available in this onnxruntime build "
                f"(available: {', '.join(available)}); install onnxruntime-gpu / the Jetson onnxruntime "
                "wheel, or leave model.providers empty to pick the best available")
        if full not in chosen:
            chosen.append(full)
    return chosen


class OnnxBackend:
    """onnxruntime InferenceSession built from exactly the model that passed the seal check.

    `model` is either the verified bytes, or the path of an already open, verified file
    descriptor (/proc/self/fd/N, see `load_model`): a file swapped at its path between check
    and load cannot slip through either way, and the descriptor path spares holding a 470 MB
    copy of the file in Python while onnxruntime builds its own.
    """

    name = "onnxruntime"

    def __init__(self, model: bytes | str, info: ModelInfo, *, providers: list[str] | None = None,
                 batch_size: int = 4, threads: int = 0, spin_wait: bool = False, cpu_prepack: bool = True) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise FsacError("model.backend=onnxruntime: the onnxruntime package is not installed "
                            "(pip install 'fsac[runtime]'; on a Jetson use the JetPack onnxruntime-gpu wheel)"
                            ) from None
        self.info = info
        chosen = choose_providers(list(providers or []), list(ort.get_available_providers()))
        # The one session builder calibration uses too, so calibration sees the logits the line
        # sees. Spinning worker threads burn the cores the decode threads need (measured on a
        # 2-core CPU: ~70-78 % of the bare backend with spinning, ~85-96 % without); pre-packed
        # weights take the unpacked ones' place, a little larger (model.cpu_prepack).
        self.cpu_prepack = bool(cpu_prepack)
        self.session = make_session(model, threads or None, chosen, spin_wait=spin_wait, cpu_prepack=self.cpu_prepack,
                                    source=info.source)
        self.providers = list(self.session.get_providers())
        inputs = {i.name: i for i in self.session.get_inputs()}
        if INPUT_NAME not in inputs:
            raise FsacError(f"{info.source}: model has no input {INPUT_NAME!r} (has {sorted(inputs)}); "
                            "not an fsac export")
        inp = inputs[INPUT_NAME]
        if inp.type != "tensor(uint8)":
            raise FsacError(f"{info.source}: input {INPUT_NAME!r} is {inp.type}; the fsac contract is uint8")
        self.fixed_batch = check_input_dims(list(inp.shape), info, "graph")
        outputs = [o.name for o in self.session.get_outputs()]
        missing = [n for n in OUTPUT_NAMES if n not in outputs]
        if missing:
            raise FsacError(f"{info.source}: model lacks outputs {missing} (has {outputs}); not an fsac export")
        self.max_batch = min(batch_size, self.fixed_batch) if self.fixed_batch else batch_size

    def infer(self, batch: np.ndarray) -> Outputs:
        check_batch(batch, self.info.image_size)
        parts: list[list[np.ndarray]] = [[] for _ in OUTPUT_NAMES]
        for chunk, n in split_batch(batch, self.max_batch, self.fixed_batch):
            outs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: chunk})
            for k, out in enumerate(outs):
                arr = np.asarray(out, dtype=np.float32).reshape(-1)
                if arr.shape[0] != chunk.shape[0]:
                    raise FsacError(f"{self.info.source}: output {OUTPUT_NAMES[k]!r} has {arr.shape[0]} values "
                                    f"for {chunk.shape[0]} frames")
                parts[k].append(arr[:n])
        return {name: np.concatenate(p) for name, p in zip(OUTPUT_NAMES, parts)}

    def close(self) -> None:
        self.session = None  # onnxruntime frees the session with the last reference


def prepack_text(on: Any) -> str:
    """", pre-packed weights" for an ONNX Runtime session that keeps them; "" otherwise."""
    return ", pre-packed weights" if on is True else ""


# --------------------------------------------------------------------------- model handle


def streams_text(n: Any) -> str:
    """", 2 streams" for OpenVINO's streams as compiled (model.openvino.streams resolved,
    runtime/config.py); "" for a backend without streams."""
    return f", {n} stream{'s' if n != 1 else ''}" if isinstance(n, int) and n > 0 else ""


@dataclass(frozen=True)
class LoadedModel:
    """One model ready to serve: verified file, backend, and the threshold in force."""

    info: ModelInfo
    backend: Any  # Backend
    logit_threshold: float  # the decision threshold (fsac.score.is_defective)
    threshold_source: str  # "model file" or "config"
    size_bytes: int
    loaded_at: float
    selection: Any = None  # fsac.runtime.policy.Selection when backend: auto measured the candidates
    warnings: tuple[str, ...] = ()  # said at load (log) and by --check

    @property
    def sha256(self) -> str:
        return self.info.seal

    @property
    def threshold(self) -> float:
        """The threshold in score units, for display (sigmoid of the logit threshold)."""
        return score_from_logit(self.logit_threshold)

    @property
    def name(self) -> str:
        return self.info.name

    def describe(self) -> str:
        return (f"{self.name} (sha256 {self.sha256[:12]}, arch {self.info.arch}, object {self.info.object_name}, "
                f"input {self.info.image_size}x{self.info.image_size}, logit threshold {self.logit_threshold:.4g} "
                f"(score {self.threshold:.6g}) from "
                f"{self.threshold_source}, backend {self.backend.name} {','.join(self.backend.providers)}, "
                f"batch <= {self.backend.max_batch}{streams_text(getattr(self.backend, 'streams', None))}"
                f"{prepack_text(getattr(self.backend, 'cpu_prepack', None))})"
                + (f"; {self.selection.summary()}" if self.selection is not None else ""))


def backend_kind(cfg: ModelConfig) -> str:
    if cfg.backend != "auto":
        return cfg.backend
    if Path(cfg.path).suffix.lower() in ENGINE_SUFFIXES:
        return "tensorrt"
    # auto with calibration images: measure the candidates on this machine (fsac.runtime.policy)
    return "measured" if cfg.calibration_images else "onnxruntime"


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Read and verify the model file, check it against the config, build its backend."""
    kind = backend_kind(cfg)
    fd = None
    if kind == "tensorrt":
        data, info, _sidecar = load_engine_file(cfg.path)
        size = len(data)
    elif os.path.isdir("/proc/self/fd"):
        # Verify and load through one open descriptor: the same inode is checked and loaded
        # even if the path is replaced in between, and the file is streamed, never held whole.
        try:
            fd = os.open(cfg.path, os.O_RDONLY)
        except FileNotFoundError:
            raise FsacError(f"model file not found: {cfg.path}") from None
        except IsADirectoryError:
            raise FsacError(f"model path is not a file: {cfg.path}") from None
        except OSError as e:
            raise FsacError(f"cannot open model file {cfg.path}: {e.strerror}") from None
        data = f"/proc/self/fd/{fd}"
        size = os.fstat(fd).st_size
    else:
        data, info = load_model_file(cfg.path)
        size = len(data)
    try:
        if fd is not None:
            info = inspect_model_file(data, source=str(cfg.path))
        return _build_loaded(cfg, kind, data, info, size)
    finally:
        if fd is not None:
            os.close(fd)


def _build_loaded(cfg: ModelConfig, kind: str, data: bytes | str, info: ModelInfo, size: int) -> LoadedModel:
    if cfg.image_size is not None and info.image_size != cfg.image_size:
        raise FsacError(f"{info.source}: model input size is {info.image_size} but model.image_size is "
                        f"{cfg.image_size}; this model was built for a different input size")
    if cfg.logit_threshold is not None and cfg.threshold is not None:
        raise FsacError("model.threshold and model.logit_threshold are both set; set one (logit units preferred)")
    if cfg.logit_threshold is not None:
        threshold, origin = cfg.logit_threshold, "config"
    elif cfg.threshold is not None:
        try:
            threshold, origin = logit_from_score(cfg.threshold), "config (score units)"
        except ValueError as e:
            raise FsacError(f"model.threshold: {e}; set model.logit_threshold instead") from None
        if abs(threshold) > SATURATED_LOGIT:
            # Within ~1e-6 of 0 or 1 the score saturates: one digit more or less in what a person
            # wrote moves the threshold by whole logits (0.999999 is 13.8, 0.9999999 is 16.1).
            log.warning("model.threshold %r is logit %.4g, where the score saturates and its digits decide "
                        "little; set model.logit_threshold: %.6g instead", cfg.threshold, threshold, threshold)
    elif info.logit_threshold is not None:
        threshold, origin = info.logit_threshold, "model file"
    else:
        raise FsacError(f"{info.source}: the model has no decision threshold (fsac.logit_threshold is empty); "
                        "run `fsac calibrate` on it, or set model.logit_threshold in the config")
    if not math.isfinite(threshold):
        raise FsacError(f"{info.source}: logit threshold {threshold} is not a finite number")
    selection = None
    if kind == "tensorrt":
        from .tensorrt_backend import TensorRTBackend

        backend: Any = TensorRTBackend(data, info, batch_size=cfg.batch_size)
    elif kind == "measured":
        from .policy import build_auto

        backend, selection = build_auto(cfg, data, info, float(threshold))
    elif kind == "openvino":
        from .openvino_backend import OpenVinoBackend

        ov = cfg.openvino
        backend = OpenVinoBackend(data, info, precision=ov.precision, device=ov.device, threads=cfg.threads,
                                  streams=ov.streams, batch_size=cfg.batch_size, cache_dir=ov.cache_dir)
    else:
        backend = OnnxBackend(data, info, providers=cfg.providers, batch_size=cfg.batch_size, threads=cfg.threads,
                              spin_wait=cfg.spin_wait, cpu_prepack=cfg.cpu_prepack)
    if cfg.warm_up:
        warm_up(backend, info.image_size)
    if selection is not None:  # backend auto: the file it serves may be model.int8_path
        warnings = tuple(selection.warnings)
    else:
        warnings = tuple(w for w in [saturation_warning(info.metadata, info.source, runs_on_cpu(backend))] if w)
    for w in warnings:
        log.warning("%s", w)
    return LoadedModel(info=info, backend=backend, logit_threshold=float(threshold), threshold_source=origin,
                       size_bytes=size, loaded_at=time.time(), selection=selection, warnings=warnings)


def runs_on_cpu(backend: Any) -> bool:
    """Whether `backend` may compute on this machine's CPU (ONNX Runtime's CPU provider first,
    or an OpenVINO device list naming the CPU); TensorRT and GPU providers do not."""
    device = getattr(backend, "device", None)
    if isinstance(device, str):  # OpenVINO: "CPU", "GPU", "AUTO:GPU,CPU", "AUTO"
        return "CPU" in device or device == "AUTO"
    providers = list(getattr(backend, "providers", None) or [])
    return bool(providers) and providers[0] == "CPUExecutionProvider"


def warm_up_sizes(max_batch: int) -> list[int]:
    """Batch sizes to run once at load: every size up to 8, then powers of two, then max_batch.
    The scorer forms batches of any size up to max_batch (what happens to be ready)."""
    sizes = list(range(1, min(max_batch, 8) + 1))
    p = 16
    while p < max_batch:
        sizes.append(p)
        p *= 2
    if max_batch not in sizes:
        sizes.append(max_batch)
    return sizes


def warm_up(backend: Any, image_size: int) -> float:
    """Run each batch size in `warm_up_sizes` once on black frames; returns the seconds it took.
    A failure here is a failure to load: better at start than on the first part of the shift."""
    t0 = time.perf_counter()
    for n in warm_up_sizes(backend.max_batch):
        backend.infer(np.zeros((n, image_size, image_size, 3), np.uint8))
    seconds = time.perf_counter() - t0
    log.debug("warm-up of batch sizes 1..%d: %.2f s", backend.max_batch, seconds)
    return seconds


class ModelHandle:
    """The model being served. Readers take `current` once per batch; `reload` swaps it."""

    def __init__(self, cfg: ModelConfig, model: LoadedModel | None = None) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        self._current = model or load_model(cfg)

    @property
    def current(self) -> LoadedModel:
        with self._lock:
            return self._current

    def reload(self) -> bool:
        """Load the model file again; swap only if every check passes. Returns whether it swapped."""
        old = self.current
        try:
            new = load_model(self.cfg)
        except FsacError as e:
            log.error("model reload refused, still serving %s: %s", old.name, e)
            return False
        except Exception as e:  # a backend failing in an unforeseen way must not stop the line
            log.exception("model reload failed, still serving %s: %s", old.name, e)
            return False
        with self._lock:
            self._current = new
        if new.sha256 == old.sha256:
            log.info("model reloaded (unchanged file): %s", new.describe())
        else:
            log.info("model reloaded: %s -> %s", old.sha256[:12], new.describe())
        return True

    def switch(self, path: str) -> bool:
        """Serve another model file (the live view's re-calibrated model), checked as `reload`
        checks: the old model keeps running if the new file is refused. Later reloads read it."""
        old_cfg = self.cfg
        self.cfg = old_cfg.model_copy(update={"path": str(path)})
        if self.reload():
            return True
        self.cfg = old_cfg
        return False
