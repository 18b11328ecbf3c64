"""`model.backend: auto` with calibration images: the fastest backend that agrees with fp32.

On the machine it runs on, every candidate (ONNX Runtime fp32, the reference; OpenVINO
f32 / bf16; and, given `model.int8_path`, each INT8 file listed on ONNX Runtime and OpenVINO)
is built from the verified sealed file(s), run on the calibration images, and timed per
image at the batch the daemon will form: batch 1 where each frame's latency counts (triggers,
cameras, watch folders), `model.batch_size` where frames queue up (a folder or video in
every-frame mode, where OpenVINO runs two streams: timed at batch 1 it used one of them and
measured twice its per-frame time: 678.8 ms for OpenVINO f32 on the AVX2 EPYC, 354 in
`fsac bench export`). A candidate qualifies only if its anomaly *logits* agree with the fp32 reference's
on those images (the score sigmoid(z) saturates, so it is never compared):

  Spearman rank correlation  >= MIN_SPEARMAN (0.99)
  verdict agreement          >= MIN_VERDICT (99 %) at the model's decision threshold
  max |Δ logit| / spread     <= MAX_REL_DLOGIT, spread = max - min of the fp32 logits
  on at least MIN_IMAGES (20) images, every logit finite    (fsac.agreement: the same bounds
                                                             as `fsac quantize`)

The fastest qualifying candidate is served; the reference always qualifies, so the policy
can never make things worse than fp32. The whole comparison (times, figures, reasons) is
kept in `Selection`, logged, shown by `--check` and exported as metrics labels.

With random weights the logits barely move between images (the spread is tiny), so the
bounds say little; the selection then carries a note saying so.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from fsac.agreement import (MAX_REL_DLOGIT, MIN_SPEARMAN, MIN_VERDICT, LogitAgreement, agreement_failures,
                            logit_agreement)
from fsac.errors import FsacError
from fsac.procmem import give_back_memory, rss_bytes

log = logging.getLogger("fsac.runtime")

TIMING_RUNS = 5
MAX_IMAGES = 32


# The comparison and its bounds are the core's (fsac/agreement.py), shared with `fsac
# quantize` and `fsac bench export`.
def failures(a: LogitAgreement, min_spearman: float = MIN_SPEARMAN, min_verdict: float = MIN_VERDICT,
             max_rel: float = MAX_REL_DLOGIT) -> list[str]:
    """Why a candidate does not qualify (empty: it does)."""
    return agreement_failures(a, min_spearman, min_verdict, max_rel)


@dataclass
class CandidateResult:
    name: str
    ms_per_image: float | None = None  # median call time / batch, at Selection.timed_batch
    memory_bytes: int | None = None  # resident memory the backend added (built, run, timed)
    agreement: dict[str, Any] | None = None
    qualified: bool = False
    reasons: list[str] = field(default_factory=list)


@dataclass
class Selection:
    chosen: str
    reference: str
    images: int
    bounds: dict[str, float]
    candidates: list[CandidateResult]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # about the file served (fsac-run logs them at load)
    timed_batch: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        parts = []
        for c in self.candidates:
            t = "n/a" if c.ms_per_image is None else f"{c.ms_per_image:.1f} ms"
            if c.memory_bytes is not None:
                t += f", +{c.memory_bytes / 2**20:.0f} MiB"
            why = "ok" if c.qualified else "; ".join(c.reasons)
            parts.append(f"{c.name} {t} ({why})")
        at = "batch 1" if self.timed_batch == 1 else f"batch {self.timed_batch}, per image (frames queue up)"
        text = (f"auto chose {self.chosen} on {self.images} calibration images, timed at {at}: "
                + ", ".join(parts))
        return text + "".join(f"; note: {n}" for n in self.notes)


def _time_per_image(infer: Callable[[np.ndarray], Any], pixels: np.ndarray, runs: int, batch: int = 1) -> float:
    """Median ms per image of `runs` calls on batches of `batch` calibration images, each after
    the last candidate's spinning threads are quiet (model.spin_wait; fsac.cpu_quiet)."""
    from fsac.cpu_quiet import interleaved

    picks = np.resize(np.arange(len(pixels)), runs * batch)  # cycles through the images
    batches = [pixels[picks[i * batch:(i + 1) * batch]] for i in range(runs)]
    # one warm-up call first (it allocates, packs, or JIT-compiles)
    times = interleaved({"candidate": infer}, batches, runs, warmup=1)["candidate"]
    return float(np.median(times) * 1e3 / batch)


def _memory_over(held: int | None, max_memory: int) -> str | None:
    """Why a backend holding `held` bytes is over model.max_backend_memory (None: it is not)."""
    if not max_memory or held is None or held <= max_memory:
        return None
    return f"holds {held / 2**20:.0f} MiB > model.max_backend_memory {max_memory / 2**20:.0f} MiB"


def _reference_failed(reference: str, what: str, why: str) -> None:
    """Without the reference's logits no candidate can be compared (nor served: the policy
    only ever serves what agrees with it), so its failure is the error, named as such; the
    other candidates are not even built (the reference is built first)."""
    raise FsacError(f"backend auto: the reference {reference} {what}, so no backend can be checked "
                    f"against it: {why}")


def select(candidates: dict[str, Callable[[], Any]], reference: str, pixels: np.ndarray,
           logits: Callable[[Any, np.ndarray], np.ndarray], logit_threshold: float | None,
           notes: list[str] | None = None, runs: int = TIMING_RUNS, batch: int = 1,
           max_memory: int = 0) -> tuple[Selection, Any]:
    """Build, run and time every candidate; return (selection, the chosen backend).

    candidates: name -> factory building a backend (reference first is not required);
    logits(backend, pixels) -> the logits of the images; batch: the batch each candidate is
    timed at (per image); max_memory: bytes a candidate's backend may hold (0: no limit; the
    resident memory it added, freed heap given back to the OS before each one is built, so
    the figure is its own). Only the fastest qualifying candidate so far stays open (before,
    every candidate stayed open until all were measured: each backend's memory at once).
    """
    if reference not in candidates:
        raise FsacError(f"backend auto: no reference candidate {reference!r}")
    pixels = pixels[:MAX_IMAGES]
    results: list[CandidateResult] = []
    best: tuple[CandidateResult, Any] | None = None  # the reference first: it always qualifies
    ref_logits = None
    order = [reference] + [n for n in candidates if n != reference]
    for name in order:
        res = CandidateResult(name=name)
        results.append(res)
        give_back_memory()  # what the last candidate freed, so this one's figure is its own
        before = rss_bytes()
        try:
            backend = candidates[name]()
        except FsacError as e:
            res.reasons.append(f"not available: {e}")
            if name == reference:
                _reference_failed(reference, "is not available", str(e))
            continue
        try:
            z = logits(backend, pixels)
            res.ms_per_image = _time_per_image(backend.infer, pixels, runs, min(batch, backend.max_batch))
            after = rss_bytes()
            if before is not None and after is not None:
                res.memory_bytes = max(0, after - before)
        except Exception as e:  # a candidate that crashes is skipped, never served
            res.reasons.append(f"failed: {type(e).__name__}: {e}")
            backend.close()
            if name == reference:
                _reference_failed(reference, f"failed on the calibration images ({len(pixels)})",
                                  f"{type(e).__name__}: {e}")
            continue
        over = _memory_over(res.memory_bytes, max_memory)
        if name == reference:
            ref_logits = z
            res.qualified = True  # whatever it holds: the policy never does worse than fp32
            if over:
                notes = [*(notes or []), f"the reference {name} itself {over}; it is served if nothing else qualifies"]
        else:
            a = logit_agreement(ref_logits, z, logit_threshold)
            res.agreement = asdict(a)
            res.reasons = failures(a)
            if over:
                res.reasons.append(over)
            res.qualified = not res.reasons
        if best is None or (res.qualified and res.ms_per_image < best[0].ms_per_image):
            if best is not None:
                best[1].close()
            best = (res, backend)
        else:
            backend.close()
    sel = Selection(chosen=best[0].name, reference=reference, images=int(len(pixels)),
                    bounds={"min_spearman": MIN_SPEARMAN, "min_verdict_agreement": MIN_VERDICT,
                            "max_rel_dlogit": MAX_REL_DLOGIT}, candidates=results, notes=list(notes or []),
                    timed_batch=int(batch))
    return sel, best[1]


# --------------------------------------------------------------------------- fsac-run wiring


def calibration_pixels(folder: str, info) -> np.ndarray:
    """The calibration images of model.calibration_images, preprocessed as the line does."""
    from fsac.preprocess import list_images, load_image, resize_crop

    try:
        files = list_images(folder)
    except FsacError as e:
        raise FsacError(f"model.calibration_images: {e}") from None
    if len(files) < 2:
        raise FsacError(f"model.calibration_images: {folder} holds {len(files)} images; backend auto needs >= 2")
    spec = info.preprocess
    return np.stack([resize_crop(load_image(f, spec), spec) for f in files[:MAX_IMAGES]])


def int8_paths(setting: str | list[str]) -> list[str]:
    """model.int8_path as a list of files ("" or [] : none)."""
    paths = [setting] if isinstance(setting, str) else list(setting)
    return [p for p in paths if p]


def _int8_files(cfg, info) -> list[tuple[str, bytes, Any]]:
    """The verified INT8 siblings (model.int8_path) of the fp32 file: (label, bytes, ModelInfo)
    each; the label tells the candidates of several files apart ("" for a single file)."""
    from pathlib import Path

    from fsac.modelfile import load_model_file

    paths = int8_paths(cfg.int8_path)
    seen: dict[str, str] = {}
    out = []
    for path in paths:
        key = str(Path(path).resolve())
        if key in seen:
            raise FsacError(f"model.int8_path: {path} is listed twice")
        seen[key] = path
        data, qinfo = load_model_file(path)
        if qinfo.checkpoint_sha256 != info.checkpoint_sha256:
            raise FsacError(f"model.int8_path: {path} was quantized from another checkpoint "
                            f"({qinfo.checkpoint_sha256[:12]}, model.path has {info.checkpoint_sha256[:12]})")
        if str(qinfo.precision).lower() != "int8":
            raise FsacError(f"model.int8_path: {path} is a {qinfo.precision} model, not INT8 (`fsac quantize`)")
        out.append((path, data, qinfo))
    names = [Path(p).name for p, _, _ in out]
    labels = ["" if len(out) == 1 else f" [{n if names.count(n) == 1 else p}]" for (p, _, _), n in zip(out, names)]
    return [(label, data, qinfo) for label, (_, data, qinfo) in zip(labels, out)]


def build_auto(cfg, data: bytes | str, info, logit_threshold: float) -> tuple[Any, Selection]:
    """model.backend: auto with model.calibration_images: measure the candidates, serve the best."""
    from .backends import OnnxBackend
    from .openvino_backend import OpenVinoBackend

    pixels = calibration_pixels(cfg.calibration_images, info)
    ov = cfg.openvino

    def ort(d, i):
        return lambda: OnnxBackend(d, i, providers=cfg.providers, batch_size=cfg.batch_size, threads=cfg.threads,
                                   spin_wait=cfg.spin_wait, cpu_prepack=cfg.cpu_prepack)

    def openvino(d, i, precision):
        return lambda: OpenVinoBackend(d, i, precision=precision, device=ov.device, threads=cfg.threads,
                                       streams=ov.streams, batch_size=cfg.batch_size, cache_dir=ov.cache_dir)

    candidates: dict[str, Callable[[], Any]] = {
        "onnxruntime fp32": ort(data, info),
        "openvino f32": openvino(data, info, "f32"),
        "openvino bf16": openvino(data, info, "bf16"),
    }
    served_file: dict[str, Any] = {}  # candidate name -> the INT8 file's ModelInfo
    for label, qdata, qinfo in _int8_files(cfg, info):
        for name, make in ((f"onnxruntime int8{label}", ort(qdata, qinfo)),
                           (f"openvino int8{label}", openvino(qdata, qinfo, "int8")),
                           (f"openvino int8_bf16{label}", openvino(qdata, qinfo, "int8_bf16"))):
            candidates[name] = make
            served_file[name] = qinfo
    notes = []
    if info.metadata.get("fsac.weights_random") == "true":
        notes.append("RANDOM backbone weights: the logits barely vary between images, so the agreement bounds "
                     "say little about agreement with real weights (see fsac bench export's feature cosine)")

    def logits(backend, px):
        return np.concatenate([np.asarray(backend.infer(px[i:i + backend.max_batch])["logit"], np.float64)
                               for i in range(0, len(px), backend.max_batch)])

    try:
        # Timed at the batch the daemon will form: full ones where the source's frames queue up.
        batch = cfg.batch_size if cfg._frames_queue else 1
        sel, backend = select(candidates, "onnxruntime fp32", pixels, logits, logit_threshold, notes, batch=batch,
                              max_memory=cfg.max_backend_memory)
    except FsacError as e:
        # The model's own failure, named with the settings that led to it (one line at start
        # and in --check, where the daemon would have stopped anyway).
        raise FsacError(f"model.backend auto: {str(e).removeprefix('backend auto: ')} "
                        f"(model.calibration_images={cfg.calibration_images})") from None
    qinfo = served_file.get(sel.chosen)
    if qinfo is not None:  # an INT8 file is served: its weights' bits matter
        from fsac.int8_saturation import saturation_warning

        from .backends import runs_on_cpu

        w = saturation_warning(qinfo.metadata, qinfo.source, runs_on_cpu(backend))
        if w:
            sel.warnings.append(w)
    for c in sel.candidates:
        log.info("backend auto: %s %s", c.name, "ok" if c.qualified else "; ".join(c.reasons))
    log.info("%s", sel.summary())
    return backend, sel
