"""`fsac bench export`'s memory figures: each backend's peak resident memory in a fresh
subprocess (load + one batch), and `fsac export`'s own peak, run as a command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _vm_hwm_mib() -> float | None:
    from fsac.procmem import peak_rss_self

    hwm = peak_rss_self()
    if hwm is not None:
        return hwm / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _probe(kind: str, source: str, pixels_path: str, threads: int, fp32_source: str = "") -> None:
    """Subprocess entry: load one backend, run one batch, print peak RSS (MiB) as JSON."""
    pixels = np.load(pixels_path)
    if kind == "torch":
        import torch

        from fsac.train.checkpoint import load_checkpoint

        torch.set_num_threads(threads)
        model = load_checkpoint(source, device="cpu", quiet=True).deploy_model()
        with torch.no_grad():
            model(torch.from_numpy(pixels))
    elif kind.startswith("openvino:"):
        from fsac.modelfile import inspect_model_file
        from fsac.runtime.openvino_backend import OpenVinoBackend

        import dataclasses

        precision = kind.split(":", 1)[1]
        info = inspect_model_file(fp32_source) if fp32_source else inspect_model_file(source)
        info = dataclasses.replace(info, precision="int8" if precision.startswith("int8") else info.precision)
        b = OpenVinoBackend(source, info, precision=precision, threads=threads, batch_size=len(pixels))
        b.infer(pixels)
    else:
        from fsac.runner import make_session

        data = Path(source).read_bytes()
        s = make_session(data, threads)
        del data
        s.run(None, {"image": pixels})
    print(json.dumps({"peak_rss_mib": _vm_hwm_mib()}))


def peak_memory(kind: str, source: str, pixels: np.ndarray, threads: int, tmp: Path,
                fp32_source: str = "") -> float | None:
    px = tmp / "probe_pixels.npy"
    np.save(px, pixels)
    code = (f"from fsac.export.bench_memory import _probe; _probe({kind!r}, {source!r}, {str(px)!r}, {threads}, "
            f"{fp32_source!r})")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
        return float(json.loads(r.stdout.strip().splitlines()[-1])["peak_rss_mib"])
    except Exception:  # a failed probe leaves the figure empty; it must not sink the benchmark
        return None


def export_subprocess(ck_path: Path, out: Path, images: list[Path], optimize: str, tmp: Path) -> dict[str, Any]:
    """Run `fsac export` as a command; return its report with its peak RSS and the file size.

    `fsac export` traces in a child process and waits for it, so its peak is the larger of
    its own peak and (its resident memory while waiting + the child's peak); the export
    report carries both of those figures, the parent's own peak is measured here."""
    from fsac.procmem import peak_rss

    report = tmp / "export-report.json"
    args = ["export", str(ck_path), "-o", str(out), "--force", "--optimize", optimize, "--report", str(report),
            "--quiet", *[a for p in images for a in ("--check-images", str(p))]]
    hwm, _log = peak_rss("from fsac.cli import run; sys.argv = ['fsac'] + sys.argv[1:]; run()", args)
    exp = json.loads(report.read_text())
    parts = exp.get("peak_rss") or {}
    child, waiting = parts.get("trace_process_bytes"), parts.get("export_process_while_tracing_bytes")
    if hwm is not None and child is not None and waiting is not None:
        hwm = max(hwm, waiting + child)
    elif child is not None or waiting is not None:
        hwm = None  # half the figure would flatter it
    exp["peak_rss_bytes"] = hwm
    exp["peak_rss_over_file"] = None if hwm is None else hwm / exp["size_bytes"]
    return exp
