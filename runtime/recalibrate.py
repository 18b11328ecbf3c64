"""Re-calibration on the edge box, started from the live view; activation of its result.

The job is `fsac calibrate` itself (torch-free: ONNX Runtime on the model file), run in a
child process at low CPU priority so it cannot take the GIL or the cores from the line:

    fsac calibrate MODEL --normal <live.calibration_images> --feedback <live.feedback_dir>
                   --alpha A --out MODEL-DIR/<stem>.recal-<UTC>.onnx --force --report ...

`--feedback` adds the frames marked "False alarm" (good parts the model flagged) to the
original calibration set. The new model is a new sealed file beside the old one; the old
file is never touched. Activation swaps the served model the way SIGHUP does (the new file
is verified and loaded first; if anything fails the old model keeps running) and lasts
until the daemon restarts: point model.path at the new file to keep it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fsac.errors import FsacError
from fsac.feedback import good_images

from .liveview import expected_false_alarms, threshold_info

log = logging.getLogger("fsac.runtime")

DEFAULT_ALPHA = 0.01


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".onnx",):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.split(".recal-")[0]


def _confirmed_defects(images: list[Path], feedback_dir: Path) -> list[Path]:
    """The images that are frames marked Confirmed defect: inside that label's folder, or the
    same bytes (a copy; the size is compared first, so few files are hashed)."""
    from fsac.feedback import CONFIRMED_DEFECT, defect_images
    from fsac.io import sha256_file

    folder = (feedback_dir / CONFIRMED_DEFECT).resolve()
    frames = defect_images(feedback_dir)
    sizes: dict[int, set[str] | None] = {}
    for f in frames:
        sizes.setdefault(f.stat().st_size, None)
    found = []
    for p in images:
        if p.parent == folder:
            found.append(p)
            continue
        size = p.stat().st_size
        if size not in sizes:
            continue
        if sizes[size] is None:  # hash the marked frames of this size once
            sizes[size] = {sha256_file(f) for f in frames if f.stat().st_size == size}
        if sha256_file(p) in sizes[size]:
            found.append(p)
    return found


class RecalJob:
    """At most one re-calibration at a time; its state is what the page shows."""

    def __init__(self, calibration_images: list[str], feedback_dir: str, alpha: float | None) -> None:
        self.calibration_images = list(calibration_images)
        self.feedback_dir = feedback_dir
        self.alpha = alpha
        self._lock = threading.Lock()
        self.state: dict[str, Any] = {"status": "idle"}
        self._proc: subprocess.Popen | None = None
        self.outputs: set[str] = set()  # model files this daemon produced: the only ones it activates
        self.activated: set[str] = set()  # of those, the ones ever served (a recipe may go back to one)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.state)

    def start(self, model: Any) -> dict[str, Any]:
        """Start re-calibrating the served model (a LoadedModel); returns the new state."""
        if not self.calibration_images:
            raise FsacError("live.calibration_images is empty: set it to the original calibration images "
                            "(files or folders on this box) to re-calibrate here")
        missing = [p for p in self.calibration_images if not Path(p).exists()]
        if missing:
            raise FsacError(f"live.calibration_images: not found: {', '.join(missing)}")
        info = threshold_info(model.info.metadata)
        alpha = self.alpha if self.alpha is not None else float(info.get("alpha") or DEFAULT_ALPHA)
        self._check_images(alpha, model.info.metadata)
        with self._lock:
            if self.state.get("status") == "running":
                raise FsacError("a re-calibration is already running")
            source = Path(model.info.source)
            stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
            out = source.with_name(f"{_stem(source)}.recal-{stamp}.onnx")
            k = 2
            while out.exists() or str(out) in self.outputs:  # two within a second: never overwrite one
                out, k = source.with_name(f"{_stem(source)}.recal-{stamp}-{k}.onnx"), k + 1
            if not os.access(source.parent, os.W_OK):
                raise FsacError(f"cannot write the new model beside the old one: {source.parent} is not writable")
            report = out.with_name(out.name + ".report.json")
            n_good = len(good_images(self.feedback_dir))
            cmd = [sys.executable, "-m", "fsac.cli", "calibrate", str(source), "--alpha", repr(alpha),
                   "--out", str(out), "--force", "--report", str(report), "--plot", str(out) + ".scores.png",
                   "--quiet", "--feedback", self.feedback_dir]
            for p in self.calibration_images:
                cmd += ["--normal", str(p)]
            self.state = {"status": "running", "started": time.time(), "model": str(out), "alpha": alpha,
                          "feedback_images": n_good, "old_logit_threshold": model.logit_threshold,
                          "old_threshold": model.threshold,
                          "old_expected_fpr": expected_false_alarms(model.info.metadata),
                          "old_model": model.name}
            self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                          preexec_fn=lambda: os.nice(10))
            threading.Thread(target=self._wait, args=(self._proc, out, report), name="fsac-recal",
                             daemon=True).start()
            log.info("re-calibration started: %s (%d feedback images, alpha %g)", out.name, n_good, alpha)
            return dict(self.state)

    def _check_images(self, alpha: float, metadata: dict[str, str]) -> None:
        """What `fsac calibrate` would refuse only after scoring every image, refused before the
        job starts: too few normal images for alpha (counted as it counts them: without the
        model's own training shots), and frames the operator marked Confirmed defect among the
        calibration images (calibrated as normal, a defect raises the threshold over itself;
        `--feedback` adds only the False alarm ones, fsac.feedback)."""
        from fsac.runner import expand_images
        from fsac.threshold import min_normal_images, training_shots

        try:
            images = list(dict.fromkeys(p.resolve() for p in expand_images(self.calibration_images)))
        except FsacError as e:
            raise FsacError(f"live.calibration_images: {e}") from None
        defects = _confirmed_defects(images, Path(self.feedback_dir))
        if defects:
            raise FsacError(f"live.calibration_images: {len(defects)} of its images are frames marked Confirmed "
                            f"defect in {self.feedback_dir} ({', '.join(p.name for p in defects[:3])}"
                            f"{', ...' if len(defects) > 3 else ''}); take them out of the normal images")
        marked = [p for p in good_images(self.feedback_dir) if p.resolve() not in set(images)]
        shots = training_shots(images + marked, metadata)
        n, need = len(images) + len(marked) - len(shots), min_normal_images(alpha)
        if n < need:
            raise FsacError(f"live.calibration_images: {n} normal images found ({len(images)} calibration images, "
                            f"{len(marked)} marked False alarm"
                            + (f", less {len(shots)} that are the model's training shots" if shots else "")
                            + f"); alpha {alpha:g} needs at least {need} (add calibration images, or set a larger "
                            "live.alpha)")

    def _wait(self, proc: subprocess.Popen, out: Path, report: Path) -> None:
        _, err = proc.communicate()
        with self._lock:
            if proc.returncode != 0 or not report.exists():
                lines = [ln for ln in (err or "").splitlines() if ln.strip()]
                self.state.update(status="failed", error=(lines[-1] if lines else f"exit status {proc.returncode}"))
                log.error("re-calibration failed: %s", self.state["error"])
                return
            try:
                rep = json.loads(report.read_text())
            except (OSError, ValueError) as e:
                self.state.update(status="failed", error=f"cannot read {report}: {e}")
                return
            res = rep.get("result", {})
            self.state.update(status="done", logit_threshold=rep.get("logit_threshold"),
                              threshold=rep.get("threshold"), expected_fpr=res.get("expected_fpr"),
                              n_normal=res.get("n_normal"), seal=rep.get("seal"), notes=rep.get("notes", []),
                              warnings=[ln[len("warning: "):] for ln in (err or "").splitlines()
                                        if ln.startswith("warning: ")])
            self.outputs.add(str(out))
            log.info("re-calibration done: %s, logit threshold %s (was %s)", out.name, rep.get("logit_threshold"),
                     self.state.get("old_logit_threshold"))
            self._prune(keep={str(out)} | self.activated)

    def _prune(self, keep: set[str]) -> None:
        """Remove this daemon's earlier re-calibrated models that were never activated, with
        their report and plot: each is a whole model file (471 MB for ViT-B-16-plus-240), the
        page offers only the latest, and an operator pressing Re-calibrate a few times a
        shift would fill the box's disk. The newest and every one ever activated (served now,
        or by a recipe the line may switch back to) are kept; files of earlier daemon runs
        are not this job's to remove."""
        for path in sorted(self.outputs - keep):
            freed = 0
            for f in (Path(path), Path(path + ".report.json"), Path(path + ".scores.png")):
                try:
                    freed += f.stat().st_size
                    f.unlink()
                except FileNotFoundError:
                    pass
                except OSError as e:
                    log.warning("re-calibration: cannot remove the superseded %s: %s", f, e)
            self.outputs.discard(path)
            log.info("re-calibration: removed the superseded %s (never activated, %.1f MB)", Path(path).name,
                     freed / 1e6)

    def activate(self, handle: Any, path: str) -> dict[str, Any]:
        """Serve the re-calibrated model `path` (verified first; the old one kept if it fails)."""
        if path not in self.outputs:
            raise FsacError(f"{path} is not a model this daemon re-calibrated; only those can be activated here")
        if handle.cfg.logit_threshold is not None or handle.cfg.threshold is not None:
            raise FsacError("model.logit_threshold / model.threshold is set in the config and would override the "
                            "new threshold; remove it to activate a re-calibrated model")
        if not handle.switch(path):
            raise FsacError(f"{Path(path).name} was refused (see the log); still serving the old model")
        with self._lock:
            self.activated.add(path)
            if self.state.get("model") == path:
                self.state["status"] = "activated"
        return self.snapshot()

    def close(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
