"""`fsac bench files`: sealed model files against each other, batch 1, in one process.

Two exports of one checkpoint (`--last-block class-token` against `all-tokens`, `--attention
lean` against `torch`), an fp32 file against its INT8 file: each file is verified and loaded
with the runtime's own backend, then all are timed in interleaved rounds (`fsac.cpu_quiet`:
the order rotates, each call waits for the machine to go quiet), so the drift of a shared CPU
falls on every file alike. Printed: median and 20th percentile per file, and each file's
speed-up against the first one given, i.e. ratios measured in one run.

    fsac bench files full.onnx int8.onnx --images .../bottle/test/broken_large --rounds 30
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fsac.errors import FsacError

BACKENDS = ("onnxruntime", "openvino")  # the CPU backends; a TensorRT engine is not an .onnx file


def bench_files(paths: Sequence[str | os.PathLike], images: Sequence[str | os.PathLike] = (), rounds: int = 20,
                backend: str = "onnxruntime", threads: int = 0,
                spin_wait: bool = False) -> list[dict[str, Any]]:
    """Time each model file at batch 1, interleaved -> one row per file, the first is the base."""
    from fsac.cpu_quiet import interleaved
    from fsac.runner import load_pixels
    from fsac.runtime.backends import load_model
    from fsac.runtime.config import ModelConfig

    if not paths:
        raise FsacError("fsac bench files: give at least one model file")
    if rounds < 1:
        raise FsacError(f"--rounds must be at least 1, got {rounds}")
    if backend not in BACKENDS:
        raise FsacError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    names = [str(p) for p in paths]
    if len(set(names)) != len(names):
        raise FsacError(f"fsac bench files: a file is given twice ({names})")
    models = {n: load_model(ModelConfig(path=n, threshold=0.5, backend=backend, batch_size=1, threads=threads,
                                     spin_wait=spin_wait))
              for n in names}
    try:
        sizes = {m.info.image_size for m in models.values()}
        if len(sizes) != 1:
            raise FsacError(f"fsac bench files: the files take different input sizes {sorted(sizes)}")
        spec = next(iter(models.values())).info.preprocess
        if images:
            pixels = load_pixels(list(images)[:8], spec)
            source = f"{len(pixels)} real images"
        else:
            size = sizes.pop()
            pixels = np.random.default_rng(0).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
            source = "4 random-pixel images"
        batches = [pixels[i:i + 1] for i in range(len(pixels))]
        times = interleaved({n: m.backend.infer for n, m in models.items()}, batches, rounds, warmup=2)
    finally:
        for m in models.values():
            m.backend.close()
    rows, base = [], None
    for n in names:
        t = np.asarray(times[n]) * 1e3
        median = float(np.median(t))
        base = base if base is not None else median
        rows.append({"file": n, "backend": backend, "median_ms": median, "p20_ms": float(np.percentile(t, 20)),
                     "runs": int(t.size), "speedup_vs_first": base / median, "inputs": source,
                     "spin_wait": spin_wait})
    return rows


def cpu_line() -> str:
    from fsac.peaks import cpu_class, cpu_flags, cpu_name, matrix_flags

    flags = cpu_flags()
    return f"CPU {cpu_name()}, flags (matrix units): {' '.join(matrix_flags(flags)) or 'none'} -> class {cpu_class(flags)}"


def format_rows(rows: list[dict[str, Any]]) -> str:
    spin = ", threads spinning between operators" if rows[0]["spin_wait"] else ""
    lines = [f"batch 1, {rows[0]['backend']}, {rows[0]['runs']} timed calls per file on {rows[0]['inputs']}, "
             f"interleaved{spin}", "",
             "| file | median ms | p20 ms | speed-up vs the first (median) |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {Path(r['file']).name} | {r['median_ms']:.1f} | {r['p20_ms']:.1f} | "
                     f"{r['speedup_vs_first']:.3f}x |")
    return "\n".join(lines)


try:  # typer is a base dependency; the runtime itself does not need it
    from typing import Annotated, List, Optional

    import typer

    def bench_files_command(
        models: Annotated[List[Path], typer.Argument(help="sealed fsac model files; the first is the base",
                                                     exists=True, dir_okay=False)],
        images: Annotated[Optional[List[Path]], typer.Option(
            "--images", "-i", help="image files or folders to time on (the first 8; default: random pixels)")] = None,
        rounds: Annotated[int, typer.Option("--rounds", min=1, help="interleaved rounds (one timed call per file each)")] = 20,
        backend: Annotated[str, typer.Option("--backend", help="onnxruntime or openvino")] = "onnxruntime",
        threads: Annotated[int, typer.Option("--threads", min=0, help="threads per session (0: the backend's choice)")] = 0,
        spin_wait: Annotated[bool, typer.Option("--spin-wait", help="as model.spin_wait: ONNX Runtime's threads "
                                                                  "busy-wait between operators")] = False,
        out: Annotated[Optional[Path], typer.Option("--out", help="write the rows as JSON")] = None,
    ) -> None:
        """Sealed model files against each other at batch 1, interleaved in one process."""
        from fsac.io import atomic_write_json
        from fsac.runner import expand_images

        files = expand_images(images) if images else []
        rows = bench_files(models, files, rounds, backend, threads, spin_wait)
        cpu = cpu_line()
        typer.echo(cpu)
        typer.echo(format_rows(rows))
        if out is not None:
            atomic_write_json(out, {"rows": rows, "cpu": cpu})
            typer.echo(f"wrote {out}")

except ImportError:  # pragma: no cover
    pass
